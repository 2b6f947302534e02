"""``deref explain``: one patient's attributions (patches, gene families) and a heatmap per slide."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  # gradient x input (seconds), all targets, into ./explain-DEMO-0001
  deref explain runs/demo/run DEMO-0001

  # Integrated Gradients with 64 points, heatmap of the WSI-specific feature
  deref explain runs/demo/run DEMO-0001 --method ig --steps 64 --heatmap-target specific_wsi --out out/

Files written to --out (PREFIX = <case>__<method>):
  PREFIX__patches.csv   patch, slide_id, x, y, attention_layer1/2, one score column per target
  PREFIX__families.csv  family, one score column per target
  PREFIX.npz            the same arrays (patch_scores__<target>, family_scores__<target>, coords, ...)
  PREFIX.json           target values, IG convergence deltas, baseline, settings, slide files
  PREFIX__<target>__<slide>.png  heatmap of --heatmap-target over each slide (blank canvas,
                                 with a warning naming the files looked for, when the slide
                                 file is not found or cannot be read)
An MRI + WSI run also writes (the families files then hold MRI sequences):
  PREFIX__voxels.npz    scores__<target> (S, G, G, G) voxel attributions through the 3D encoder
                        (the run's own 3D ResNet end to end, or the frozen backbone), cubes,
                        inside (the tumour mask), sequences, spacing_mm
  PREFIX__<target>__mri.png  --heatmap-target on its top sequence: axial, coronal and sagittal
                        slices through its strongest voxel, with the tumour contour
Targets: risk (the model's risk) and each decoupled feature (its first-order contribution to
the risk); see `deref.explain.attribution`. Results are cached in RUN/explanations/.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain",
        help="attributions of one patient (patches, gene families) and heatmaps",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory written by `deref train`")
    p.add_argument("case_id", help="the patient")
    p.add_argument("--method", choices=("grad", "ig"), default="grad", help="grad (default, fast) or ig")
    p.add_argument("--steps", type=int, default=32, help="IG points (default: %(default)s)")
    p.add_argument(
        "--fold", type=int, default=None, help="fold model (default: the one that held the patient out)"
    )
    p.add_argument("--targets", default=None, help="comma-separated targets (default: all)")
    p.add_argument(
        "--heatmap-target", default="risk", help="target drawn in the heatmaps (default: %(default)s)"
    )
    p.add_argument("--out", default=None, help="output folder (default: ./explain-<case>)")
    p.add_argument("--table", help="cohort table (default: the run's own)")
    p.add_argument("--bags", help="bag folder (default: the run's own)")
    p.add_argument("--slides", help="slide folder (default: next to the bag folder)")
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the attribution passes")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write RUN/explanations/")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from deref.explain.attribution import explain_patient, slide_candidates
    from deref.explain.cache import safe_name
    from deref.inference import Predictor

    pred = Predictor.from_run(args.run, device=args.device, bf16=args.bf16)
    cohort = pred.load_cohort(args.table, args.bags)
    attr = explain_patient(
        pred,
        cohort,
        args.case_id,
        method=args.method,
        fold=args.fold,
        steps=args.steps,
        targets=_targets(args, pred.config),
        use_cache=not args.no_cache,
        slide_dir=args.slides,
        progress=lambda msg: log.info("%s", msg),
    )
    out = Path(args.out) if args.out else Path(f"explain-{safe_name(args.case_id)}")
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / f"{safe_name(attr.case_id)}__{attr.method}"
    _write_tables(attr, prefix)
    slides = [slide_candidates(sid, cohort.bag_dir, args.slides) for sid in attr.slide_ids]
    pngs = _write_heatmaps(attr, args.heatmap_target, prefix, slides)
    label = "sequences" if pred.run.info.m1_kind == "mri" else "families"
    _print_summary(attr, out, prefix, len(pngs), label)
    if pred.run.info.m1_kind == "mri":
        _write_voxels(pred, cohort, attr, args, prefix)
    return 0


def _write_voxels(pred, cohort, attr, args: argparse.Namespace, prefix: Path) -> None:
    """An MRI run: each target's voxel attribution (``PREFIX__voxels.npz``: ``scores__<target>``
    (S, G, G, G), ``cubes``, ``inside``, ``sequences``, ``spacing_mm``) and a PNG of
    ``--heatmap-target`` on its top sequence through its strongest voxel."""
    import numpy as np

    from deref.explain.mri import explain_voxels
    from deref.figures import MriView, export_figure, figure_meta, orthogonal_slices_matplotlib

    maps = {
        t: explain_voxels(pred, cohort, attr.case_id, t, attr.method, fold=attr.fold, steps=args.steps)
        for t in attr.targets
    }
    first = next(iter(maps.values()))
    arrays = {f"scores__{t}": m.scores for t, m in maps.items()}
    arrays |= {f"sequence_scores__{t}": m.sequence_scores for t, m in maps.items()}
    arrays |= {
        "cubes": first.cubes,
        "inside": first.inside,
        "sequences": np.asarray(first.sequences, dtype=str),
    }
    np.savez_compressed(f"{prefix}__voxels.npz", spacing_mm=first.spacing_mm, **arrays)
    att = maps[args.heatmap_target]
    s = int(np.argmax(np.abs(att.sequence_scores)))
    point = np.unravel_index(int(np.argmax(np.abs(att.scores[s]))), att.scores[s].shape)
    view = MriView(
        att.cubes[s], (att.spacing_mm,) * 3, mask=att.inside, overlay=att.scores[s], sequence=att.sequences[s]
    )
    meta = figure_meta(
        run=pred.run.info.name, case=attr.case_id, target=att.target, method=att.method, fold=att.fold
    )
    title = f"{attr.case_id} · {att.target} · {att.method} on {att.sequences[s]} (its top sequence)"
    fig = orthogonal_slices_matplotlib(view, point, title=title, meta=meta)
    png = Path(f"{prefix}__{args.heatmap_target}__mri.png")
    png.write_bytes(export_figure(fig, "png", meta))
    for t, m in maps.items():
        delta = "" if m.convergence_delta is None else f", IG delta {m.convergence_delta:+.2e}"
        bars = ", ".join(f"{n} {v:+.3g}" for n, v in zip(m.sequences, m.sequence_scores))
        print(f"  voxels {t}: {bars}{delta}")
    print(f"-> {prefix.name}__voxels.npz, {png.name}")


def _targets(args: argparse.Namespace, config) -> list[str] | None:
    """``--targets`` as a list (None = all), with ``--heatmap-target`` added when missing."""
    from deref.errors import InputError
    from deref.explain.attribution import available_targets

    allowed = available_targets(config)
    if args.heatmap_target not in allowed:
        raise InputError(f"--heatmap-target {args.heatmap_target!r}; expected one of {list(allowed)}")
    if not args.targets:
        return None
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.heatmap_target not in targets:
        targets.append(args.heatmap_target)
    return targets


def _write_tables(attr, prefix: Path) -> None:
    """``PREFIX__patches.csv``, ``PREFIX__families.csv``, ``PREFIX.npz`` and ``PREFIX.json``."""
    import numpy as np

    attr.patch_frame().to_csv(f"{prefix}__patches.csv", index=False)
    attr.family_frame().to_csv(f"{prefix}__families.csv", index=False)
    arrays = attr.arrays()
    arrays["family_names"] = np.asarray(attr.family_names, dtype=str)
    arrays["slide_ids"] = np.asarray(attr.slide_ids, dtype=str)
    np.savez_compressed(f"{prefix}.npz", **arrays)
    summary = {
        "case_id": attr.case_id,
        "fold": attr.fold,
        "method": attr.method,
        "risk": attr.risk,
        "targets": list(attr.targets),
        "target_values": attr.target_values,
        "baseline_values": attr.baseline_values,
        "convergence_delta": attr.convergence_delta,
        "baseline": attr.baseline,
        "settings": attr.settings,
        "slide_ids": attr.slide_ids,
        "slide_paths": attr.slide_paths,
        "from_cache": attr.from_cache,
    }
    Path(f"{prefix}.json").write_text(json.dumps(summary, indent=2))


def _thumbnail(slide_id: str, slide_path: str | None, candidates: list[Path]):
    """``(thumbnail, level-0 dims)`` of a slide, or ``(None, None)`` (with a warning that says
    why: which files were looked for, or what the slide file's problem is)."""
    from deref.errors import DeRefError, one_line
    from deref.slides import read_thumbnail

    if slide_path is None:
        looked = ", ".join(str(p) for p in candidates) or "nowhere (no bag folder; pass --slides)"
        log.warning("%s: slide file not found (looked for %s); drawing on a blank canvas", slide_id, looked)
        return None, None
    try:
        return read_thumbnail(slide_path)
    except (DeRefError, OSError) as exc:  # a bad slide still gets a blank-canvas map
        log.warning("%s: %s; drawing on a blank canvas", slide_id, one_line(exc))
        return None, None


def _write_heatmaps(attr, target: str, prefix: Path, candidates: list[list[Path]]) -> list[Path]:
    """One heatmap PNG of ``target`` per slide with patches; ``candidates[s]``: the files
    looked for as slide ``s`` (for the warning when none was found)."""
    from PIL import Image

    from deref.explain.cache import safe_name
    from deref.explain.heatmap import render_heatmap

    geometry = attr.geometry()
    if geometry.assumed:
        log.warning(
            "%s: the bag records no %s; assuming the default", attr.case_id, " or ".join(geometry.assumed)
        )
    pngs = []
    for s, (sid, spath) in enumerate(zip(attr.slide_ids, attr.slide_paths)):
        scores, coords = attr.slide_scores(target, s)
        if scores.size == 0:
            continue
        thumb, dims = _thumbnail(sid, spath, candidates[s])
        heat = render_heatmap(scores, coords, geometry.extent0, dims, thumb)
        png = Path(f"{prefix}__{target}__{safe_name(Path(sid).stem)}.png")
        Image.fromarray(heat.rgba).save(png)
        pngs.append(png)
    return pngs


def _print_summary(attr, out: Path, prefix: Path, n_pngs: int, label: str = "families") -> None:
    import numpy as np

    cached = " (cached)" if attr.from_cache else ""
    print(
        f"{attr.case_id}: fold {attr.fold}, {attr.method}, {attr.n_patches} patches on "
        f"{len(attr.slide_ids)} slide(s), risk {attr.risk:.4f}{cached}"
    )
    for tgt in attr.targets:
        if np.all(attr.family_scores[tgt] == 0):
            top = "none (all zero: no path from modality 1)"
        else:
            top = ", ".join(attr.family_ranking(tgt)[:2])
        delta = "" if attr.convergence_delta is None else f", IG delta {attr.convergence_delta[tgt]:+.2e}"
        print(f"  {tgt}: value {attr.target_values[tgt]:+.4f}; top {label}: {top}{delta}")
    print(f"-> {out}/ ({prefix.name}__patches.csv, __families.csv, .npz, .json, {n_pngs} heatmap PNG(s))")
