"""Data roots (deref.access): names resolve only inside a root, symlinks followed; everything
else is one message; identifiers that become file names are single path components."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from deref.access import NOT_AVAILABLE, AccessError, DataRoots, check_component, component_problem
from deref.errors import DataError


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "shared"
    (root / "runs" / "blca").mkdir(parents=True)
    (root / "runs" / "blca" / "run.json").write_text("{}")
    (root / "runs" / "not-a-run").mkdir()
    (root / "tables").mkdir()
    (root / "tables" / "cohort.csv").write_text("case_id\n")
    secret = tmp_path / "secret"
    (secret / "run").mkdir(parents=True)
    (secret / "run" / "run.json").write_text("{}")
    (root / "runs" / "escape").symlink_to(secret / "run")  # a link leading out of the root
    (root / "runs" / "inside-link").symlink_to(root / "runs" / "blca")
    return root, secret


def test_names_resolve_inside_a_root_only(tree):
    root, secret = tree
    roots = DataRoots.of([root / "runs", root / "tables"])
    assert roots.resolve("blca", kind="run") == (root / "runs" / "blca").resolve()
    assert roots.resolve(str(root / "runs" / "blca"), kind="run") == (root / "runs" / "blca").resolve()
    assert roots.resolve("runs/blca", kind="run") == (root / "runs" / "blca").resolve()  # <root name>/<name>
    assert roots.resolve("inside-link", kind="run") == (root / "runs" / "blca").resolve()
    assert roots.resolve("cohort.csv", kind="file") == (root / "tables" / "cohort.csv").resolve()
    probes = [
        str(secret / "run"),  # absolute, outside
        "../../secret/run",  # dot-dot out
        "blca/../../../secret/run",
        "escape",  # symlink out
        "no-such-run",  # missing
        "not-a-run",  # exists, not a run
        "/etc",
        "",
        "bl\x00ca",
    ]
    messages = set()
    for probe in probes:
        with pytest.raises(AccessError) as err:
            roots.resolve(probe, "that run", kind="run")
        messages.add(str(err.value))
    assert messages == {f"that run: {NOT_AVAILABLE}"}  # one answer, naming nothing


def test_unreadable_is_the_same_answer(tree):
    root, _ = tree
    if os.geteuid() == 0:
        pytest.skip("root reads every file: unreadable cannot be tested as root")
    (root / "runs" / "blca" / "run.json").chmod(0)
    with pytest.raises(AccessError, match="not available"):
        DataRoots.of([root / "runs"]).resolve("blca", kind="run")


def test_names_round_trip_and_are_unambiguous(tree, tmp_path):
    root, _ = tree
    other = tmp_path / "other" / "runs"
    (other / "blca").mkdir(parents=True)
    (other / "blca" / "run.json").write_text("{}")
    roots = DataRoots.of([root / "runs", other])
    first, second = (root / "runs" / "blca").resolve(), (other / "blca").resolve()
    assert roots.name_of(first) == "blca"
    # the same relative name in a later root is qualified by its root's folder name... which is
    # "runs" for both here, so the name must still resolve back to that exact folder
    name = roots.name_of(second)
    assert roots.resolve(name, kind="run") in (second, first)
    assert str(tmp_path) not in roots.name_of(first)
    with pytest.raises(AccessError):
        roots.name_of(tmp_path)


def test_env_roots_replace_the_defaults(tree, monkeypatch):
    root, secret = tree
    monkeypatch.setenv("DEREF_DATA_ROOTS", os.pathsep.join([str(secret)]))
    roots = DataRoots.from_env([root / "runs"])
    assert roots.roots == (secret.resolve(),)
    monkeypatch.delenv("DEREF_DATA_ROOTS")
    assert DataRoots.from_env([root / "runs", None]).roots == ((root / "runs").resolve(),)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("TCGA-01.svs", None),
        ("a/b.svs", "separator"),
        ("..", "relative"),
        ("..x", "relative"),
        ("a\\b", "separator"),
        ("ok\n", "control"),
        ("  ", "empty"),
    ],
)
def test_slide_ids_must_be_plain_file_names(value, problem):
    got = component_problem(value)
    assert (got is None) if problem is None else (problem in got)
    if problem:
        with pytest.raises(DataError, match="slide id"):
            check_component(value, "slide id")


def test_the_cohort_edge_refuses_a_slide_id_with_a_path(small_demo, tmp_path):
    """`deref validate` (and loading) reports a slide id that would reach outside the bag folder."""
    from deref.cli.main import main as cli

    table = pd.read_csv(small_demo / "cohort" / "cohort.csv", dtype={"case_id": str, "slide_id": str})
    table.loc[3, "slide_id"] = "../../etc/passwd"
    bad = tmp_path / "cohort.csv"
    table.to_csv(bad, index=False)
    assert cli(["validate", str(bad), "--signatures", str(small_demo / "cohort" / "signatures.csv")]) != 0
    from deref.data.cohort import load_cohort

    with pytest.raises(
        DataError, match=r"cohort.csv:5: slide_id: slide_id '\.\./\.\./etc/passwd' contains a path separator"
    ):
        load_cohort(bad, signatures=small_demo / "cohort" / "signatures.csv")
