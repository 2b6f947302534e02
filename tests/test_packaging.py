"""Packaging: pyproject.toml declares what the library imports, the lock satisfies every range,
and `pip install .` (offline, beside the locked dependencies) gives a working `deref`."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]

# import name -> distribution name, where they differ
DIST_OF = {
    "sklearn": "scikit-learn",
    "sksurv": "scikit-survival",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "openslide": "openslide-python",
    "nystrom_attention": "nystrom-attention",
    "yaml": "pyyaml",
    "ot": "pot",
}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    proj = _project()
    core = {canonicalize_name(Requirement(r).name) for r in proj["dependencies"]}
    extras = {
        k: {canonicalize_name(Requirement(r).name) for r in v}
        for k, v in proj["optional-dependencies"].items()
    }
    return core, extras


def _third_party_imports(root: Path) -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    names: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in stdlib and n not in ("deref", "app", "__future__")}


def _lock() -> dict[str, str]:
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt must pin exactly: {line}"
            out[canonicalize_name(req.name)] = spec.version
    return out


def test_torch_is_pinned_first():
    first = (REPO / "requirements.txt").read_text().splitlines()[0]
    assert first == "torch==2.13.0"


def test_every_library_import_is_declared():
    core, extras = _declared()
    declared = core | set().union(*extras.values())
    used = {canonicalize_name(DIST_OF.get(n, n)) for n in _third_party_imports(REPO / "deref")}
    assert used - declared == set(), f"deref/ imports undeclared packages: {sorted(used - declared)}"
    app_used = {canonicalize_name(DIST_OF.get(n, n)) for n in _third_party_imports(REPO / "app")}
    assert app_used - (core | extras["app"]) == set(), sorted(app_used - (core | extras["app"]))


def test_lock_satisfies_every_declared_range():
    lock = _lock()
    proj = _project()
    reqs = [Requirement(r) for r in proj["dependencies"]]
    reqs += [Requirement(r) for v in proj["optional-dependencies"].values() for r in v]
    for req in reqs:
        name = canonicalize_name(req.name)
        if name == "deref":  # the dev extra pulls the other extras
            continue
        if name in lock:
            assert req.specifier.contains(lock[name], prereleases=True), (
                f"{req} excludes the lock's {lock[name]}"
            )
        else:
            dev = (REPO / "requirements-dev.txt").read_text()
            assert req.name in dev, f"{req.name}: in pyproject.toml but in neither requirements file"


@pytest.mark.slow
def test_pip_install_gives_a_working_command(tmp_path):
    """`pip install .` into a fresh venv that sees the locked dependencies (offline: --no-index),
    then `deref --help`, `python -m deref --version` and `import deref` from outside the tree."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the locked dependencies of this checkout's environment, as a site directory of the new venv
    Path(site, "locked_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHONPATH"))}
    # a copy of the sources: setuptools writes build/ and *.egg-info beside what it installs
    src = tmp_path / "src"
    shutil.copytree(REPO / "deref", src / "deref", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-index",
            "--no-build-isolation",
            "--no-warn-script-location",
            str(src),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    installed = subprocess.run(
        [str(py), "-c", "import deref, deref.runs, deref.metrics, deref.figures; print(deref.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout.strip()
    assert Path(installed).is_relative_to(Path(site)), installed  # the installed copy, not the checkout
    out = subprocess.run(
        [str(venv / "bin" / "deref"), "--help"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout
    assert "validate" in out and "train" in out
    ver = subprocess.run(
        [str(py), "-m", "deref", "--version"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout
    assert ver.strip().startswith("deref ")
