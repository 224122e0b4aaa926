"""The rendered series reads offline: a page ``make tour`` writes, opened in headless Chromium without network.

Checks that the equations were typeset by the local MathJax (its output elements are there, no raw ``$$`` or ``$`` is
left in the visible text), that the figure is there (an ``img`` with PNG data) and that the page loads no remote
script or stylesheet. The browser is Debian's ``chromium-headless-shell`` (``.ci/run`` installs it where missing) or
any Chromium on the PATH; without one the browser test is skipped, saying so. A tiny notebook of its own keeps the test
fast (one kernel start, one page).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tensorcompress import tour

BROWSERS = ["chromium-headless-shell", "chromium", "chromium-browser", "chrome-headless-shell", "google-chrome"]
# Offline whatever the machine: no DNS, no proxy that answers, no background traffic, a fresh profile.
OFFLINE_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]

MARKDOWN = r"""# Offline page

Inline maths $\|X\|_F^2 = \sum_i \sigma_i^2$ and a display:

$$
\hat{X} = \sum_{r=1}^{R} \lambda_r \, a_r \circ b_r \circ c_r
$$

with relative error $\frac{\|X - \hat{X}\|_F}{\|X\|_F} \le \varepsilon$ (In [1]: brackets are not maths).
"""
N_EQUATIONS = 3
FIGURE = "import matplotlib.pyplot as plt\nplt.plot([0, 1, 4, 9]);\nplt.show()"


def _browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


class _VisibleText(HTMLParser):
    """The text a reader sees: everything outside <script>, <style> and <head>."""

    HIDDEN = {"script", "style", "head", "title"}

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.depth += tag in self.HIDDEN

    def handle_endtag(self, tag):
        self.depth -= tag in self.HIDDEN

    def handle_data(self, data):
        if self.depth == 0:
            self.parts.append(data)


def _visible_text(dom: str) -> str:
    parser = _VisibleText()
    parser.feed(dom)
    return "".join(parser.parts)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """``make tour``'s rendering of a notebook with three equations and a figure: the page's path."""
    tmp = tmp_path_factory.mktemp("tour")
    folder = tmp / "nbs"
    folder.mkdir()
    nb = new_notebook(cells=[new_markdown_cell(MARKDOWN), new_code_cell(FIGURE)])
    nbformat.write(nb, folder / "01_offline.ipynb")
    assert tour.main([str(folder), "--html", str(tmp / "html")]) == 0
    return tmp / "html" / "01_offline.html"


def test_page_loads_nothing_remote_and_mathjax_is_beside_it(rendered):
    page = rendered.read_text()
    sources = re.findall(r'<(?:script|img|iframe)\b[^>]*\bsrc="([^"]*)"', page)
    links = re.findall(r'<link\b[^>]*\bhref="([^"]*)"', page)
    remote = [u for u in sources + links if re.match(r"(?i)(https?:)?//", u)]
    assert not remote, f"the page loads {remote} from the network"
    assert tour.MATHJAX_URL in sources
    assert (rendered.parent / "mathjax" / "MathJax.js").is_file()
    assert (rendered.parent / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()  # the configuration


def test_equations_typeset_and_figure_shown_in_offline_browser(rendered, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)}): install Debian's chromium-headless-shell "
                    "(apt-get install chromium-headless-shell; .ci/run does) to run the offline browser test")
    cmd = [browser, *OFFLINE_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
           "--dump-dom", rendered.as_uri()]
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout

    frames = re.findall(r'<span class="MathJax" id="MathJax-Element-\d+-Frame"', dom)
    assert len(frames) == N_EQUATIONS, f"MathJax typeset {len(frames)} of {N_EQUATIONS} equations"
    assert len(re.findall(r'class="MathJax_Display"', dom)) == 1  # the $$...$$ one
    visible = _visible_text(dom)
    assert "Inline maths" in visible and "brackets are not maths" in visible
    assert "$" not in visible and "\\" not in visible, "raw LaTeX left on the page"
    assert re.search(r'<img\b[^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{200,}', dom)  # the figure
