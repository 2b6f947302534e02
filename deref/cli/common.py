"""Helpers shared by the CLI subcommands: progress bars, config overrides, cohort loading."""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable

from tqdm.auto import tqdm

from deref.errors import ConfigError


def add_survival_column_args(p: argparse.ArgumentParser) -> None:
    """``--time-col`` and ``--censorship-col`` (MCAT's names by default)."""
    p.add_argument(
        "--time-col", default="survival_months", help="survival time column (default: %(default)s)"
    )
    p.add_argument(
        "--censorship-col",
        default="censorship",
        help="censorship column, 1 = censored (default: %(default)s)",
    )


def add_cohort_args(p: argparse.ArgumentParser, table_required: bool = True) -> None:
    if table_required:
        p.add_argument("table", help="cohort table in the MCAT layout (.csv or .zip)")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("--signatures", help="signatures table (one column per gene family)")
    fam.add_argument("--families", help="families JSON written by `deref genomics`")
    p.add_argument("--bags", help="folder of WSI bags (<slide stem>.h5 or .pt)")
    add_mri_args(p)
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="keep patients without an MRI sequence or a slide's bag (an error by default): the missing "
        "input is skipped in training and replaced by the training fold's mean token in prediction; "
        "predictions.csv flags them (column 'missing')",
    )
    add_survival_column_args(p)


def add_mri_args(p: argparse.ArgumentParser) -> None:
    """``--mri-manifest`` and ``--mri-features``: an MRI + WSI cohort (modality 1 = the MRI)."""
    p.add_argument(
        "--mri-manifest",
        metavar="CSV",
        help="MRI manifest: case_id, one column per sequence (NIfTI file or DICOM folder), mask; "
        "modality 1 is then the MRI instead of genomics",
    )
    p.add_argument(
        "--mri-features",
        metavar="DIR",
        help="folder of the manifest's per-sequence MRI vectors (`deref mri --per-sequence --out DIR`): "
        "frozen features, the fast mode",
    )
    p.add_argument(
        "--mri-cubes",
        metavar="DIR",
        help="instead of --mri-features: folder of the manifest's ROI cubes (`deref mri --cubes --out DIR`); "
        "a 3D ResNet is then trained from scratch with the model (the paper's end-to-end protocol)",
    )


def load_cohort_from_args(args: argparse.Namespace):
    from deref.data.cohort import load_cohort

    return load_cohort(
        args.table,
        signatures=args.signatures,
        families_json=args.families,
        bag_dir=args.bags,
        time_col=args.time_col,
        censorship_col=args.censorship_col,
        mri_manifest=getattr(args, "mri_manifest", None),
        mri_features=getattr(args, "mri_features", None),
        mri_cubes=getattr(args, "mri_cubes", None),
        allow_missing=bool(getattr(args, "allow_missing", False)),
    )


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _typed(value: str, type_name: str, key: str, flag: str):
    """``value`` (the text after ``=``) as the field's declared type (``bool``, ``int``, ``float``,
    ``str``, optional numbers, tuples); a value that is not of that type is a ConfigError."""
    text = value.strip()
    optional = type_name.replace(" ", "").endswith("|None")
    base = type_name.replace(" ", "").removesuffix("|None")
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if base == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        if base == "str":
            return text
        parsed = ast.literal_eval(text)
        return tuple(parsed) if base.startswith("tuple") and isinstance(parsed, (list, tuple)) else parsed
    except (ValueError, SyntaxError):
        raise ConfigError(f"{flag} {key}={value!r}: expected a value of type {type_name}") from None


def typed_overrides(items: list[str] | None, *classes, flag: str = "--set") -> dict:
    """``key=value`` pairs of the dataclass fields of ``classes``, each value parsed as its field's
    declared type (``decouple=false`` is ``False``, not the string ``"false"``); an unknown key or
    a value of the wrong type is a ConfigError naming it."""
    import dataclasses

    types = {f.name: str(f.type) for cls in classes for f in dataclasses.fields(cls)}
    out = {}
    for key, value in _split_pairs(items, flag):
        if key not in types:
            raise ConfigError(f"{flag} {key}: unknown setting; known: {', '.join(sorted(types))}")
        out[key] = _typed(value, types[key], key, flag)
    return out


def typed_grid(items: list[str] | None, *classes) -> dict[str, list]:
    """``--grid key=v1,v2``: each value of the list parsed as the field's declared type."""
    import dataclasses

    types = {f.name: str(f.type) for cls in classes for f in dataclasses.fields(cls)}
    out: dict[str, list] = {}
    for key, value in _split_pairs(items, "--grid"):
        if key not in types:
            raise ConfigError(f"--grid {key}: unknown setting; known: {', '.join(sorted(types))}")
        out[key] = [_typed(v, types[key], key, "--grid") for v in value.split(",")]
    return out


def _split_pairs(items: list[str] | None, flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected key=value")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value))
    return pairs


class BarProgress:
    """A ``progress(label, done, total)`` callback drawing one tqdm bar per label."""

    def __init__(self, disable: bool | None = None) -> None:
        self.bar = None
        self.label = None
        self.disable = (not sys.stderr.isatty()) if disable is None else disable

    def __call__(self, label: str, done: int, total: int) -> None:
        if label != self.label:
            self.close()
            self.label = label
            self.bar = tqdm(total=total, desc=label, unit="batch", leave=False, disable=self.disable)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def simple_progress(desc: str) -> Callable[[int, int], None]:
    bar = {"b": None}

    def cb(done: int, total: int) -> None:
        if bar["b"] is None:
            bar["b"] = tqdm(total=total, desc=desc, disable=not sys.stderr.isatty())
        bar["b"].n = done
        bar["b"].refresh()
        if done >= total:
            bar["b"].close()

    return cb
