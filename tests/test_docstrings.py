"""Every public function or method with three or more parameters documents them in a NumPy ``Parameters`` section
(a dataclass documents its fields in the class docstring instead, and a class may document its constructor there)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

PACKAGES = ["tensorcompress", "tensorcompress.surgery", "tensorcompress.metrics", "tensorcompress.data",
            "tensorcompress.models", "tensorcompress.train", "tensorcompress.decompositions", "tensorcompress.layers",
            "tensorcompress.quantization", "tensorcompress.pruning", "tensorcompress.distillation",
            "tensorcompress.pipelines", "tensorcompress.export", "tensorcompress.exercises"]


def _public_callables():
    seen = {}
    for pkg in PACKAGES:
        try:
            mod = importlib.import_module(pkg)
        except ModuleNotFoundError:
            continue
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                seen[f"{obj.__module__}.{obj.__qualname__}"] = (obj, None)
            elif inspect.isclass(obj) and obj.__module__.startswith("tensorcompress"):
                for key, member in vars(obj).items():
                    if inspect.isfunction(member) and (key == "__init__" or not key.startswith("_")):
                        seen[f"{obj.__module__}.{member.__qualname__}"] = (member, obj)
    return sorted(seen.items())


def _needs_section(fn, owner) -> bool:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "cls")]
    if len(params) < 3:
        return False
    return not (fn.__name__ == "__init__" and owner is not None and dataclasses.is_dataclass(owner))


def _documented(fn, owner) -> bool:
    docs = [inspect.getdoc(fn) or ""]
    if fn.__name__ == "__init__" and owner is not None:
        docs.append(inspect.getdoc(owner) or "")
    return any("Parameters\n----------" in d for d in docs)


CASES = [(name, fn, owner) for name, (fn, owner) in _public_callables() if _needs_section(fn, owner)]


def test_the_check_sees_the_library():
    assert len(CASES) > 40
    assert any(name.endswith("surgery.core.transform") for name, _, _ in CASES)


@pytest.mark.parametrize("name, fn, owner", CASES, ids=[c[0] for c in CASES])
def test_public_function_documents_its_parameters(name, fn, owner):
    assert _documented(fn, owner), f"{name} has no NumPy 'Parameters' section"
