"""``make lab`` starts wherever a user may run it: as root (containers), without a display; the server answers.

The end-to-end test runs what the Makefile's ``lab`` recipe runs (``python -m tensorcompress.lab``) on a free port
with a token, asks ``/api/status`` over 127.0.0.1 until it answers (bounded), and stops it. On this project's
machines the tests run as root, where a bare ``jupyter lab`` exits at once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port

from tensorcompress import lab

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120  # seconds for the server to answer (a loaded two-core machine takes 10-30 s)


def test_make_lab_runs_the_module():
    recipe = re.search(r"^lab:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert recipe, "Makefile has no lab target"
    assert recipe.group(1).strip() == "$(BIN)/python -m tensorcompress.lab notebooks/ $(LAB_ARGS)"


@pytest.mark.parametrize(
    ("uid", "env", "platform", "allow_root", "no_browser"),
    [
        (0, {}, "linux", True, True),  # root in a container: the default that used to exit at once
        (1000, {"DISPLAY": ":0"}, "linux", False, False),  # a desktop user
        (1000, {"WAYLAND_DISPLAY": "wayland-0"}, "linux", False, False),
        (0, {"DISPLAY": ":1"}, "linux", True, False),
        (1000, {}, "linux", False, True),  # over SSH
        (501, {}, "darwin", False, False),  # a Mac always has a browser to open
    ],
)
def test_lab_command_adapts_to_user_and_display(uid, env, platform, allow_root, no_browser):
    cmd = lab.lab_command("nbs", ["--port=9999"], uid=uid, env=env, platform=platform)
    assert cmd[:4] == [sys.executable, "-m", "jupyterlab", "nbs"] and cmd[-1] == "--port=9999"
    assert ("--allow-root" in cmd) == allow_root
    assert ("--no-browser" in cmd) == no_browser


def test_lab_env_sets_the_inline_backend():
    env = lab.lab_env({"MPLBACKEND": "Agg", "KEEP": "1"})
    assert env == {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "KEEP": "1"}


def test_print_command_and_bad_folder(tmp_path, capsys):
    assert lab.main([str(tmp_path), "--print-command", "--port=1234"]) == 0
    assert shlex.split(capsys.readouterr().out) == lab.lab_command(str(tmp_path), ["--port=1234"])
    with pytest.raises(SystemExit):
        lab.main([str(tmp_path / "missing"), "--print-command"])
    assert "does not exist" in capsys.readouterr().err


def _get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_lab_server_answers_on_loopback(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    extra = [f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    if not sys.platform.startswith("linux"):
        extra.append("--no-browser")  # elsewhere a display is assumed: do not open a browser in a test
    env = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tensorcompress.lab", str(folder), *extra], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/api/status?token={token}")
            except OSError:  # not listening yet
                time.sleep(0.5)
                continue
            if status == 200:
                break
            time.sleep(0.5)
        output = (tmp_path / "lab.log").read_text(errors="replace")
        assert proc.poll() is None, f"JupyterLab exited with {proc.returncode}:\n{output[-3000:]}"
        assert status == 200, f"no answer on 127.0.0.1:{port} within {START_TIMEOUT} s:\n{output[-3000:]}"
        assert "started" in json.loads(body)  # the server's own status record
        assert _get(f"http://127.0.0.1:{port}/api/status")[0] == 403  # and the token is required
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
