r"""Student version of the notebooks: solutions blanked, hidden tests removed, exercise outputs cleared.

Usage (what ``make student`` calls)::

    python -m tensorcompress.student notebooks/ build/student/   # every NN_*.ipynb of the folder
    python -m tensorcompress.student notebooks/03_low_rank_matrices.ipynb build/student/

It needs the ``notebooks`` extra (``pip install "tensorcompress[notebooks]"``, part of ``dev``).

The stored notebooks are the one source of truth. An exercise is a Markdown cell headed
``### Exercise N.k: title``, one or more code cells after it holding the solution between the lines
``### BEGIN SOLUTION`` / ``### END SOLUTION``, and the check cell right after the last of them; checks only a
teacher should see sit between ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``. These are nbgrader's default
markers, so teachers can feed the same notebooks to nbgrader.

The student version differs from the source only in the exercise cells:

* each solution region (markers included) becomes ``raise NotImplementedError("exercise N.k")``, indented like the
  region's first line, so the ``def`` line and docstring kept outside the markers still define the function;
* each hidden-test region (markers included) is removed;
* the outputs and execution counts of the solution cells, the check cell and any cell with hidden tests are cleared.

Every other cell, the notebook metadata and the cell order are untouched. Malformed markers (nested, unclosed, an
``END`` without ``BEGIN``, a solution outside an exercise, two exercises with one number) raise ``ValueError``
naming the notebook, the cell and the line, so a broken notebook never yields a student version that leaks a
solution.

A marker is recognised by what it says, not by how it is typed: a comment line of one or more ``#`` followed by
``BEGIN``/``END`` and ``SOLUTION``/``HIDDEN TESTS`` in any letter case and with any spacing (``# begin solution``,
``###END   HIDDEN TESTS``). Any other line that looks like a marker -- the words ``BEGIN``/``END`` next to
``SOLUTION``/``HIDDEN TEST`` anywhere in a line (``### BEGIN_SOLUTION``, ``x = 1  # END SOLUTION``,
``### BEGIN HIDDEN TEST``), or in a Markdown or raw cell, which the generator never blanks -- is a ``ValueError``:
a marker the generator cannot read would otherwise leave its region, solution included, in the student version.

Why not nbgrader's or otter-grader's generator: both are course-management systems. nbgrader 0.9.6 brings 101
packages into a fresh environment (73 MB of wheels; 10 packages and 28 MB beyond the ``dev`` extra: notebook,
SQLAlchemy, alembic, ...) and needs its metadata on every graded cell and its course-folder layout; otter-grader 7.0
brings 88 (114 MB; 33 packages and 75 MB beyond ``dev``: playwright, Sphinx, pandas, docker bindings, ...) and its
own notebook format. The transformation itself is a few dozen lines over ``nbformat``, and the markers stay
nbgrader's, so nothing stops a teacher from using either tool.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ._extras import missing_message

try:
    import nbformat
except ImportError as exc:
    raise ImportError(missing_message("tensorcompress.student", [exc.name]), name=exc.name) from exc

__all__ = ["Exercise", "find_exercises", "student_source", "student_notebook", "convert", "main"]

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
# A marker: the whole line, any case, any spacing. Marker-like: the same words anywhere, joined by anything.
MARKER = re.compile(r"^\s*#+\s*(?P<edge>begin|end)\s+(?P<kind>solution|hidden\s+tests)\s*$", re.IGNORECASE)
# (a comment line that starts with the words, e.g. "### BEGIN HIDDEN", or the words anywhere, "hidden" then only with
# "test", so that "at the end, hidden units" in a comment is prose)
_WHAT = r"(solution|hidden[\W_]*tests?)"
MARKER_LIKE = re.compile(rf"^\s*#+\s*(begin|end)[\W_]*(solution|hidden)|\b(begin|end)[\W_]*{_WHAT}|"
                         rf"\b{_WHAT}[\W_]*(begin|end)\b", re.IGNORECASE)
HEADING = re.compile(r"^###\s+Exercise\s+(\d+)\.(\d+)\s*:\s*(\S.*?)\s*$", re.MULTILINE)
PATTERN = "[0-9][0-9]_*.ipynb"


@dataclass
class Exercise:
    """One exercise of a notebook: its number ``"N.k"``, title and the indices of its cells."""

    number: str
    title: str
    heading: int
    solution_cells: list[int] = field(default_factory=list)
    check_cell: int | None = None
    hidden_cells: list[int] = field(default_factory=list)

    @property
    def cells(self) -> list[int]:
        """Indices of the exercise's code cells (solutions, check, hidden tests): the cells the generator changes."""
        extra = [] if self.check_cell is None else [self.check_cell]
        return sorted(set(self.solution_cells + extra + self.hidden_cells))


def _marker(line: str) -> tuple[str, str] | None:
    """``("begin" | "end", "solution" | "hidden")`` if ``line`` is a marker, None if it is not marker-like at all;
    ValueError (naming the line, through the caller) for a line that looks like a marker but is not one."""
    m = MARKER.match(line)
    if m:
        return m["edge"].lower(), m["kind"].split()[0].lower()
    if MARKER_LIKE.search(line):
        raise ValueError(f"{line.strip()!r} looks like a marker but is not one; write a whole comment line "
                         f"{BEGIN_SOLUTION!r}, {END_SOLUTION!r}, {BEGIN_HIDDEN!r} or {END_HIDDEN!r}")
    return None


def _regions(source: str, where: str) -> list[tuple[str, int, int]]:
    """``(kind, first_line, last_line)`` of each marked region (marker lines included); ValueError if malformed."""
    regions, open_kind, start = [], None, 0
    for i, line in enumerate(source.splitlines()):
        try:
            marker = _marker(line)
        except ValueError as err:
            raise ValueError(f"{where}, line {i + 1}: {err}") from None
        if marker is None:
            continue
        edge, kind = marker
        if edge == "begin":
            if open_kind is not None:
                raise ValueError(f"{where}, line {i + 1}: {line.strip()!r} inside an open {open_kind} region")
            open_kind, start = kind, i
        else:
            if open_kind != kind:
                raise ValueError(f"{where}, line {i + 1}: {line.strip()!r} without a matching BEGIN")
            regions.append((open_kind, start, i))
            open_kind = None
    if open_kind is not None:
        raise ValueError(f"{where}, line {start + 1}: the {open_kind} region is never closed")
    return regions


def _refuse_markers(cell, where: str) -> None:
    """ValueError for a marker or marker-like line in a Markdown or raw cell: the student version keeps those cells
    as they are, so a solution marked there would leak."""
    for i, line in enumerate(cell.source.splitlines()):
        if MARKER.match(line) or MARKER_LIKE.search(line):
            raise ValueError(f"{where}, line {i + 1}: {line.strip()!r} in a {cell.cell_type} cell, which the "
                             "student version keeps as it is; solutions and hidden tests belong in code cells")


def find_exercises(nb, name: str = "notebook") -> list[Exercise]:
    """The exercises of a notebook, in order; ValueError on malformed markers or duplicate numbers."""
    exercises: list[Exercise] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            _refuse_markers(cell, f"{name}, cell {i}")
        if cell.cell_type == "markdown":
            for m in HEADING.finditer(cell.source):
                number = f"{int(m.group(1))}.{int(m.group(2))}"
                if any(e.number == number for e in exercises):
                    raise ValueError(f"{name}, cell {i}: exercise {number} is numbered twice")
                exercises.append(Exercise(number, m.group(3), i))
        if cell.cell_type != "code":
            continue
        kinds = {kind for kind, _, _ in _regions(cell.source, f"{name}, cell {i}")}
        if not kinds:
            continue
        if not exercises:
            raise ValueError(f"{name}, cell {i}: a marked region before any '### Exercise N.k: title' heading")
        ex = exercises[-1]
        if "solution" in kinds:
            ex.solution_cells.append(i)
        if "hidden" in kinds:
            ex.hidden_cells.append(i)
    for ex in exercises:
        if not ex.solution_cells:
            raise ValueError(f"{name}: exercise {ex.number} ({ex.title!r}) has no {BEGIN_SOLUTION!r} region")
        following = [j for j in range(ex.solution_cells[-1] + 1, len(nb.cells)) if nb.cells[j].cell_type == "code"]
        ex.check_cell = following[0] if following else None
    return exercises


def student_source(source: str, exercise: str, where: str = "cell") -> str:
    """``source`` with solution regions replaced by ``raise NotImplementedError("exercise N.k")`` and hidden tests
    removed."""
    lines = source.splitlines()
    out, pos = [], 0
    for kind, start, stop in _regions(source, where):
        out += lines[pos:start]
        if kind == "solution":
            body = [ln for ln in lines[start + 1:stop] if ln.strip()]
            first = body[0] if body else lines[start]
            indent = first[: len(first) - len(first.lstrip())]
            out.append(f'{indent}raise NotImplementedError("exercise {exercise}")')
        pos = stop + 1
    out += lines[pos:]
    return "\n".join(out).rstrip("\n") if out else ""


def student_notebook(nb, name: str = "notebook"):
    """A deep copy of ``nb`` with every exercise blanked (see the module docstring); ``nb`` is not changed."""
    student = copy.deepcopy(nb)
    for ex in find_exercises(nb, name):
        for i in ex.cells:
            cell = student.cells[i]
            cell.source = student_source(cell.source, ex.number, f"{name}, cell {i}")
            cell.outputs = []
            cell.execution_count = None
    return student


def convert(source: str | Path, destination: str | Path) -> dict[Path, int]:
    """Write the student version of a notebook, or of every ``NN_*.ipynb`` of a folder, into ``destination``.

    Returns the number of exercises of each notebook written.
    """
    source, destination = Path(source), Path(destination)
    if not source.exists():
        raise ValueError(f"source: {str(source)!r} does not exist")
    notebooks = sorted(source.glob(PATTERN)) if source.is_dir() else [source]
    if not notebooks:
        raise ValueError(f"source: no {PATTERN} notebook in {str(source)!r}")
    destination.mkdir(parents=True, exist_ok=True)
    written = {}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        student = student_notebook(nb, path.name)
        nbformat.validate(student)
        target = destination / path.name
        nbformat.write(student, target)
        written[target] = len(find_exercises(nb, path.name))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tensorcompress.student", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a notebook or a folder of NN_*.ipynb notebooks (with solutions)")
    parser.add_argument("destination", help="folder for the student versions (created if missing)")
    args = parser.parse_args(argv)
    try:
        written = convert(args.source, args.destination)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path, n in written.items():
        print(f"{path}: {n} exercises")
    return 0


if __name__ == "__main__":
    sys.exit(main())
