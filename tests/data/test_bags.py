"""WSI bags: reading CLAM .h5 and .pt files, refusing unsafe pickles, every error named."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from deref.data.bags import (
    bag_stem,
    find_bag,
    load_patient_bag,
    peek_bag_shape,
    read_bag,
    write_bag_h5,
)
from deref.errors import DataError

TCGA_SLIDE = "TCGA-2F-A9KO-01Z-00-DX1.195576CF-B739-4BD9-B15B-4A70AE287D3E"


def features(n: int = 5, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def coords(n: int = 5) -> np.ndarray:
    return np.stack([np.arange(n) * 256, np.arange(n) * 512], axis=1)


class _WritesFileOnLoad:
    """Unpickling this object opens (creates) ``marker`` for writing."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --------------------------------------------------------------------------- reading
def test_read_h5_roundtrip(tmp_path):
    f = features()
    path = write_bag_h5(tmp_path / "s.h5", f, coords(), {"patch_size": 256, "patch_level": 0, "name": "s"})
    bag = read_bag(path, expected_dim=8)
    assert bag.features.dtype == np.float32 and bag.features.shape == (5, 8)
    assert bag.coords.dtype == np.int64 and bag.coords.shape == (5, 2)
    np.testing.assert_array_equal(bag.features, f)
    np.testing.assert_array_equal(bag.coords, coords())
    assert bag.attrs == {"patch_size": 256, "patch_level": 0, "name": "s"}
    assert type(bag.attrs["patch_size"]) is int and bag.path == path
    assert (bag.n, bag.dim) == (5, 8) and peek_bag_shape(path) == (5, 8)


def test_read_h5_float16_and_clam_attrs_on_coords_only(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as h:
        h.create_dataset("features", data=features().astype(np.float16))
        ds = h.create_dataset("coords", data=coords().astype(np.int32))
        ds.attrs["patch_size"] = np.int64(512)
        ds.attrs["name"] = b"slide"
    bag = read_bag(path)
    assert bag.features.dtype == np.float32 and bag.coords.dtype == np.int64
    assert bag.attrs == {"patch_size": 512, "name": "slide"}


def test_read_pt_tensor_and_dict(tmp_path):
    f = features()
    torch.save(torch.from_numpy(f).to(torch.bfloat16), tmp_path / "a.pt")
    bag = read_bag(tmp_path / "a.pt", expected_dim=8)
    assert bag.features.dtype == np.float32 and bag.coords is None
    np.testing.assert_allclose(bag.features, f, rtol=1e-2, atol=1e-2)
    torch.save(
        {"features": torch.from_numpy(f), "coords": torch.from_numpy(coords()), "mpp": 0.5}, tmp_path / "b.pt"
    )
    bag = read_bag(tmp_path / "b.pt")
    np.testing.assert_array_equal(bag.features, f)
    np.testing.assert_array_equal(bag.coords, coords())
    assert bag.attrs == {"mpp": 0.5}


@pytest.mark.parametrize("layout", ["plain pickle", "torch zip"])
def test_pt_that_would_run_code_is_refused(tmp_path, layout):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"features": _WritesFileOnLoad(marker)}
    if layout == "plain pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    assert not marker.exists()
    with pytest.raises(DataError, match=r"evil\.pt: refused to load"):
        read_bag(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- errors
def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.h5: bag file not found"):
        read_bag(tmp_path / "nope.h5")
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(DataError, match=r"x\.npy: unknown bag format '\.npy'"):
        read_bag(tmp_path / "x.npy")


def test_corrupt_files(tmp_path):
    (tmp_path / "c.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(DataError, match=r"c\.h5: unreadable or corrupt HDF5"):
        read_bag(tmp_path / "c.h5")
    torch.save(torch.ones(3, 4), tmp_path / "c.pt")
    (tmp_path / "c.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:100])
    with pytest.raises(DataError, match=r"c\.pt: unreadable or corrupt"):
        read_bag(tmp_path / "c.pt")


def test_no_features(tmp_path):
    path = write_bag_h5(tmp_path / "s.h5", None, coords())
    with pytest.raises(DataError, match=r"s\.h5: no 'features' dataset \(found \['coords'\]\)"):
        read_bag(path)
    torch.save({"feats": torch.ones(2, 3)}, tmp_path / "d.pt")
    with pytest.raises(DataError, match=r"d\.pt: dict without 'features' \(keys \['feats'\]\)"):
        read_bag(tmp_path / "d.pt")


def test_empty_bag(tmp_path):
    path = write_bag_h5(tmp_path / "s.h5", np.zeros((0, 8)), np.zeros((0, 2)))
    with pytest.raises(DataError, match=r"s\.h5: empty bag \(0 patches\)"):
        read_bag(path)


def test_nan_and_inf_rows_counted(tmp_path):
    f = features()
    f[1, 3] = np.nan
    f[4, 0] = np.inf
    f[4, 1] = np.nan
    path = write_bag_h5(tmp_path / "s.h5", f, coords())
    with pytest.raises(DataError, match=r"s\.h5: 2 of 5 patch\(es\) have NaN or Inf"):
        read_bag(path)


def test_dim_mismatch_names_both(tmp_path):
    path = write_bag_h5(tmp_path / "s.h5", features(d=8), coords())
    with pytest.raises(DataError, match=r"s\.h5: features are 8-dimensional; expected 1024"):
        read_bag(path, expected_dim=1024)


def test_coords_shape_mismatch(tmp_path):
    path = write_bag_h5(tmp_path / "s.h5", features(n=5), coords(n=4))
    with pytest.raises(DataError, match=r"s\.h5: coords have shape \(4, 2\); expected \(5, 2\)"):
        read_bag(path)
    torch.save({"features": torch.ones(3, 2), "coords": torch.ones(3)}, tmp_path / "c.pt")
    with pytest.raises(DataError, match=r"c\.pt: coords have shape \(3,\)"):
        read_bag(tmp_path / "c.pt")


# --------------------------------------------------------------------------- finding
def test_bag_stem_strips_only_slide_suffixes():
    assert bag_stem(TCGA_SLIDE + ".svs") == TCGA_SLIDE
    assert bag_stem(TCGA_SLIDE) == TCGA_SLIDE  # the dot inside the id stays
    assert bag_stem("case.NDPI") == "case"


def test_find_bag_prefers_h5_then_pt(tmp_path):
    torch.save(torch.ones(2, 3), tmp_path / f"{TCGA_SLIDE}.pt")
    assert find_bag(TCGA_SLIDE + ".svs", tmp_path) == tmp_path / f"{TCGA_SLIDE}.pt"
    write_bag_h5(tmp_path / f"{TCGA_SLIDE}.h5", np.ones((2, 3)), None)
    assert find_bag(TCGA_SLIDE + ".svs", tmp_path) == tmp_path / f"{TCGA_SLIDE}.h5"


def test_find_bag_clam_subfolders(tmp_path):
    write_bag_h5(tmp_path / "h5_files" / "s1.h5", np.ones((2, 3)), None)
    assert find_bag("s1.svs", tmp_path) == tmp_path / "h5_files" / "s1.h5"


def test_find_bag_missing_names_both_candidates(tmp_path):
    with pytest.raises(DataError) as info:
        find_bag("s9.svs", tmp_path)
    msg = str(info.value)
    assert "slide s9.svs: no bag file" in msg
    assert str(tmp_path / "s9.h5") in msg and str(tmp_path / "s9.pt") in msg


@pytest.mark.parametrize("slide", ["../secret", "a/b.svs", "..", "", "a\\b"])
def test_find_bag_refuses_paths(tmp_path, slide):
    with pytest.raises(DataError):
        find_bag(slide, tmp_path)


# --------------------------------------------------------------------------- patient bags
def test_load_patient_bag_concatenates(tmp_path):
    write_bag_h5(tmp_path / "a.h5", features(3, seed=1), coords(3), {"patch_size": 256, "mag": 20})
    write_bag_h5(tmp_path / "b.h5", features(4, seed=2), coords(4) + 7, {"patch_size": 256, "mag": 40})
    bag = load_patient_bag(["a.svs", "b.svs"], tmp_path, expected_dim=8)
    assert bag.features.shape == (7, 8) and bag.coords.shape == (7, 2)
    np.testing.assert_array_equal(bag.slide_index, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(bag.features[3:], features(4, seed=2))
    np.testing.assert_array_equal(bag.coords[3:], coords(4) + 7)
    assert bag.slide_ids == ["a.svs", "b.svs"] and bag.paths == [tmp_path / "a.h5", tmp_path / "b.h5"]
    assert bag.attrs["patch_size"] == 256 and "mag" not in bag.attrs
    assert [a["mag"] for a in bag.attrs["per_slide"]] == [20, 40]


def test_load_patient_bag_errors(tmp_path):
    write_bag_h5(tmp_path / "a.h5", features(3, d=8), coords(3))
    write_bag_h5(tmp_path / "b.h5", features(3, d=6), None)
    with pytest.raises(DataError, match=r"b\.h5: features are 6-dimensional; expected 8"):
        load_patient_bag(["a", "b"], tmp_path)
    with pytest.raises(DataError, match="no bag file"):
        load_patient_bag(["a", "zzz"], tmp_path)
    with pytest.raises(DataError, match="no slide"):
        load_patient_bag([], tmp_path)
    bag = load_patient_bag(["b"], tmp_path)
    assert bag.coords is None and bag.path == tmp_path / "b.h5"
