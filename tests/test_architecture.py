"""The house: which package may import which, read from the source (lazy imports inside functions included).

Floors, lowest first; a module imports only from its own floor's shared modules or lower ones, the technique
packages of floor (e) import none of each other, no import reaches another package's private names, and the
package graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tensorcompress"

FLOORS = {
    "tensor": 0, "_validation": 0, "devices": 0, "_bits": 0, "_extras": 0,
    "surgery": 1,
    "train": 2, "metrics": 2, "data": 2, "models": 2,
    "decompositions": 3,
    "layers": 4, "quantization": 4, "pruning": 4, "distillation": 4,
    "pipelines": 5, "export": 5,
    "tour": 6, "student": 6, "lab": 6, "exercises": 6, "baselines": 6,
}
SIBLINGS_APART = {"layers", "quantization", "pruning", "distillation"}
# within floor (c) the measurement sits on the training loop (accuracy is measured by evaluate), never the reverse
SAME_FLOOR_ALLOWED = {("metrics", "train"), ("metrics", "models"), ("metrics", "data"), ("train", "data"),
                      ("pipelines", "export")}
SHARED = {"tensor", "_validation", "devices", "_bits", "_extras"}  # private to the library, shared by every package


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module inside tensorcompress, imported names, line) for every import of the file."""
    tree = ast.parse(path.read_text())
    here = ["tensorcompress", *path.relative_to(ROOT).with_suffix("").parts]
    if here[-1] == "__init__":
        here = here[:-1]
    else:
        here = here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [a.name for a in node.names]
            if module == "tensorcompress" or (node.level and not node.module):
                for n in names:  # "from .. import surgery": the name is a package
                    out.append((f"{module}.{n}", [], node.lineno))
            else:
                out.append((module, names, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return [(m, n, line) for m, n, line in out if m.startswith("tensorcompress.")]


def _edges() -> list[tuple[str, str, str, list[str], str]]:
    """(importing package, imported package, imported module, names, where) for every internal import."""
    edges = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "__init__.py":
            continue
        src = _package(path)
        for module, names, line in _imports(path):
            dst = module.split(".")[1]
            edges.append((src, dst, module, names, f"{path.relative_to(ROOT.parent)}:{line}"))
    return edges


def test_every_package_has_a_floor():
    packages = {_package(p) for p in ROOT.rglob("*.py") if p != ROOT / "__init__.py"}
    assert packages <= FLOORS.keys(), sorted(packages - FLOORS.keys())


def test_nothing_imports_upwards_or_across_techniques():
    bad = []
    for src, dst, module, _, where in _edges():
        if src == dst or dst not in FLOORS:
            continue
        if FLOORS[dst] > FLOORS[src]:
            bad.append(f"{where}: {src} (floor {FLOORS[src]}) imports {module} (floor {FLOORS[dst]})")
        elif FLOORS[dst] == FLOORS[src] and dst not in SHARED and (src, dst) not in SAME_FLOOR_ALLOWED:
            bad.append(f"{where}: {src} imports its sibling {module}")
    assert not bad, "\n".join(bad)


def test_no_private_names_of_another_package():
    bad = []
    for src, dst, module, names, where in _edges():
        if src == dst or dst in SHARED:
            continue
        private_module = any(part.startswith("_") for part in module.split(".")[2:])
        private_names = [n for n in names if n.startswith("_")]
        if private_module or private_names:
            bad.append(f"{where}: {src} imports {module} {private_names}")
    assert not bad, "\n".join(bad)


def test_the_package_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for src, dst, *_ in _edges():
        if src != dst:
            graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_checker_reads_relative_and_lazy_imports(tmp_path):
    # the test above is only as good as _imports: a lazy relative import inside a function must be seen
    src = ROOT / "quantization" / "model.py"
    found = _imports(src)
    assert any(m == "tensorcompress.surgery" for m, _, _ in found)
    code = "def f():\n    from ..pipelines import coding\n    from .uniform import _x\n"
    fake = ROOT / "quantization" / "_probe_for_test.py"
    fake.write_text(code)
    try:
        got = _imports(fake)
    finally:
        fake.unlink()
    assert ("tensorcompress.pipelines", ["coding"], 2) in got
    assert ("tensorcompress.quantization.uniform", ["_x"], 3) in got
