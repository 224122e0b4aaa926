"""Packaging: environment.yml and pyproject.toml describe one environment; the public API resolves; the wheel carries
the pretrained baselines and a non-editable install loads them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

import tensorcompress as tc
from tensorcompress.models.pretrained import CHECKPOINT_DIR, sha256_file

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


# ---------------------------------------------------------------- the wheel carries the pretrained baselines


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel as ``pip install .`` would (offline, no build isolation) from a copy of the source tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, src)
    shutil.copytree(ROOT / "tensorcompress", src / "tensorcompress", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    (path,) = (tmp / "dist").glob("tensorcompress-*.whl")
    return path


def test_checkpoints_are_shipped_once_inside_the_package():
    names = {e["file"] for e in json.loads((CHECKPOINT_DIR / "manifest.json").read_text()).values()}
    assert CHECKPOINT_DIR.parent == ROOT / "tensorcompress" / "models"
    assert names == {p.name for p in CHECKPOINT_DIR.glob("*.pt")} == {"lenet300100.pt", "lenet5.pt", "smallcnn.pt"}
    # data/ is for data caches only: no second copy of the 3 MB of checkpoints
    assert not list((ROOT / "data").glob("*.pt")) and not (ROOT / "data" / "manifest.json").exists()


def test_wheel_contains_checkpoints_and_manifest(wheel):
    with zipfile.ZipFile(wheel) as zf:
        members = set(zf.namelist())
        shipped = {n for n in members if n.startswith("tensorcompress/models/checkpoints/")}
        manifest = json.loads(zf.read("tensorcompress/models/checkpoints/manifest.json"))
        for entry in manifest.values():
            data = zf.read(f"tensorcompress/models/checkpoints/{entry['file']}")
            assert len(data) == entry["bytes"] and data == (CHECKPOINT_DIR / entry["file"]).read_bytes()
    assert shipped == {f"tensorcompress/models/checkpoints/{n}" for n in
                       ["manifest.json", "lenet300100.pt", "lenet5.pt", "smallcnn.pt"]}
    assert manifest == json.loads((CHECKPOINT_DIR / "manifest.json").read_text())
    assert sha256_file(CHECKPOINT_DIR / "lenet5.pt") == manifest["lenet5"]["sha256"]


def test_installed_wheel_loads_pretrained_without_the_source_tree(wheel, tmp_path):
    # A real pip install of the wheel (no dependencies, offline) into its own folder; the subprocess runs outside
    # the source tree with only that folder on PYTHONPATH (ahead of any editable install of the shared environment),
    # and checks that it imported that copy.
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert (site / "tensorcompress" / "models" / "checkpoints" / "lenet5.pt").is_file()
    assert list(site.glob("tensorcompress-*.dist-info"))  # installed by pip, with its record
    code = (
        "import pathlib, sys, tensorcompress as tc\n"
        "here = pathlib.Path(tc.__file__).resolve()\n"
        "assert here.is_relative_to(pathlib.Path(sys.argv[1]).resolve()), here\n"
        "m = tc.models.pretrained('lenet5')\n"
        "print(type(m).__name__, m.training, tc.models.pretrained('smallcnn').training)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LeNet5", "False", "False"]
