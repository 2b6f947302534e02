"""`deref ablate`: the paper's grid changes only what each variant names, custom grids are checked,
a killed grid resumes (training only what is missing, with the same final comparison), repeats
re-draw folds and seeds, `--only`, and the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest

import deref.ablate as ablate
from deref.ablate import (
    PAPER_GRID,
    REFERENCE,
    grid_variants,
    paper_variants,
    read_grid,
    resolve_variants,
    run_grid,
    select_variants,
)
from deref.cli.main import main as cli
from deref.errors import ConfigError
from deref.model import ModelConfig
from deref.model.config import tiny_config
from deref.runs import RunDir

#: A tiny DeReF for the small demo's 64-d bags (c2 = 16: fixed_s32 and fixed_s64 cannot be built).
TINY = dict(
    wsi_dim=64,
    c1=16,
    c2=16,
    heads=2,
    landmarks=8,
    snn_hidden=16,
    expert_hidden=8,
    segments=(2, 4, 8),
    fixed_segments=4,
    residual_conv_kernel=3,
)
TWO = {REFERENCE: {}, "no_moe": {"fusion": "concat"}}


@pytest.fixture(scope="module")
def cohort(small_demo):
    import torch

    from deref.data.cohort import load_cohort

    torch.set_num_threads(1)
    c = small_demo / "cohort"
    return load_cohort(c / "cohort.csv", signatures=c / "signatures.csv", bag_dir=c / "bags")


@pytest.fixture(scope="module")
def folds(cohort):
    from deref.data.splits import make_folds

    return make_folds(cohort.patients, k=3, seed=0)


@pytest.fixture(scope="module")
def base(cohort):
    return ModelConfig(m1_sizes=cohort.m1_sizes, m1_names=tuple(f.name for f in cohort.families), **TINY)


@pytest.fixture(scope="module")
def train():
    from deref.training import TrainConfig

    return TrainConfig(epochs=1, batch_size=8, track_validation=False)


def _changed(a: ModelConfig, b: ModelConfig) -> set[str]:
    return {f.name for f in dataclasses.fields(ModelConfig) if getattr(a, f.name) != getattr(b, f.name)}


def _numbers(obj):
    """A comparison's JSON without its run paths (the numbers and names only)."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if k != "path"}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- the paper's grid
def test_the_paper_grid_holds_every_ablation_of_the_paper():
    assert list(PAPER_GRID) == [
        "deref",
        "no_explore",
        "no_decoupling",
        "rca_concat_mlp",
        "rca_cross_attention",
        "no_rfr",
        "no_moe",
        "distance_l1",
        "distance_kl",
        "distance_cosine",
        "distance_mse",
        "fixed_s2",
        "fixed_s8",
        "fixed_s16",
        "fixed_s32",
        "fixed_s64",
        "experts_2",
        "experts_4",
        "experts_6",
        "experts_8",
    ]
    assert PAPER_GRID["no_rfr"] == {"reorg_train": "none", "reorg_eval": "none"}
    assert PAPER_GRID["fixed_s16"] == {"reorg_train": "fixed", "reorg_eval": "fixed", "fixed_segments": 16}


@pytest.mark.parametrize(
    "base",
    [
        tiny_config(),  # the defaults: distance_mse and experts_4 are the full model
        # every switch away from what the variants set, so that each variant changes all it names
        tiny_config(distance="kl", n_experts=3, rca_mode="blocks", reorg_eval="random", fixed_segments=4),
    ],
    ids=["defaults", "other-base"],
)
def test_every_paper_variant_changes_exactly_the_fields_it_names(base):
    variants, notes = paper_variants(base)
    assert notes == [] and list(variants) == list(PAPER_GRID)  # c2 = 128: every s divides it
    configs, aliases = resolve_variants(base, variants)
    for name, changes in variants.items():
        changed = _changed(base, configs[name])
        assert changed <= set(changes), (name, changed)
        assert changed == {k for k, v in changes.items() if getattr(base, k) != v}, name
        assert all(getattr(configs[name], k) == v for k, v in changes.items())
    if base.distance == "mse":
        assert aliases == {"distance_mse": "deref", "experts_4": "deref"}  # trained once
    else:
        assert aliases == {"distance_kl": "deref"}
        assert all(
            _changed(base, configs[n]) == set(variants[n])
            for n in variants
            if n not in ("deref", "distance_kl")
        )


def test_fixed_segment_counts_that_do_not_divide_c2_are_skipped_with_a_note(base):
    variants, notes = paper_variants(base)  # c2 = 16
    assert "fixed_s32" not in variants and "fixed_s64" not in variants and "fixed_s16" in variants
    assert notes == [
        "fixed_s32 skipped: 32 segments do not divide c2 = 16",
        "fixed_s64 skipped: 64 segments do not divide c2 = 16",
    ]
    with pytest.raises(ConfigError, match="ablates DeReF"):
        paper_variants(base.replace(model_type="snn"))


def test_only_picks_variants_and_keeps_the_reference():
    variants, notes = select_variants(PAPER_GRID, ["no_moe", "experts_8"])
    assert list(variants) == ["deref", "no_moe", "experts_8"] and "deref kept" in notes[0]
    with pytest.raises(ConfigError, match="no_such"):
        select_variants(PAPER_GRID, ["no_moe", "no_such"])


# ----------------------------------------------------------------------------- custom grids
def _grid_file(tmp_path, variants, name="grid.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"variants": variants}))
    return path


def test_a_custom_grid_is_read_and_typed(tmp_path, base):
    path = _grid_file(tmp_path, {"wide": {"c2": 32, "segments": [2, 4]}, "drop": {"snn_dropout": 1}})
    grid = read_grid(path)
    assert grid == {"wide": {"c2": 32, "segments": (2, 4)}, "drop": {"snn_dropout": 1.0}}
    assert isinstance(grid["drop"]["snn_dropout"], float)
    variants, notes = grid_variants(path, base)
    assert list(variants) == ["deref", "wide", "drop"] and "added as the reference" in notes[0]
    configs, _ = resolve_variants(base, variants)
    assert _changed(base, configs["wide"]) == {"c2", "segments"}


@pytest.mark.parametrize(
    "variants, message",
    [
        ({"x": {"n_expert": 8}}, "variant 'x': unknown model config field 'n_expert'"),
        ({"x": {"decouple": "false"}}, "variant 'x': field 'decouple' = 'false' \\(str\\); expected bool"),
        ({"x": {"n_experts": 2.5}}, "variant 'x': field 'n_experts' = 2.5 \\(float\\); expected int"),
        ({"x": {"n_experts": True}}, "variant 'x': field 'n_experts' = True \\(bool\\); expected int"),
        ({"x": {"m1_sizes": [1, 2]}}, "variant 'x': field 'm1_sizes' is set by the cohort"),
        ({"x": ["fusion", "concat"]}, "variant 'x': expected a mapping"),
    ],
)
def test_a_wrong_field_or_type_in_a_grid_names_the_variant_and_the_field(tmp_path, variants, message):
    with pytest.raises(ConfigError, match=message):
        read_grid(_grid_file(tmp_path, variants))


def test_an_invalid_value_or_a_malformed_file_is_a_clear_error(tmp_path, base):
    with pytest.raises(ConfigError, match="variant 'x': config field 'rca_mode' = 'nonsense'"):
        resolve_variants(
            base, {"deref": {}, "x": read_grid(_grid_file(tmp_path, {"x": {"rca_mode": "nonsense"}}))["x"]}
        )
    with pytest.raises(
        ConfigError, match="variant 'x': config field 'fixed_segments' = 5 must divide c2 = 16"
    ):
        resolve_variants(base, {"deref": {}, "x": {"fixed_segments": 5}})
    with pytest.raises(ConfigError, match="'deref' is the base configuration"):
        resolve_variants(base, {"deref": {"fusion": "concat"}})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        read_grid(bad)
    bad.write_text(json.dumps({"variant": {"x": {}}}))
    with pytest.raises(ConfigError, match='expected {"variants"'):
        read_grid(bad)
    with pytest.raises(ConfigError, match="grid file not found"):
        read_grid(tmp_path / "missing.json")


def test_a_yaml_grid_is_read_when_pyyaml_is_installed(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("variants:\n  no_moe:\n    fusion: concat\n  no_explore:\n    use_explore: false\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs PyYAML"):
            read_grid(path)
        return
    assert read_grid(path) == {"no_moe": {"fusion": "concat"}, "no_explore": {"use_explore": False}}


# ----------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


def _spy(monkeypatch):
    trained = []
    real = ablate.train_cross_validation

    def spy(cohort, folds, model, train, out, **kw):
        trained.append(kw["name"])
        return real(cohort, folds, model, train, out, **kw)

    monkeypatch.setattr(ablate, "train_cross_validation", spy)
    return trained


def test_a_killed_grid_resumes_training_only_what_is_missing(
    cohort, folds, base, train, tmp_path, monkeypatch
):
    trained = _spy(monkeypatch)
    whole = run_grid(cohort, folds, base, train, tmp_path / "whole", TWO, n_resamples=300)
    assert trained == ["deref", "no_moe"] and whole.trained == [("deref", 0), ("no_moe", 0)]

    def kill_after_first(label, done, total):
        if label == "grid" and done == 1:
            raise Killed

    out = tmp_path / "killed"
    trained.clear()
    with pytest.raises(Killed):
        run_grid(cohort, folds, base, train, out, TWO, n_resamples=300, progress=kill_after_first)
    assert trained == ["deref"] and (out / "deref" / "run.json").is_file() and not (out / "no_moe").exists()
    grid = json.loads((out / "grid.json").read_text())
    assert grid["rounds"][0]["runs"]["deref"]["status"] == "finished"
    assert grid["rounds"][0]["runs"]["no_moe"]["status"] == "pending" and grid["complete"] is False
    # the second run was killed half-way: a folder without run.json
    (out / "no_moe" / "fold_0").mkdir(parents=True)
    (out / "no_moe" / "fold_0" / "model.safetensors").write_bytes(b"partial")
    first = os.stat(out / "deref" / "run.json").st_mtime_ns

    trained.clear()
    resumed = run_grid(cohort, folds, base, train, out, TWO, n_resamples=300)
    assert trained == ["no_moe"] and resumed.trained == [("no_moe", 0)]
    assert [r.status for r in resumed.runs] == ["kept", "trained"]
    assert os.stat(out / "deref" / "run.json").st_mtime_ns == first  # never retrained
    assert (out / "_incomplete" / "no_moe" / "fold_0" / "model.safetensors").read_bytes() == b"partial"
    assert any("moved aside" in n for n in resumed.notes)
    a = json.loads((tmp_path / "whole" / "comparison" / "comparison.json").read_text())
    b = json.loads((out / "comparison" / "comparison.json").read_text())
    assert _numbers(a) == _numbers(b)  # the same numbers as the uninterrupted grid
    assert b["pairs"][0]["other"] == "no_moe" and b["reference"] == "deref"
    grid = json.loads((out / "grid.json").read_text())
    assert grid["complete"] is True
    assert {v: r["status"] for v, r in grid["rounds"][0]["runs"].items()} == {
        "deref": "finished",
        "no_moe": "finished",
    }
    assert grid["variants"]["no_moe"]["changes"] == {"fusion": "concat"}
    assert grid["variants"]["no_moe"]["config"]["fusion"] == "concat"

    # a finished run of another configuration is refused, never silently reused
    trained.clear()
    with pytest.raises(ConfigError, match="deref.*epochs \\(1 vs 2\\)"):
        run_grid(cohort, folds, base, dataclasses.replace(train, epochs=2), out, TWO)
    assert trained == []


# ----------------------------------------------------------------------------- repeats
def test_repeats_train_rounds_with_other_seeds_and_redrawn_folds(cohort, folds, base, train, tmp_path):
    out = tmp_path / "grid"
    result = run_grid(cohort, folds, base, train, out, TWO, repeats=2, seed=3, n_resamples=200)
    assert [(r.variant, r.round, r.seed) for r in result.runs] == [
        ("deref", 0, 3),
        ("no_moe", 0, 3),
        ("deref", 1, 1003),
        ("no_moe", 1, 1003),
    ]
    r0, r1 = RunDir(out / "deref" / "r0"), RunDir(out / "deref" / "r1")
    assert (r0.info.train["seed"], r1.info.train["seed"]) == (3, 1003)
    given = {c: f.index for f in folds for c in f.val}
    assert r0.info.validation_folds() == given  # round 0: the folds given
    assert r1.info.validation_folds() != given  # round 1: re-drawn (seed + 1)
    assert RunDir(out / "no_moe" / "r1").info.validation_folds() == r1.info.validation_folds()
    grid = json.loads((out / "grid.json").read_text())
    assert [(r["seed"], r["folds_seed"]) for r in grid["rounds"]] == [(3, None), (1003, 4)]
    rounds = pd.read_csv(out / "comparison" / "rounds.csv")
    assert list(rounds["variant"]) == ["deref", "no_moe"]
    per_round = [json.loads((out / "comparison" / f"r{k}" / "comparison.json").read_text()) for k in (0, 1)]
    pooled = [next(r for r in c["runs"] if r["name"] == "no_moe")["pooled_harrell"] for c in per_round]
    delta = [c["pairs"][0]["delta_c"] for c in per_round]
    row = rounds.set_index("variant").loc["no_moe"]
    assert row["pooled_c_mean"] == pytest.approx(np.mean(pooled), abs=1e-12)
    assert row["pooled_c_std"] == pytest.approx(np.std(pooled, ddof=1), abs=1e-12)
    assert row["delta_c_mean"] == pytest.approx(np.mean(delta), abs=1e-12)
    assert np.isnan(rounds.set_index("variant").loc["deref", "delta_c_mean"])
    assert "mean ± std" in (out / "comparison" / "rounds.md").read_text()


def test_folds_from_split_files_are_kept_in_every_round(cohort, folds):
    from pathlib import Path

    given = [dataclasses.replace(f, source=Path(f"splits_{f.index}.csv")) for f in folds]
    rounds, seeds, notes = ablate._round_folds(cohort, given, 0, 3)
    assert rounds == [given] * 3 and seeds == [None] * 3 and "split files" in notes[0]
    drawn, seeds, notes = ablate._round_folds(cohort, folds, 0, 2)
    assert seeds == [None, 1] and notes == [] and drawn[1] != list(folds)


# ----------------------------------------------------------------------------- the CLI
def test_cli_ablate_end_to_end_with_only_and_resume(small_demo, tmp_path, capsys):
    c = small_demo / "cohort"
    grid = _grid_file(
        tmp_path, {"no_moe": {"fusion": "concat"}, "no_rfr": {"reorg_train": "none", "reorg_eval": "none"}}
    )
    out = tmp_path / "grid"
    sets = [
        f"--set={k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in TINY.items()
        if k != "wsi_dim"
    ]
    args = [
        "ablate",
        str(c / "cohort.csv"),
        "--signatures",
        str(c / "signatures.csv"),
        "--bags",
        str(c / "bags"),
        "--folds",
        "3",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-track-validation",
        *sets,
        "--grid",
        str(grid),
        "--only",
        "no_moe",
        "--resamples",
        "200",
        "--out",
        str(out),
    ]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "deref: training" in printed and "no_moe: training" in printed and "no_rfr" not in printed
    assert "[2/2] runs done" in printed
    assert "ΔC" in printed and "no_moe" in printed.split("reference: deref")[1]  # the comparison table
    comp = json.loads((out / "comparison" / "comparison.json").read_text())
    assert [r["name"] for r in comp["runs"]] == ["deref", "no_moe"]
    assert {"comparison.md", "comparison.tex", "forest.png"} <= {
        p.name for p in (out / "comparison").iterdir()
    }
    assert RunDir(out / "no_moe").config.fusion == "concat" and RunDir(out / "deref").config.c2 == 16

    assert cli(args) == 0  # again: everything kept, nothing trained
    printed = capsys.readouterr().out
    assert "training" not in printed and printed.count("finished earlier, kept") == 2

    at = args.index("--only")
    assert cli([*args[: at + 1], "no_such", *args[at + 2 :]]) == 1
    assert "no_such" in capsys.readouterr().err
    at = args.index("--grid")
    assert cli([*args[: at + 1], "paper", *args[at + 2 :], "--model", "snn"]) == 1
    assert "ablates DeReF" in capsys.readouterr().err
