"""Packaging: environment.yml and pyproject.toml describe one environment; the public API resolves."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

import tensorcompress as tc

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda package names that differ from the PyPI ones
NOT_PACKAGES = {"python", "pip"}  # what conda itself provides


def _requirement(spec: str) -> tuple[str, str]:
    """``"Tensorly_Torch >= 0.5"`` -> ``("tensorly-torch", ">=0.5")``: the PEP 503 name and the version specifier."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*", spec)
    assert match, f"cannot parse requirement {spec!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return CONDA_TO_PIP.get(name, name), re.sub(r"\s+", "", match.group(3)).replace("==", "=")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pyproject_requirements() -> dict[str, str]:
    project = _pyproject()["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return dict(_requirement(s) for s in specs)


def _environment_requirements() -> tuple[dict[str, str], list[str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    reqs: dict[str, str] = {}
    conda_only: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            reqs.update(_requirement(s) for s in dep["pip"])
            continue
        name, spec = _requirement(dep)
        if name in NOT_PACKAGES:
            conda_only.append(dep)
        else:
            reqs[name] = spec
    return reqs, conda_only


def test_requirement_parser_normalises_names():
    assert _requirement("Tensorly_Torch >= 0.5") == ("tensorly-torch", ">=0.5")
    assert _requirement("pytorch") == ("torch", "")
    assert _requirement("torch>=2.4,<3") == ("torch", ">=2.4,<3")


def test_environment_yml_and_pyproject_name_the_same_dependencies():
    env, _ = _environment_requirements()
    pyproject = _pyproject_requirements()
    assert sorted(env) == sorted(pyproject), (
        f"only in environment.yml: {sorted(set(env) - set(pyproject))}; "
        f"only in pyproject.toml: {sorted(set(pyproject) - set(env))}"
    )
    assert env == pyproject, "the two files name the same packages with different version ranges"


def test_environment_python_meets_requires_python():
    _, conda_only = _environment_requirements()
    pythons = [d for d in conda_only if d.startswith("python")]
    assert pythons == ["python=3.11"]
    assert _pyproject()["project"]["requires-python"] == ">=3.11"


def test_version_matches_pyproject():
    assert tc.__version__ == _pyproject()["project"]["version"]


def test_public_names_resolve():
    assert len(tc.__all__) == len(set(tc.__all__)), "tensorcompress.__all__ repeats a name"
    missing = [name for name in tc.__all__ if not hasattr(tc, name)]
    assert not missing, f"tensorcompress.__all__ names what the package lacks: {missing}"
    for name in ["unfold", "fold", "mode_dot", "multi_mode_dot", "khatri_rao", "kronecker", "relative_error",
                 "available_devices"]:
        assert name in tc.__all__ and callable(getattr(tc, name))


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # its own asserts check the results
