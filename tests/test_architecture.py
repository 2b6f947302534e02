"""The structure ARCHITECTURE.md describes, checked: layer order, the app's and the library's
boundaries, function length, light imports, and who reads run.json."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# ARCHITECTURE.md's layers: a unit may import units of its own rank or below, never above
RANK = {
    "deref": 0,  # the package itself (__version__)
    "deref.errors": 0,
    "deref.access": 1,
    "deref.audit": 1,
    "deref.fileio": 0,
    "deref.survival": 0,
    "deref.model": 1,
    "deref.slides": 1,
    "deref.metrics": 1,
    "deref.calibration": 1,
    "deref.recalibration": 1,
    "deref.stratify": 1,
    "deref.data": 2,
    "deref.figures": 2,
    "deref.losses": 2,
    "deref.runs": 3,
    "deref.prepare": 3,
    "deref.inference": 4,
    "deref.report": 4,
    "deref.compare": 4,
    "deref.ablate": 5,
    "deref.training": 5,
    "deref.explain": 5,
    "deref.demo": 6,
    "deref.scale": 6,
    "deref.cli": 7,
    "deref.__main__": 7,
}
MAX_FUNCTION_LINES = 100


def _py_files(*roots: str) -> list[Path]:
    return sorted(p for r in roots for p in (REPO / r).rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names)
    return out


def test_every_library_unit_has_a_layer():
    units = {_unit(_module(p)) for p in _py_files("deref")}
    assert units - set(RANK) == set(), f"add these to ARCHITECTURE.md and RANK: {sorted(units - set(RANK))}"


def test_layers_import_only_downwards():
    edges: dict[tuple[str, str], str] = {}
    bad = []
    for path in _py_files("deref"):
        src = _unit(_module(path))
        for name, line in _imports(ast.parse(path.read_text())):
            if not name.startswith("deref"):
                continue
            dst = _unit(name)
            if dst == src:
                continue
            edges.setdefault((src, dst), f"{path.relative_to(REPO)}:{line}")
            if RANK[dst] > RANK[src]:
                bad.append(
                    f"{path.relative_to(REPO)}:{line}: {src} (layer {RANK[src]}) imports {dst} (layer {RANK[dst]})"
                )
    cycles = [
        f"{a} <-> {b} ({edges[(a, b)]}, {edges[(b, a)]})" for (a, b) in edges if (b, a) in edges and a < b
    ]
    assert not bad, "\n".join(bad)
    assert not cycles, "\n".join(cycles)


def test_library_never_imports_streamlit_and_app_builds_no_figure():
    for path in _py_files("deref"):
        names = [n for n, _ in _imports(ast.parse(path.read_text()))]
        assert not any(n.split(".")[0] == "streamlit" for n in names), path
    for path in _py_files("app"):
        names = [n for n, _ in _imports(ast.parse(path.read_text()))]
        figure_libs = [n for n in names if n.split(".")[0] in ("plotly", "matplotlib")]
        assert not figure_libs, (
            f"{path.relative_to(REPO)} imports {figure_libs}: figures belong in deref.figures"
        )


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in _py_files("deref", "app"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_only_deref_runs_reads_run_json():
    readers = {"read_json", "load", "loads", "read_text", "open", "read_bytes"}
    bad = []
    for path in _py_files("deref", "app"):
        if path.is_relative_to(REPO / "deref" / "runs"):
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in readers and "run.json" in (ast.get_source_segment(text, node) or ""):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not bad, "read run.json through deref.runs.RunDir: " + ", ".join(bad)


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (
            "deref.survival deref.calibration deref.recalibration deref.metrics deref.stratify deref.report "
            "deref.figures",
            ("torch", "deref.runs"),
        ),
        ("deref.runs deref.model deref.data.cohort deref.compare", ("torch",)),
    ],
)
def test_light_modules_stay_light(modules, forbidden):
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules.split())
        + f"print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", f"importing {modules} loads {out.stdout.strip()}"
