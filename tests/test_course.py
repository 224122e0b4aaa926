"""The series as one course: every notebook opens and closes the same way, and no text speaks of how it was made.

A notebook ``notebooks/NN_*.ipynb`` opens with a Markdown cell holding its title (``# ...``) and the lines
``**Level**``, ``**You will learn**``, ``**Assumes**`` (naming the notebooks it builds on) and ``**Study time**``,
in that order; its last cell is Markdown headed ``## What to take away``, after its last exercise.

Text for the reader speaks about the subject. Words about the making of the material — a tracker number of this
project, "the tracker entry's target" instead of "this notebook's goal", who was given which machine — read as broken
references, so the notebooks (every cell, stored outputs included), the README, the package and the tests are
scanned for them. Citations of other projects' issues stay, written with the repository's name
(``pytorch/pytorch#36214``). The patterns and the examples below are built from pieces, so that this file does not
match itself.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

ISSUE = "iss" + "ue"
PROCESS = re.compile(
    "|".join((
        rf"\b{ISSUE}s?\s+#?\d{{1,3}}\b(?![\d,.])",  # a tracker number of this project
        rf"\bthe {ISSUE}'?s\b",  # the tracker entry's target, instead of this notebook's goal
        rf"\bthis {ISSUE}\b",
        r"\bwas " + "lent" + r"\b",  # who was given which machine
        r"\b" + "lent" + r" to\b",
        r"notebook'?s " + "author",
    )),
    re.IGNORECASE,
)
# "#" and a number name an issue of this project unless a repository name stands before them (pytorch/pytorch#...).
HASH_NUMBER = re.compile(r"(?<![\w&:/.\-])" + "#" + r"\d+\b")
REPOSITORY_BEFORE = re.compile(r"[\w.\-]+/[\w.\-]+$")
# "#" before a number that is not a tracker reference: an ordinal in a message.
ORDINAL = re.compile(r"\b(answer|case|item|row|step)\s+$", re.IGNORECASE)

TITLE = re.compile(r"\A# \S")
OPENING_LINES = ("**Level**", "**You will learn**", "**Assumes**", "**Study time**")
TAKEAWAY = "## What to take away"
EXERCISE = re.compile(r"^### Exercise \d+\.\d+", re.MULTILINE)


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell):
    return "".join(cell["source"])


def _notebook_text(path):
    """Every cell's source and every stored text output, as the reader sees them."""
    parts = []
    for cell in _cells(path):
        parts.append(_source(cell))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts.extend("".join(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def process_words(text):
    """The matches of ``text`` that speak of how the material was made, as strings."""
    found = [m.group(0) for m in PROCESS.finditer(text)]
    for m in HASH_NUMBER.finditer(text):
        before = text[max(0, m.start() - 100):m.start()]
        if not REPOSITORY_BEFORE.search(before) and not ORDINAL.search(before):
            found.append(m.group(0))
    return found


def _scanned_files():
    files = sorted((ROOT / "notebooks").glob("*.ipynb")) + [ROOT / "README.md"]
    files += sorted((ROOT / "tensorcompress").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    return [f for f in files if f.exists()]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 21


LENT, HASH = "le" + "nt", "#"


@pytest.mark.parametrize(
    "text",
    [f"see {ISSUE} 11", f"{ISSUE.title()}s 8 and 9", f"the {ISSUE}'s target", f"The {ISSUE}s target",
     f"this {ISSUE}", f"no GPU was {LENT}", f"{LENT} to this notebook's auth" + "or", f"fixed in {HASH}12",
     f"({HASH}3)"],
)
def test_the_scan_finds_process_words(text):
    assert process_words(text)


@pytest.mark.parametrize(
    "text",
    [f"pytorch/pytorch{HASH}36214", f"TensorLy-Torch's {ISSUE} tensorly/torch{HASH}35", f"color:{HASH}080",
     f"accepted wrong answer {HASH}1", f"{ISSUE} 36214 of a tracker", f"{ISSUE} 2.5", "this notebook's goal",
     "a silent no-op", f"&{HASH}35;", "a helpful comment"],
)
def test_the_scan_leaves_the_subject_alone(text):
    assert not process_words(text)


@pytest.mark.parametrize("path", _scanned_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_words_about_how_the_material_was_made(path):
    text = _notebook_text(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    found = process_words(text)
    assert not found, f"{path.relative_to(ROOT)} speaks of how it was made: {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_title_level_goals_prerequisites_and_time(path):
    first = _cells(path)[0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell is {first['cell_type']}, not Markdown"
    text = _source(first)
    assert TITLE.match(text), f"{path.name}: the first cell does not start with a title '# ...'"
    lines = text.splitlines()
    positions = []
    for key in OPENING_LINES:
        where = [i for i, line in enumerate(lines) if line.startswith(key)]
        assert where, f"{path.name}: the first cell has no line starting with {key}"
        positions.append(where[0])
    assert positions == sorted(positions), f"{path.name}: the lines {OPENING_LINES} are out of order"
    assumes = "\n".join(lines[positions[2]:positions[3]])
    assert re.search(r"notebooks?\b", assumes), f"{path.name}: **Assumes** names no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_closes_with_what_to_take_away(path):
    cells = _cells(path)
    last = cells[-1]
    assert last["cell_type"] == "markdown", f"{path.name}: the last cell is {last['cell_type']}, not Markdown"
    assert _source(last).startswith(TAKEAWAY), f"{path.name}: the last cell is not headed '{TAKEAWAY}'"
    exercises = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and EXERCISE.search(_source(c))]
    assert exercises and exercises[-1] < len(cells) - 1, f"{path.name}: no exercise before the closing cell"
    closings = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and TAKEAWAY in _source(c)]
    assert closings == [len(cells) - 1], f"{path.name}: '{TAKEAWAY}' appears in cells {closings}, not only the last"


# ---------------------------------------------------------------- exercises that carry weight

KIND = re.compile(r"^\*\*Kind:\*\*\s*(derivation|experiment|implementation)\b", re.MULTILINE)
MAY_NOT_CALL = re.compile(r"^\*\*May not call:\*\*\s*(.+)$", re.MULTILINE)
NAMED = re.compile(r"`([\w.]+)`")


def _exercises(path):
    """``(number, Markdown, check cell source)`` of each exercise: the heading cell and the cell defining
    ``check_N_k``."""
    cells = _cells(path)
    found = []
    for i, cell in enumerate(cells):
        heading = EXERCISE.search(_source(cell)) if cell["cell_type"] == "markdown" else None
        if heading:
            number = heading.group(0).split()[-1]
            check = next((_source(c) for c in cells[i + 1:]
                          if f"def check_{number.replace('.', '_')}(" in _source(c)), "")
            found.append((number, _source(cell), check))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_says_its_kind_and_what_it_may_not_call(path):
    for number, markdown, check in _exercises(path):
        assert KIND.search(markdown), (f"{path.name}: exercise {number} needs a line `**Kind:** derivation`, "
                                       "`experiment` or `implementation`")
        forbidden = MAY_NOT_CALL.search(markdown)
        assert forbidden, f"{path.name}: exercise {number} needs a line `**May not call:** ...`"
        names = NAMED.findall(forbidden.group(1))
        if names:  # the check runs the reader's function with those functions patched to raise
            assert "call_without(" in check, (f"{path.name}: exercise {number} forbids {names}, so its check must "
                                              "call the candidate through tc.exercises.call_without")
            for name in names:
                assert name.split(".")[-1] in check, f"{path.name}: exercise {number}'s check never forbids {name}"
        else:
            assert "nothing" in forbidden.group(1).lower(), (f"{path.name}: exercise {number}: name the forbidden "
                                                             "functions in backticks, or say `nothing is forbidden`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_a_derivation_or_an_experiment(path):
    kinds = [KIND.search(markdown) for _, markdown, _ in _exercises(path)]
    assert any(k and k.group(1) in ("derivation", "experiment") for k in kinds), (
        f"{path.name}: at least one exercise must be a derivation or an experiment with an interpretation")
