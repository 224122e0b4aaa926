"""Start JupyterLab on the series wherever a user may run it: ``python -m tensorcompress.lab [folder] [lab options]``.

What ``make lab`` runs. JupyterLab refuses to start as root ("Running as root is not recommended. Use --allow-root"),
and root is the default user in containers; and on a machine without a display (a container, a server reached over
SSH) there is no browser to open. So the command adds ``--allow-root`` when the effective user id is 0 and
``--no-browser`` on Linux when neither ``DISPLAY`` nor ``WAYLAND_DISPLAY`` is set (open the URL with the token that
JupyterLab prints). Kernels get matplotlib's inline back-end whatever ``MPLBACKEND`` the calling shell has (an
inherited ``Agg`` would draw no figure). The server listens on loopback only (JupyterLab's default); add
``--ip=0.0.0.0`` yourself to reach it from outside a container. ``--print-command`` prints the command and exits.
JupyterLab, the kernel and the inline back-end come with the ``notebooks`` extra
(``pip install "tensorcompress[notebooks]"``, part of ``dev``); without them the command says so and starts nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from ._extras import require

__all__ = ["lab_command", "lab_env", "main"]

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
NEEDS = ("jupyterlab", "ipykernel", "matplotlib_inline")  # the server, its Python kernel, the kernels' back-end


def _has_display(env: Mapping[str, str], platform: str) -> bool:
    if not platform.startswith("linux"):
        return True  # macOS and Windows always have a desktop to open a browser on
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def lab_command(
    folder: str = "notebooks",
    extra: Sequence[str] = (),
    *,
    uid: int | None = None,
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> list[str]:
    """The command that starts JupyterLab on ``folder`` with this Python, adapted to the user and the display.

    Parameters
    ----------
    folder : str
        The folder JupyterLab opens.
    extra : sequence of str
        Further JupyterLab options, appended (e.g. ``["--port=8890"]``).
    uid, env, platform : optional
        The effective user id, environment and ``sys.platform`` to decide for (default: this process's).
    """
    uid = os.geteuid() if uid is None else uid
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    cmd = [sys.executable, "-m", "jupyterlab", str(folder)]
    if uid == 0:
        cmd.append("--allow-root")
    if not _has_display(env, platform):
        cmd.append("--no-browser")
    return cmd + list(extra)


def lab_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment JupyterLab runs in: ``env`` (default: this process's) with the inline matplotlib back-end."""
    return {**(os.environ if env is None else env), "MPLBACKEND": INLINE_BACKEND}


def main(argv: list[str] | None = None) -> int:
    """Replace this process by JupyterLab (or, with ``--print-command``, print what would run and return 0)."""
    parser = argparse.ArgumentParser(prog="python -m tensorcompress.lab", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="notebooks", help="folder to open (default: notebooks)")
    parser.add_argument("--print-command", action="store_true", help="print the command and exit")
    args, extra = parser.parse_known_args(argv)
    if not os.path.isdir(args.folder):
        parser.error(f"folder {args.folder!r} does not exist")
    cmd = lab_command(args.folder, extra)
    if args.print_command:
        print(shlex.join(cmd))
        return 0
    try:
        require("tensorcompress.lab", NEEDS)
    except ImportError as err:
        parser.error(str(err))
    os.execve(cmd[0], cmd, lab_env())  # JupyterLab takes over the terminal and its Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
