"""Packaging: environment.yml and pyproject.toml describe one environment; the public API resolves; the wheel carries
the pretrained baselines and the text corpus, and a non-editable install loads them."""

from __future__ import annotations

import ast
import importlib.metadata
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
    """Runtime and ``dev`` requirements, the extras ``dev`` names of this package (``tensorcompress[notebooks]``)
    expanded."""
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    specs, pending = list(project["dependencies"]), ["dev"]
    while pending:
        for spec in extras[pending.pop()]:
            own = re.fullmatch(r"tensorcompress\[([^\]]*)\]", spec.strip())
            if own:
                pending += [e.strip() for e in own.group(1).split(",")]
            else:
                specs.append(spec)
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


# ---------------------------------------------------------------- the teaching tools' extra

TEACHING_TOOLS = ["tour", "student", "lab", "exercises", "baselines"]


def _extra(name: str) -> dict[str, str]:
    return dict(_requirement(s) for s in _pyproject()["project"]["optional-dependencies"][name])


def _imported_top_level(path: Path) -> set[str]:
    """Top-level packages a module imports anywhere (at module level or inside functions), stdlib and relative
    imports left out."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__"}


def test_dev_includes_the_notebooks_extra():
    dev = _pyproject()["project"]["optional-dependencies"]["dev"]
    assert "tensorcompress[notebooks]" in dev
    assert set(_extra("notebooks")) <= set(_pyproject_requirements())


def test_every_package_a_teaching_tool_imports_or_runs_is_declared():
    from tensorcompress import lab

    runtime = dict(_requirement(s) for s in _pyproject()["project"]["dependencies"])
    notebooks = _extra("notebooks")
    distributions = importlib.metadata.packages_distributions()
    for tool in TEACHING_TOOLS:
        modules = _imported_top_level(ROOT / "tensorcompress" / f"{tool}.py") - {"tensorcompress"}
        if tool == "lab":
            modules |= set(lab.NEEDS)  # run as `python -m jupyterlab`, kernels and their figure back-end
        for module in modules:
            names = {_requirement(d)[0] for d in distributions.get(module, [module])}
            assert names & (set(runtime) | set(notebooks)), f"tensorcompress.{tool} needs {module} ({names}): " \
                "declare it in the notebooks extra"
    # and nothing in the extra that no tool needs (jupyter-client: tour's kernel manager)
    used = set()
    for tool in TEACHING_TOOLS:
        for module in _imported_top_level(ROOT / "tensorcompress" / f"{tool}.py") | set(lab.NEEDS):
            used |= {_requirement(d)[0] for d in distributions.get(module, [module])}
    assert set(notebooks) <= used, f"notebooks extra names what no teaching tool uses: {set(notebooks) - used}"


NOTEBOOK_MODULES = ["nbformat", "nbclient", "nbconvert", "jinja2", "ipykernel", "jupyter_client", "jupyterlab",
                    "jupyter_server_mathjax", "matplotlib_inline", "jupyter_core", "IPython"]


def _without(modules: list[str], code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python where importing any of ``modules`` fails (``sys.modules[name] = None``)."""
    block = f"import sys\nfor m in {modules!r}:\n    sys.modules[m] = None\n"
    return subprocess.run([sys.executable, "-c", block + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_import_tensorcompress_needs_no_notebook_package():
    code = ("import tensorcompress as tc, tensorcompress.exercises, tensorcompress.lab\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {NOTEBOOK_MODULES!r} "
            "and sys.modules[m] is not None))")
    done = _without(NOTEBOOK_MODULES, code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[]"]


@pytest.mark.parametrize(("tool", "missing"), [("student", "nbformat"), ("tour", "nbclient"),
                                               ("tour", "jupyter_server_mathjax"), ("tour", "nbconvert")])
def test_teaching_tools_name_the_extra_when_a_package_is_missing(tool, missing):
    done = _without([missing], f"import tensorcompress.{tool}")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: tensorcompress.{tool} needs '{missing}',"), last
    assert 'pip install "tensorcompress[notebooks]"' in last


def test_lab_names_the_extra_when_jupyterlab_is_missing():
    # a lab that did not check would start a server here: the short timeout ends the test instead
    done = _without(["jupyterlab"], "from tensorcompress import lab\nsys.exit(lab.main(['notebooks']))", timeout=60)
    assert done.returncode == 2  # argparse's error status, before anything is started
    assert "tensorcompress.lab needs 'jupyterlab'" in done.stderr
    assert 'pip install "tensorcompress[notebooks]"' in done.stderr


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
    assert names == {p.name for p in CHECKPOINT_DIR.glob("*.pt")} == {"lenet300100.pt", "lenet5.pt", "smallcnn.pt",
                                                                      "tinygpt.pt", "resnet8.pt",
                                                                      "mobilenetv2_tiny.pt"}
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
                       ["manifest.json", "lenet300100.pt", "lenet5.pt", "smallcnn.pt", "tinygpt.pt", "resnet8.pt",
                        "mobilenetv2_tiny.pt"]}
    assert manifest == json.loads((CHECKPOINT_DIR / "manifest.json").read_text())
    assert sha256_file(CHECKPOINT_DIR / "lenet5.pt") == manifest["lenet5"]["sha256"]


def test_wheel_contains_the_text_corpus_and_its_licence(wheel):
    from tensorcompress.data import text

    with zipfile.ZipFile(wheel) as zf:
        corpora = {n for n in zf.namelist() if n.startswith("tensorcompress/data/corpora/")}
        assert corpora == {"tensorcompress/data/corpora/python_topics.txt.xz",
                           "tensorcompress/data/corpora/LICENSE-PSF.txt"}
        assert zf.read("tensorcompress/data/corpora/python_topics.txt.xz") == text.TEXT_PATH.read_bytes()
        assert zf.read("tensorcompress/data/corpora/LICENSE-PSF.txt") == text.TEXT_LICENSE_PATH.read_bytes()


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
        "corpus = tc.data.load_text()\n"
        "print(corpus.vocab_size, corpus.test.numel(), type(tc.models.pretrained('tinygpt')).__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LeNet5", "False", "False", "103", "23249", "TinyGPT"]


def test_wheel_declares_the_notebooks_extra_and_dev_includes_it(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(name).decode()
    assert "Provides-Extra: notebooks" in metadata and "Provides-Extra: dev" in metadata
    for requirement in _pyproject()["project"]["optional-dependencies"]["notebooks"]:
        name, spec = _requirement(requirement)
        assert re.search(rf"^Requires-Dist: {re.escape(requirement.split('>')[0])}\s*{re.escape(spec)}; "
                         r'extra == "notebooks"$', metadata, re.M | re.I), (requirement, metadata)
    assert re.search(r'^Requires-Dist: tensorcompress\[notebooks\]; extra == "dev"$', metadata, re.M)
