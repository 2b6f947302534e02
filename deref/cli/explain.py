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
  PREFIX__<target>__<slide>.png  heatmap of --heatmap-target over each slide (blank canvas
                                 when the slide file is not found)
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
    import numpy as np

    from deref.errors import InputError
    from deref.explain.attribution import available_targets, explain_patient
    from deref.explain.cache import safe_name
    from deref.explain.heatmap import read_thumbnail, render_heatmap
    from deref.inference import Predictor

    pred = Predictor.from_run(args.run, device=args.device, bf16=args.bf16)
    cohort = pred.load_cohort(args.table, args.bags)
    targets = None
    if args.targets:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    allowed = available_targets(pred.config)
    if args.heatmap_target not in allowed:
        raise InputError(f"--heatmap-target {args.heatmap_target!r}; expected one of {list(allowed)}")
    if targets is not None and args.heatmap_target not in targets:
        targets.append(args.heatmap_target)
    attr = explain_patient(
        pred,
        cohort,
        args.case_id,
        method=args.method,
        fold=args.fold,
        steps=args.steps,
        targets=targets,
        use_cache=not args.no_cache,
        slide_dir=args.slides,
        progress=lambda msg: log.info("%s", msg),
    )
    out = Path(args.out) if args.out else Path(f"explain-{safe_name(args.case_id)}")
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / f"{safe_name(attr.case_id)}__{attr.method}"
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

    t = args.heatmap_target
    pngs = []
    for s, (sid, spath) in enumerate(zip(attr.slide_ids, attr.slide_paths)):
        scores, coords = attr.slide_scores(t, s)
        if scores.size == 0:
            continue
        thumb, dims = None, None
        if spath is not None:
            try:
                thumb, dims = read_thumbnail(spath)
            except Exception as exc:  # noqa: BLE001 - a bad slide still gets a blank-canvas map
                log.warning("%s: %s; drawing on a blank canvas", sid, exc)
        heat = render_heatmap(
            scores,
            coords,
            attr.patch_size or 256,
            dims,
            thumb,
            patch_level=attr.patch_level,
            downsample=attr.downsample,
        )
        from PIL import Image

        png = Path(f"{prefix}__{t}__{safe_name(Path(sid).stem)}.png")
        Image.fromarray(heat.rgba).save(png)
        pngs.append(png)

    print(
        f"{attr.case_id}: fold {attr.fold}, {attr.method}, {attr.n_patches} patches on {len(attr.slide_ids)} slide(s), "
        f"risk {attr.risk:.4f}{' (cached)' if attr.from_cache else ''}"
    )
    for tgt in attr.targets:
        if np.all(attr.family_scores[tgt] == 0):
            top = "none (all zero: no path from modality 1)"
        else:
            top = ", ".join(attr.family_ranking(tgt)[:2])
        delta = "" if attr.convergence_delta is None else f", IG delta {attr.convergence_delta[tgt]:+.2e}"
        print(f"  {tgt}: value {attr.target_values[tgt]:+.4f}; top families: {top}{delta}")
    print(f"-> {out}/ ({prefix.name}__patches.csv, __families.csv, .npz, .json, {len(pngs)} heatmap PNG(s))")
    return 0
