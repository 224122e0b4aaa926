"""The student-version generator, and every notebook's exercises.

Per notebook (discovered, so notebooks added later are held to the same rule): at least two exercises numbered
``N.1, N.2, ...``; each has a check cell with at least one ``must_fail`` in its hidden tests; the stored notebook ran
the solution and the check without error (nbval re-runs them); in the student version each solution is an
unconditional ``raise NotImplementedError("exercise N.k")`` (called where that is cheap), no solution text or hidden
test is left, it is valid nbformat, every other cell is identical to the source, and no later cell uses an
exercise's functions. All of it reads JSON and parses Python: no kernel is started.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import nbformat
import pytest
from helpers import notebook_of

from tensorcompress import student

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob(student.PATTERN))


SOLUTION = '''def f(x):
    """Twice x."""
    y = x
    ### BEGIN SOLUTION
    z = 2 * y
    return z
    ### END SOLUTION'''
CHECK = '''assert f(2) == 4
### BEGIN HIDDEN TESTS
must_fail(lambda g: g(2) == 4 or bad(), lambda x: x)
### END HIDDEN TESTS
print("ok")'''


def test_student_source_blanks_solution_with_its_indent_and_removes_hidden_tests():
    assert student.student_source(SOLUTION, "3.2") == ('def f(x):\n    """Twice x."""\n    y = x\n'
                                                       '    raise NotImplementedError("exercise 3.2")')
    assert student.student_source(CHECK, "3.2") == 'assert f(2) == 4\nprint("ok")'
    top = "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION\nprint(answer)"
    assert student.student_source(top, "1.1") == 'raise NotImplementedError("exercise 1.1")\nprint(answer)'
    two = "def g():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n\n\n" + SOLUTION
    assert student.student_source(two, "1.1").count('raise NotImplementedError("exercise 1.1")') == 2


def test_student_notebook_changes_only_exercise_cells():
    nb = notebook_of("md:# 03 title", "x = 1", "md:### Exercise 3.1: double it\nWrite f.", SOLUTION, CHECK,
                     "y = x + 1", "md:### Exercise 3.2: again",
                     "def h():\n    ### BEGIN SOLUTION\n    return 0\n    ### END SOLUTION", "assert h() == 0")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.execution_count = i
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"out {i}\n")]
    exercises = student.find_exercises(nb)
    assert [(e.number, e.title, e.heading, e.solution_cells, e.check_cell, e.hidden_cells) for e in exercises] == [
        ("3.1", "double it", 2, [3], 4, [4]), ("3.2", "again", 6, [7], 8, [])]
    before = nbformat.writes(nb)
    out = student.student_notebook(nb)
    assert nbformat.writes(nb) == before  # the input is not changed
    nbformat.validate(out)
    for i in (3, 4, 7, 8):
        assert out.cells[i].outputs == [] and out.cells[i].execution_count is None
    for i in (0, 1, 2, 5, 6):
        assert out.cells[i] == nb.cells[i]
    assert "BEGIN" not in nbformat.writes(out) and "2 * y" not in nbformat.writes(out)


@pytest.mark.parametrize(("cells", "message"), [
    (["def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"], "before any '### Exercise"),
    (["md:### Exercise 1.1: t", "### BEGIN SOLUTION\nx = 1"], "never closed"),
    (["md:### Exercise 1.1: t", "x = 1\n### END SOLUTION"], "without a matching BEGIN"),
    (["md:### Exercise 1.1: t", "### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS"], "inside an open"),
    (["md:### Exercise 1.1: t", "# BEGIN SOLUTIONS\nx = 1\n# END SOLUTIONS"], "looks like a marker"),
    (["md:### Exercise 1.1: t", "x = 1"], "has no '### BEGIN SOLUTION'"),
    (["md:### Exercise 1.1: t", "### BEGIN SOLUTION\n### END SOLUTION", "md:### Exercise 1.1: u"], "numbered twice"),
])
def test_malformed_markers_are_errors(cells, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        student.student_notebook(notebook_of(*cells))


# A second solution cell of an exercise that already has one well-marked cell: a marker the generator failed to read
# would leave SECRET in the student version without any other complaint.
LEAK = "SECRET = 42"


@pytest.mark.parametrize(("begin", "end"), [
    ("### begin solution", "### end solution"),
    ("### Begin Solution", "### End Solution"),
    ("# BEGIN SOLUTION", "# END SOLUTION"),
    ("###BEGIN SOLUTION", "###END SOLUTION"),
    ("###   BEGIN \t SOLUTION   ", "  ###  END  SOLUTION"),
    ("###\tbegin\tsolution", "###\tEND\tsolution"),
    ("### begin hidden tests", "### END Hidden  Tests"),
])
def test_markers_in_any_case_and_spacing_are_markers(begin, end):
    nb = notebook_of("md:### Exercise 1.1: t", SOLUTION, f"{begin}\n{LEAK}\n{end}\nprint(1)", CHECK)
    out = student.student_notebook(nb)
    assert LEAK not in nbformat.writes(out) and "2 * y" not in nbformat.writes(out)
    assert not [ln for c in out.cells for ln in c.source.splitlines() if student.MARKER_LIKE.search(ln)]


@pytest.mark.parametrize(("cells", "message"), [
    ([SOLUTION, f"### BEGIN_SOLUTION\n{LEAK}\n### END_SOLUTION"], "looks like a marker"),
    ([SOLUTION, f"### BEGIN-SOLUTION\n{LEAK}\n### END-SOLUTION"], "looks like a marker"),
    ([SOLUTION, f"### BEGINSOLUTION\n{LEAK}\n### ENDSOLUTION"], "looks like a marker"),
    ([SOLUTION, f"### BEGIN HIDDEN TEST\n{LEAK}\n### END HIDDEN TEST"], "looks like a marker"),
    ([SOLUTION, f"### BEGIN HIDDEN-TESTS\n{LEAK}\n### END HIDDEN-TESTS"], "looks like a marker"),
    ([SOLUTION, f"### BEGIN HIDDEN\n{LEAK}\n### END HIDDEN"], "looks like a marker"),
    ([SOLUTION, f"x = 1  ### BEGIN SOLUTION\n{LEAK}\n### END SOLUTION"], "looks like a marker"),
    ([SOLUTION, f"### SOLUTION BEGIN\n{LEAK}\n### SOLUTION END"], "looks like a marker"),
    ([SOLUTION, f'"""### BEGIN SOLUTION"""\n{LEAK}'], "looks like a marker"),
    ([SOLUTION, f"md:### BEGIN SOLUTION\n{LEAK}\n### END SOLUTION"], "in a markdown cell"),
    ([SOLUTION, f"md:<!-- begin solution -->\n{LEAK}"], "in a markdown cell"),
])
def test_marker_like_lines_that_are_not_markers_are_errors(cells, message):
    # each of these left SECRET in the student version before markers were read by what they say
    with pytest.raises(ValueError, match=re.escape(message)):
        student.student_notebook(notebook_of("md:### Exercise 1.1: t", *cells, CHECK))


@pytest.mark.parametrize("line", ["# append solutions to the list", "# at the end, hidden units saturate",
                                  "# the solution ends here", "x = legend_solution"])
def test_prose_near_the_marker_words_is_not_a_marker(line):
    nb = notebook_of("md:### Exercise 1.1: t", SOLUTION, f"{line}\n{LEAK}", CHECK)
    assert student.student_notebook(nb).cells[2].source == f"{line}\n{LEAK}"  # not an exercise cell: untouched


def test_raw_cells_with_markers_are_errors():
    nb = notebook_of("md:### Exercise 1.1: t", SOLUTION, CHECK)
    nb.cells.append(nbformat.v4.new_raw_cell(f"### BEGIN SOLUTION\n{LEAK}\n### END SOLUTION"))
    with pytest.raises(ValueError, match="cell 3, line 1: .* in a raw cell"):
        student.student_notebook(nb)


def test_main_writes_every_notebook(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(notebook_of("md:### Exercise 9.1: t", SOLUTION, CHECK), src / "09_x.ipynb")
    nbformat.write(notebook_of("x = 1"), src / "notes.ipynb")  # not a numbered notebook: left out
    assert student.main([str(src), str(tmp_path / "out")]) == 0
    assert "09_x.ipynb: 1 exercises" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["09_x.ipynb"]
    (tmp_path / "empty").mkdir()
    assert student.main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 1
    assert "no [0-9][0-9]_*.ipynb notebook" in capsys.readouterr().err
    assert student.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------- notebooks


def _load(path):
    nb = nbformat.read(path, as_version=4)
    return nb, student.find_exercises(nb, path.name)


def _raise_nodes(tree, number):
    """``raise NotImplementedError("exercise N.k")`` statements of a parsed cell, with the body that holds them."""
    found = []
    for node in ast.walk(tree):
        for body in (getattr(node, "body", None),):
            if not isinstance(body, list):
                continue
            for stmt in body:
                if (isinstance(stmt, ast.Raise) and isinstance(stmt.exc, ast.Call)
                        and getattr(stmt.exc.func, "id", None) == "NotImplementedError"
                        and [getattr(a, "value", None) for a in stmt.exc.args] == [f"exercise {number}"]):
                    found.append((node, stmt))
    return found


def _parse(source):
    # IPython magics and shell escapes are not Python: blank them
    return ast.parse("\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines()))


def _defined_names(source):
    tree = _parse(source)
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.stem)
def notebook(request):
    nb, exercises = _load(request.param)
    return request.param, nb, exercises, student.student_notebook(nb, request.param.name)


def test_the_checked_notebooks_are_every_notebook_numbered_01_to_n_and_the_readmes_table():
    folder = Path(__file__).resolve().parents[1] / "notebooks"
    # none escapes the pattern (and so these checks): every notebook of the folder is one of them
    assert [p.name for p in NOTEBOOKS] == sorted(p.name for p in folder.glob("*.ipynb"))
    readme = (folder.parent / "README.md").read_text(encoding="utf-8")
    # no number twice, and no gap but the numbers the README announces as notebooks to come
    to_come = re.search(r"^\*\*To come:\*\*.*?\n\n", readme, re.MULTILINE | re.DOTALL)
    planned = {int(n) for n in re.findall(r"`(\d\d)_\w+`", to_come.group(0))} if to_come else set()
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert sorted(numbers + sorted(planned)) == list(range(1, len(numbers) + len(planned) + 1))
    listed = re.findall(r"^\| [^\n]*\| `(\d\d_\w+)` \|[^\n]*\| \d+ \|$", readme, re.MULTILINE)
    assert listed == [p.stem for p in NOTEBOOKS], "README's notebook table lists other notebooks, or in another order"


def test_at_least_two_numbered_exercises(notebook):
    path, _, exercises, _ = notebook
    n = int(path.name[:2])
    assert [e.number for e in exercises][:2] == [f"{n}.1", f"{n}.2"], f"{path.name}: needs exercises {n}.1, {n}.2"
    assert [e.number for e in exercises] == [f"{n}.{k}" for k in range(1, len(exercises) + 1)]


def test_each_exercise_has_a_check_with_must_fail_hidden_tests(notebook):
    path, nb, exercises, _ = notebook
    for ex in exercises:
        where = f"{path.name}, exercise {ex.number}"
        assert ex.check_cell is not None and ex.check_cell not in ex.solution_cells, f"{where}: no check cell"
        check = nb.cells[ex.check_cell].source
        assert "tc.exercises.check_" in check or "exercises.check_" in check, f"{where}: check cell uses no check_*"
        hidden = "\n".join(nb.cells[i].source.split(student.BEGIN_HIDDEN, 1)[1] for i in ex.hidden_cells)
        assert "must_fail(" in hidden, f"{where}: the hidden tests must prove the check rejects a wrong answer"


def test_stored_notebook_ran_solutions_and_checks_cleanly(notebook):
    # the stored outputs were written by an execution that raised nowhere (tour --in-place); nbval re-runs them
    path, nb, exercises, _ = notebook
    for ex in exercises:
        for i in [*ex.solution_cells, ex.check_cell]:
            cell = nb.cells[i]
            assert cell.execution_count is not None, f"{path.name}, cell {i}: not executed"
            assert not [o for o in cell.outputs if o.output_type == "error"], f"{path.name}, cell {i}: error"


def test_student_version_blanks_every_solution(notebook):
    path, nb, exercises, out = notebook
    nbformat.validate(out)
    left = [ln for c in out.cells for ln in c.source.splitlines() if student.MARKER_LIKE.search(ln)]
    assert not left, f"{path.name}: markers left in the student version: {left}"
    for ex in exercises:
        exercise_text = "\n".join(out.cells[i].source for i in ex.cells)
        for i in ex.cells:
            cell = out.cells[i]
            assert cell.outputs == [] and cell.execution_count is None
            for kind, a, b in student._regions(nb.cells[i].source, path.name):
                region = "\n".join(nb.cells[i].source.splitlines()[a + 1:b]).strip()
                assert region, f"{path.name}, cell {i}: an empty {kind} region"
                assert region not in exercise_text, f"{path.name}, exercise {ex.number}: {kind} text left"
        for i in ex.solution_cells:
            source = out.cells[i].source
            raises = _raise_nodes(_parse(source), ex.number)
            assert raises, f"{path.name}, cell {i}: no raise NotImplementedError('exercise {ex.number}')"
            namespace = {}
            for holder, stmt in raises:
                # unconditional: straight in the cell or in a top-level function's body, never under if/for/try
                assert isinstance(holder, ast.Module | ast.FunctionDef), f"{path.name}, cell {i}: raise is nested"
                if isinstance(holder, ast.Module):
                    continue
                body = holder.body[1:] if isinstance(getattr(holder.body[0], "value", None), ast.Constant) else (
                    holder.body)
                if body[0] is stmt and not holder.decorator_list:  # cheap to prove by calling it
                    exec(compile(ast.Module([holder], []), path.name, "exec"), namespace)
                    fn = namespace[holder.name]
                    args = [None] * sum(p.default is p.empty and p.kind <= p.POSITIONAL_OR_KEYWORD
                                        for p in inspect.signature(fn).parameters.values())
                    with pytest.raises(NotImplementedError, match=f"exercise {re.escape(ex.number)}"):
                        fn(*args)


def test_student_version_is_identical_elsewhere_and_nothing_depends_on_exercises(notebook):
    path, nb, exercises, out = notebook
    assert out.metadata == nb.metadata and len(out.cells) == len(nb.cells)
    changed = {i for ex in exercises for i in ex.cells}
    for i, (a, b) in enumerate(zip(nb.cells, out.cells, strict=True)):
        if i not in changed:
            assert a == b, f"{path.name}, cell {i} differs from the source"
    for ex in exercises:
        names = set().union(*(_defined_names(out.cells[i].source) for i in ex.cells))
        for j in range(max(ex.cells) + 1, len(nb.cells)):
            cell = nb.cells[j]
            if cell.cell_type != "code" or j in changed:
                continue
            used = {n.id for n in ast.walk(_parse(cell.source)) if isinstance(n, ast.Name)}
            assert not names & used, f"{path.name}, cell {j} uses {names & used} of exercise {ex.number}"


def test_readme_lists_each_notebooks_exercise_count():
    readme = (NOTEBOOKS[0].parents[1] / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        row = re.search(rf"^\| [^\n]*\| `{re.escape(path.stem)}` \|[^\n]*\| (\d+) \|$", readme, re.MULTILINE)
        assert row, f"README's notebook table has no 'exercises' entry for {path.stem}"
        assert int(row.group(1)) == len(_load(path)[1]), f"README's exercise count for {path.stem} is out of date"
