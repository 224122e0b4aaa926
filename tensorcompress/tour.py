"""Run the tutorial series: execute every notebook headlessly, in level order, and report.

Usage (what ``make tour`` and ``make notebooks`` call)::

    python -m tensorcompress.tour notebooks/ --html build/html   # execute, render HTML + index.html, print a table
    python -m tensorcompress.tour notebooks/ --in-place           # execute and store the outputs in the notebooks
    python -m tensorcompress.tour notebooks/01_tensors.ipynb      # just one notebook

It needs the ``notebooks`` extra (``pip install "tensorcompress[notebooks]"``, part of ``dev``).

Notebooks are the files ``NN_*.ipynb`` of each folder given, run in name order (the number is the level order).
Each runs in a fresh kernel of the current Python (the one running this module, so ``.venv`` when called from the
Makefile) with the notebook's folder as working directory. A failing notebook does not stop the tour: the rest still
run, the table marks it ``FAILED`` (a cell raised, the kernel died, or the file is not a readable notebook) or
``TIMEOUT`` (a cell ran longer than ``--timeout`` seconds), its HTML shows the error, and the exit status is 1. With
``--in-place`` only notebooks that ran cleanly are written back, so a failure never replaces good stored outputs.

The HTML reads offline (a classroom behind a firewall, a train): nbconvert's pages load MathJax and require.js from a
CDN, so without network every equation stayed raw LaTeX. Here MathJax 2.7 comes from the ``jupyter-server-mathjax``
package, copied once into ``<html dir>/mathjax/`` and loaded by a relative URL with the configuration that copy ships
(``TeX-AMS-MML_HTMLorMML-full``; nbconvert's default ``TeX-AMS_CHTML-full`` is not in it) and the STIX-Web fonts it
ships; require.js, the widget manager and mermaid.js (remote scripts the series does not use) are left out.
``tests/test_html_offline.py`` opens a rendered page in headless Chromium without network and checks it.

The kernel manager is an ``AsyncKernelManager``, as nbclient's own default: a blocking ``KernelManager`` handed to
``NotebookClient`` gets a blocking client whose waits block the event loop, and ``timeout`` was then never enforced.
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ._extras import missing_message
from ._validation import check_positive_int

try:
    import ipykernel.kernelspec
    import jinja2
    import jupyter_server_mathjax
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    from nbconvert import HTMLExporter
except ImportError as exc:
    raise ImportError(missing_message("tensorcompress.tour", [exc.name]), name=exc.name) from exc

__all__ = ["NotebookResult", "find_notebooks", "run_notebook", "render_html", "install_mathjax", "write_index", "main"]

PATTERN = "[0-9][0-9]_*.ipynb"
_KERNEL_NAME = "tensorcompress-current-python"
# Deterministic kernels: figures inline (an inherited MPLBACKEND=Agg would drop them), no progress bars, stable hashing.
_KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}


#: MathJax's folder next to the pages, and the relative URL the pages load it from (the configuration shipped there).
MATHJAX_DIR = "mathjax"
MATHJAX_URL = f"{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
# nbconvert's lab template without its remote scripts, and MathJax configured as nbconvert does (tex2jax delimiters,
# AMS numbering) plus the web font the local copy ships (STIX-Web, as the classic notebook configured it).
_OFFLINE_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  TeX: {equationNumbers: {autoNumber: "AMS", useLabelIds: true}},
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]],
            processEscapes: true, processEnvironments: true},
  displayAlign: "center",
  messageStyle: "none",
  "HTML-CSS": {availableFonts: [], imageFont: null, preferredFont: null, webFont: "STIX-Web",
               linebreaks: {automatic: true}}
});
</script>
<script src="{{ resources.mathjax_url }}"></script>
{%- endblock html_head_js_mathjax -%}
"""
_TEMPLATE_NAME = "tensorcompress_offline.html.j2"


class _CurrentPythonSpecs(KernelSpecManager):
    """Kernel specs that resolve ``_KERNEL_NAME`` to an ipykernel of ``sys.executable`` (as nbval's current env)."""

    def get_kernel_spec(self, kernel_name):
        if kernel_name == _KERNEL_NAME:
            return self.kernel_spec_class(
                resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict()
            )
        return super().get_kernel_spec(kernel_name)


@dataclass
class NotebookResult:
    """Outcome of one notebook: ``status`` is ``"ok"``, ``"FAILED"`` or ``"TIMEOUT"``; ``error`` says why."""

    path: Path
    title: str
    seconds: float
    status: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def find_notebooks(paths: list[Path], pattern: str = PATTERN) -> list[Path]:
    """The notebooks ``NN_*.ipynb`` in the given folders (and any notebook files given), in name (level) order."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(sorted(p.glob(pattern)))
        elif p.suffix == ".ipynb" and p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither a folder nor a notebook file")
    return found


def _title(nb: nbformat.NotebookNode, default: str) -> str:
    """The first Markdown heading of the notebook, else ``default``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return default


def run_notebook(
    path: Path, timeout: int = 600, html_dir: Path | None = None, in_place: bool = False
) -> NotebookResult:
    """Execute ``path`` top to bottom in a fresh kernel; optionally render it to ``html_dir`` and/or store outputs.

    Parameters
    ----------
    path : Path
        The notebook.
    timeout : int
        Seconds allowed per cell (a positive int); a cell that runs longer stops the notebook with ``TIMEOUT``.
    html_dir : Path, optional
        Folder for ``<name>.html`` (written also when the notebook fails, showing the error).
    in_place : bool
        Write the executed notebook back to ``path`` (only if every cell ran).
    """
    check_positive_int(timeout, "timeout")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # not JSON, not a notebook, unreadable file: report it, go on with the next notebook
        if html_dir is not None:
            (html_dir / f"{path.stem}.html").unlink(missing_ok=True)  # no stale page from an earlier run
        reason = (str(exc).strip().splitlines() or [""])[0]
        return NotebookResult(path, path.stem, 0.0, "FAILED", f"unreadable notebook: {type(exc).__name__}: {reason}")
    title = _title(nb, path.stem)
    km = AsyncKernelManager(kernel_name=_KERNEL_NAME, kernel_spec_manager=_CurrentPythonSpecs())
    client = NotebookClient(
        nb,
        km=km,
        timeout=timeout,
        record_timing=False,  # no per-cell timestamps in stored notebooks
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    status, error = "ok", ""
    start = time.perf_counter()
    try:
        client.execute(env={**os.environ, **_KERNEL_ENV})
    except CellTimeoutError as exc:
        status, error = "TIMEOUT", str(exc).strip().splitlines()[0]
    except CellExecutionError as exc:
        status, error = "FAILED", f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel died, bad notebook JSON, ...: report it, go on with the next notebook
        status, error = "FAILED", f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    if html_dir is not None:
        render_html(nb, html_dir / f"{path.stem}.html")
    if in_place and status == "ok":
        nbformat.write(nb, path)
    return NotebookResult(path, title, seconds, status, error)


def install_mathjax(html_dir: Path) -> Path:
    """Copy MathJax 2.7 (from ``jupyter-server-mathjax``) to ``html_dir/mathjax/`` unless that copy is there already."""
    source = Path(jupyter_server_mathjax.__file__).resolve().parent / "static"
    target = html_dir / MATHJAX_DIR
    stamp = target / ".jupyter-server-mathjax-version"
    version = getattr(jupyter_server_mathjax, "__version__", "unknown")
    if not (stamp.is_file() and stamp.read_text() == version and (target / "MathJax.js").is_file()):
        shutil.copytree(source, target, dirs_exist_ok=True)
        stamp.write_text(version)
    return target


def render_html(nb: nbformat.NotebookNode, out: Path) -> Path:
    """Render ``nb`` to the page ``out`` that reads offline: MathJax from ``out``'s folder, no remote scripts."""
    install_mathjax(out.parent)
    exporter = HTMLExporter(
        template_file=_TEMPLATE_NAME,
        extra_loaders=[jinja2.DictLoader({_TEMPLATE_NAME: _OFFLINE_TEMPLATE})],
        mathjax_url=MATHJAX_URL,
    )
    body, _ = exporter.from_notebook_node(nb)
    out.write_text(body, encoding="utf-8")
    return out


def _index_link(r: NotebookResult, html_dir: Path) -> str:
    """The notebook's name, linked to its page where one was rendered (an unreadable notebook has none)."""
    name = html.escape(r.path.name)
    if not (html_dir / f"{r.path.stem}.html").is_file():
        return name
    return f'<a href="{html.escape(r.path.stem)}.html">{name}</a>'


def write_index(results: list[NotebookResult], html_dir: Path) -> Path:
    """Write ``html_dir/index.html``: one row per notebook (link, title, seconds, status)."""
    rows = "\n".join(
        f"<tr><td>{_index_link(r, html_dir)}</td>"
        f"<td>{html.escape(r.title)}</td><td>{r.seconds:.1f}</td>"
        f'<td class="{"ok" if r.ok else "bad"}">{html.escape(r.status)}</td><td>{html.escape(r.error)}</td></tr>'
        for r in results
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tensorcompress tour</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em 1em;text-align:left}}
.ok{{color:#080}}.bad{{color:#c00;font-weight:bold}}</style></head>
<body><h1>tensorcompress: the tutorial series</h1>
<table><tr><th>notebook</th><th>title</th><th>seconds</th><th>status</th><th>error</th></tr>
{rows}
</table></body></html>
"""
    html_dir.mkdir(parents=True, exist_ok=True)
    index = html_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def format_table(results: list[NotebookResult]) -> str:
    """Plain-text table: notebook, seconds, status (plus the error of a failed notebook) and the total."""
    width = max([len("notebook")] + [len(r.path.name) for r in results])
    lines = [f"{'notebook':<{width}}  {'seconds':>8}  status", f"{'-' * width}  {'-' * 8}  ------"]
    for r in results:
        lines.append(f"{r.path.name:<{width}}  {r.seconds:>8.1f}  {r.status}" + (f"  {r.error}" if r.error else ""))
    n_ok = sum(r.ok for r in results)
    total = sum(r.seconds for r in results)
    lines.append(f"{'total':<{width}}  {total:>8.1f}  {n_ok}/{len(results)} ok")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 all ok, 1 a notebook failed, 2 usage error)."""
    parser = argparse.ArgumentParser(
        prog="python -m tensorcompress.tour",
        description="Execute the notebooks NN_*.ipynb in level order, headlessly, and print a timing table.",
    )
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("notebooks")],
                        help="folders of notebooks and/or notebook files (default: notebooks)")
    parser.add_argument("--html", type=Path, metavar="DIR", help="render each notebook to DIR/<name>.html + index.html")
    parser.add_argument("--in-place", action="store_true", help="store the outputs in the notebooks themselves")
    parser.add_argument("--timeout", type=int, default=600, metavar="S",
                        help="seconds allowed per cell, a positive int (default 600)")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds per cell, got {args.timeout}")
    try:
        notebooks = find_notebooks(args.paths)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    if not notebooks:
        parser.error(f"no notebooks {PATTERN} in {', '.join(map(str, args.paths))}")
    results = []
    for path in notebooks:
        print(f"running {path} ...", flush=True)
        results.append(run_notebook(path, timeout=args.timeout, html_dir=args.html, in_place=args.in_place))
    if args.html is not None:
        print(f"HTML: {write_index(results, args.html)}")
    print(format_table(results), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
