"""The explanation cache on its own (no model): what the key covers, atomic round trips, and
what it refuses or survives. The end-to-end cache behaviour of ``explain_patient`` is in
test_attribution.py."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest

from deref.explain.cache import ExplanationCache, safe_name, weights_fingerprint


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "fold_0").mkdir(parents=True)
    (run / "fold_0" / "model.safetensors").write_bytes(b"weights v1")
    (run / "fold_0" / "preprocessing.json").write_text("{}")
    return run


def _key(cache, run, **over):
    args = dict(
        fold=0,
        case_id="TCGA-AB-0001",
        method="ig",
        settings={"steps": 32, "bf16": False},
        weights=run / "fold_0" / "model.safetensors",
        extra_files=[run / "fold_0" / "preprocessing.json"],
        data_fingerprint="table-sha",
    )
    args.update(over)
    return cache.key(**args)


def test_weights_fingerprint_is_the_sha256_of_the_file_and_follows_a_rewrite(run_dir):
    path = run_dir / "fold_0" / "model.safetensors"
    assert weights_fingerprint(path) == hashlib.sha256(b"weights v1").hexdigest()
    path.write_bytes(b"weights v2, longer")  # another size: another memo entry
    assert weights_fingerprint(path) == hashlib.sha256(b"weights v2, longer").hexdigest()


def test_the_key_changes_with_everything_the_numbers_depend_on(run_dir):
    cache = ExplanationCache(run_dir)
    base = _key(cache, run_dir)
    assert _key(cache, run_dir).digest == base.digest  # deterministic
    changed = {
        "fold": _key(cache, run_dir, fold=1),
        "case": _key(cache, run_dir, case_id="TCGA-AB-0002"),
        "method": _key(cache, run_dir, method="grad"),
        "settings": _key(cache, run_dir, settings={"steps": 64, "bf16": False}),
        "data": _key(cache, run_dir, data_fingerprint="other-table"),
    }
    (run_dir / "fold_0" / "preprocessing.json").write_text('{"changed": true}')
    changed["extra file"] = _key(cache, run_dir)
    (run_dir / "fold_0" / "model.safetensors").write_bytes(b"retrained weights")
    changed["weights"] = _key(cache, run_dir)
    digests = [base.digest] + [k.digest for k in changed.values()]
    assert len(set(digests)) == len(digests), changed


def test_round_trip_in_the_fold_folder(run_dir):
    cache = ExplanationCache(run_dir)
    key = _key(cache, run_dir, case_id="TCGA/AB 0001")
    arrays = {"coords": np.arange(6, dtype=np.int64).reshape(3, 2), "names": np.asarray(["a", "bc"])}
    path = cache.save(key, arrays, {"risk": 0.25, "targets": ["risk"]})
    assert path == run_dir / "explanations" / "fold_0" / f"TCGA_AB_0001__ig__{key.digest}.npz"
    assert cache.entries() == [path]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    got, meta = cache.load(key)
    np.testing.assert_array_equal(got["coords"], arrays["coords"])
    assert got["names"].tolist() == ["a", "bc"]
    assert meta["risk"] == 0.25 and meta["targets"] == ["risk"]
    assert meta["__key_description__"]["case_id"] == "TCGA/AB 0001"


def test_a_file_under_another_key_or_unreadable_is_a_miss(run_dir, caplog):
    cache = ExplanationCache(run_dir)
    key = _key(cache, run_dir)
    assert cache.load(key) is None  # nothing stored
    path = cache.save(key, {"x": np.zeros(2)}, {})
    with np.load(path) as data:
        meta = json.loads(str(data["__meta__"][()]))
    meta["__key__"] = "someone-else"
    np.savez(path, x=np.zeros(2), __meta__=np.array(json.dumps(meta)))
    assert cache.load(key) is None
    path.write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING):
        assert cache.load(key) is None
    assert "unreadable" in caplog.text and path.name in caplog.text


def test_python_objects_are_refused(run_dir):
    cache = ExplanationCache(run_dir)
    with pytest.raises(TypeError, match="numeric or string"):
        cache.save(_key(cache, run_dir), {"x": np.array([{"a": 1}], dtype=object)}, {})


def test_a_run_folder_that_cannot_be_written_is_not_an_error(run_dir, caplog):
    (run_dir / "explanations").write_text("a file where the cache folder should be")
    cache = ExplanationCache(run_dir)
    with caplog.at_level(logging.WARNING):
        assert cache.save(_key(cache, run_dir), {"x": np.zeros(2)}, {}) is None
    assert "cannot cache" in caplog.text


def test_safe_name_keeps_safe_characters_and_caps_the_length():
    assert safe_name("TCGA-2F-A9KO.01_x") == "TCGA-2F-A9KO.01_x"
    assert safe_name("a/b c:d") == "a_b_c_d"
    assert safe_name("") == "_"
    assert len(safe_name("x" * 200)) == 80
