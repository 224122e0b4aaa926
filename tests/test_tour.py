"""The tour runner on tiny generated notebooks: passing, raising, too slow, unreadable; and its usage errors."""

from __future__ import annotations

import time

import nbformat
import pytest
from helpers import notebook_of

from tensorcompress import tour


def _write(path, *sources, title="A title"):
    nbformat.write(notebook_of(f"md:# {title}", *sources), path)


def test_tour_runs_in_order_renders_html_and_fails_on_error(tmp_path, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    (folder / "data.txt").write_text("42")
    # 02 reads a file next to it (working directory = the notebook's folder) and draws a figure
    _write(folder / "02_ok.ipynb", "value = int(open('data.txt').read())\nprint(value + 1)",
           "import matplotlib.pyplot as plt\nplt.plot([1, 2]);\nplt.show()", title="Passes")
    _write(folder / "01_bad.ipynb", "raise ValueError('boom')", title="Raises")
    _write(folder / "notes.ipynb", "raise RuntimeError('not NN_*: never run')")
    html = tmp_path / "html"

    status = tour.main([str(folder), "--html", str(html), "--timeout", "60"])

    assert status == 1  # one notebook failed...
    out = capsys.readouterr().out
    table = out[out.index("notebook"):].splitlines()
    assert table[2].split()[:3][::2] == ["01_bad.ipynb", "FAILED"]  # ...in level order,
    assert "ValueError: boom" in table[2]
    assert table[3].split() == ["02_ok.ipynb", table[3].split()[1], "ok"]  # ...and the failure did not stop the rest
    assert "1/2 ok" in table[4]
    assert "notes.ipynb" not in out
    index = (html / "index.html").read_text()
    assert 'href="02_ok.html"' in index and 'href="01_bad.html"' in index and "Passes" in index
    page = (html / "02_ok.html").read_text()
    assert "43" in page and "data:image/png;base64" in page  # outputs and figures (inline back-end) are rendered
    assert "boom" in (html / "01_bad.html").read_text()  # the failing notebook's HTML shows the error


def test_in_place_stores_outputs_only_for_clean_runs(tmp_path):
    _write(tmp_path / "01_ok.ipynb", "print(6 * 7)", "1 + 1")
    _write(tmp_path / "02_bad.ipynb", "print('partial')", "1 / 0")
    bad_before = (tmp_path / "02_bad.ipynb").read_text()

    assert tour.main([str(tmp_path), "--in-place"]) == 1

    nb = nbformat.read(tmp_path / "01_ok.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c["execution_count"] for c in code] == [1, 2]
    assert code[0]["outputs"][0]["text"] == "42\n"
    assert code[1]["outputs"][0]["data"]["text/plain"] == "2"
    assert "execution" not in code[0]["metadata"]  # no timestamps in stored notebooks
    assert (tmp_path / "02_bad.ipynb").read_text() == bad_before  # a failure never overwrites the stored notebook


def test_no_notebooks_is_a_usage_error(tmp_path, capsys):
    try:
        tour.main([str(tmp_path)])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("expected a usage error")
    assert "no notebooks" in capsys.readouterr().err


def _rows(out):
    """The table's notebook rows, by notebook name."""
    lines = out[out.index("notebook"):].splitlines()[2:-1]
    return {line.split()[0]: line for line in lines}


def test_timeout_is_enforced(tmp_path, capsys):
    _write(tmp_path / "01_slow.ipynb", "import time\ntime.sleep(120)", "print('never')", title="Slow")
    _write(tmp_path / "02_ok.ipynb", "print(6 * 7)", title="Fine")

    start = time.perf_counter()
    status = tour.main([str(tmp_path), "--html", str(tmp_path / "html"), "--timeout", "2"])
    elapsed = time.perf_counter() - start

    assert status == 1
    assert elapsed < 100  # the 120 s cell was stopped (kernel start-ups on a loaded machine take the rest)
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["01_slow.ipynb"].split()[2] == "TIMEOUT" and "after 2 seconds" in rows["01_slow.ipynb"]
    assert float(rows["01_slow.ipynb"].split()[1]) < 60
    assert rows["02_ok.ipynb"].split()[2] == "ok"  # the tour went on
    assert "1/2 ok" in out
    assert 'href="01_slow.html"' in (tmp_path / "html" / "index.html").read_text()


def test_unreadable_notebook_is_reported_and_the_tour_goes_on(tmp_path, capsys):
    (tmp_path / "01_broken.ipynb").write_text("{not json")
    _write(tmp_path / "02_ok.ipynb", "print(6 * 7)", title="Fine")
    html = tmp_path / "html"
    html.mkdir()
    (html / "01_broken.html").write_text("stale page of an earlier run")

    assert tour.main([str(tmp_path), "--html", str(html)]) == 1

    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["01_broken.ipynb"].split()[2] == "FAILED"
    assert "unreadable notebook: NotJSONError" in rows["01_broken.ipynb"]
    assert rows["02_ok.ipynb"].split()[2] == "ok" and "1/2 ok" in out
    index = (html / "index.html").read_text()
    assert not (html / "01_broken.html").exists() and 'href="01_broken.html"' not in index
    assert "01_broken.ipynb" in index and "NotJSONError" in index and 'href="02_ok.html"' in index


@pytest.mark.parametrize("timeout", ["-5", "0"])
def test_non_positive_timeout_is_a_usage_error(tmp_path, capsys, timeout):
    _write(tmp_path / "01_ok.ipynb", "1")
    with pytest.raises(SystemExit) as exc:
        tour.main([str(tmp_path), "--timeout", timeout])
    assert exc.value.code == 2
    assert f"--timeout must be a positive number of seconds per cell, got {timeout}" in capsys.readouterr().err


def test_run_notebook_rejects_a_negative_timeout(tmp_path):
    _write(tmp_path / "01_ok.ipynb", "1")
    with pytest.raises(ValueError, match="timeout must be >= 1, got -1"):
        tour.run_notebook(tmp_path / "01_ok.ipynb", timeout=-1)
