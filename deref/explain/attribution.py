"""Per-patient attributions of the risk and of each decoupled feature, over patches and gene families.

``explain_patient(predictor, cohort, case_id)`` answers, for one patient and one fold model:
which WSI patches and which gene families (MRI sequence vectors) move the predicted risk, and
each of the decoupled features (``specific_genomic``, ``specific_wsi``, ``share``,
``explore``), and where the WSI encoder's class token looks. ``attribute_inputs`` is the same
computation on raw tensors (a model and one patient's inputs), for benchmarks and tests.

Targets (one scalar per target, per patient)
--------------------------------------------
``"risk"``
    The model's risk score, ``-sum_k S_k``, with the model's deterministic evaluation
    reorganization (``segments=None`` = ``config.reorg_eval``, by default ``"all"``: the mean
    over every segment count, exactly what ``Predictor.predict`` reports).
feature ``f`` (``config.feature_names``)
    The feature's **first-order contribution to the risk** through reorganization, the gated
    experts and the head: ``T_f(x) = <g_f, V_f(x)>`` with ``g_f = d risk / d V_f`` evaluated at
    the patient's own features and then held fixed. ``T_f`` is a fixed linear read-out of the
    feature along its risk direction (a linearization of the fusion head around the patient),
    so its attributions explain "the part of V_f that raises or lowers this patient's risk",
    with the risk's sign and units; ``sum_f T_f`` is the gradient x input of the risk at the
    feature level. (The feature's norm would say how large it is, not what it does to the
    prediction, and has no sign.) ``target_values`` holds ``T_f(x)``.

Methods
-------
``"grad"`` (interactive)
    Gradient x (input - baseline): one forward and one backward per target. The first-order
    Taylor term of the target around the baseline, the same baseline as IG. This is captum's
    ``InputXGradient`` applied to the displacement from the baseline; it is computed here with
    one shared forward for all targets (a backward each), and the tests check it against
    captum's ``InputXGradient`` run through the plain model.
``"ig"``
    Integrated Gradients (captum ``IntegratedGradients``, Gauss-Legendre, ``steps`` points,
    batched ``internal_batch_size`` steps per forward) from the baseline to the input, all
    inputs together; ``convergence_delta = sum(attributions) - (T(x) - T(baseline))``
    (completeness: the sum of the patch and family scores equals ``T(x) - T(baseline)`` up
    to the quadrature error).

Attribution layers and baseline ("the average training patient")
-----------------------------------------------------------------
Each modality is attributed at its first learned representation, and the baseline is the
fold's training mean *there*:

* WSI: at the output of the patch MLP's first layer (``wsi_encoder.fc1``, ``D -> C1``); the
  baseline replaces every patch by ``fc1`` of the fold's training mean patch embedding
  (``FoldCheckpoint.wsi_mean``; zeros for a run that stores none), same number of patches.
  ``fc1`` is affine and applied to each patch alone, so this is *exactly* the attribution at
  the input with the mean patch as baseline (``sum_d (x - x')_d dT/dx_d = sum_c (h - h')_c
  dT/dh_c``, ``h = fc1(x)``, for every patch and every point of the straight path), while each
  of IG's forwards and backwards skips the ``N x D x C1`` product (a quarter of a 1,024-d
  forward) and the batched path tensors are ``C1`` wide instead of ``D``.
* Genomics (or MRI): at the family tokens, the SNN outputs (``M1Encoder.tokens``, one
  ``C1`` vector per gene family); the baseline puts each token at the mean token of the
  fold's training patients (``Predictor.family_token_baseline``). Why not the input with the mean
  profile (zeros after standardization) as baseline: a trained SNN maps the all-zero profile
  to almost-zero tokens (norm ~0.3 against ~12 for real patients on the demo), where the
  token encoder's LayerNorm blows tiny differences up to unit scale; the risk then swings by
  up to ~1 within the first percent of the IG path (measured on the demo run), and IG with 32
  or 64 points misses the completeness by up to 30%. From the mean token the same quadrature
  converges: on the first (200-patient, version-1) demo run (40 patients x 5 targets) the relative convergence
  delta has a median of 0.8% at 32 points and 0.3% at 64 points (80% of cases within 1%, all
  within 5%). A family's score is the sum over its token's ``C1`` attributions; gene-level
  scores are not computed.

The model itself is never modified: a shallow copy with ``fc1`` replaced by the identity and
the SNNs bypassed runs the rest, sharing every parameter, so a dashboard thread can predict
with the same model at the same time.

Scores: per patch = sum over the embedding of its attribution (aligned with the bag's
``coords``, all slides of the patient in bag order, ``slide_index`` tells which slide); per
gene family = sum over its token. A target with no path from an input gives exact zeros there: the
pathology-specific feature over the families and the genomic-specific feature over the patches
(checked in the tests; it is not special-cased).

Speed (``benchmarks/bench_explain.py``, 2-core CPU, full-size model, 10,000 patches): one eval
forward ~0.2 s; ``"grad"`` ~0.6 s for one target (3x the forward), ~1.9 s for all five (one
forward, five backwards); ``"ig"`` at 32 points ~11 s for one target with ``bf16=True``, ~18 s
in float32. Ask for the targets on screen (``targets=[...]``): the cache adds the others later.

Class-token attention: ``cls_attention`` (2, N) is the WSI encoder's class-token attention per
Nystrom layer (mean over heads), from the model's own forward (no ``N x N`` matrix).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from deref.errors import ConfigError, DataError, InputError
from deref.explain.cache import ExplanationCache, bag_files
from deref.inference import family_tokens

if TYPE_CHECKING:
    from deref.explain.patches import PatchGeometry

log = logging.getLogger(__name__)

#: Bump when the meaning or numbers of an attribution change (invalidates cached ones).
ATTRIBUTION_VERSION = 2  # 2: cached arrays named as PatientAttribution.arrays()
METHODS: tuple[str, ...] = ("grad", "ig")
RISK = "risk"
#: Default number of IG points.
DEFAULT_STEPS = 32
#: Tokens per IG forward (steps x patches) when ``internal_batch_size`` is not given.
IG_TOKENS_PER_BATCH = 20_000

__all__ = [
    "ATTRIBUTION_VERSION",
    "METHODS",
    "AttributionArrays",
    "PatientAttribution",
    "attribute_inputs",
    "available_targets",
    "explain_patient",
    "find_slide_paths",
    "slide_candidates",
]


# ----------------------------------------------------------------------------- results
@dataclass
class AttributionArrays:
    """What :func:`attribute_inputs` returns for one patient (numpy, float64 sums).

    patch_scores[t] (N,), family_scores[t] (G,), target_values[t] = T(x),
    baseline_values[t] = T(baseline) (IG only, else None), convergence_delta[t] (IG only),
    cls_attention (2, N), risk (the model's risk), segments (the reorganizations averaged).
    """

    targets: tuple[str, ...]
    patch_scores: dict[str, np.ndarray]
    family_scores: dict[str, np.ndarray]
    target_values: dict[str, float]
    baseline_values: dict[str, float] | None
    convergence_delta: dict[str, float] | None
    cls_attention: np.ndarray
    risk: float
    segments: tuple[int, ...]


@dataclass
class PatientAttribution:
    """Attributions of one patient by one fold model (see the module docstring).

    Attributes
    ----------
    case_id, fold, method
        The patient, the fold model used, ``"grad"`` or ``"ig"``.
    targets
        ``("risk", *feature_names)`` or the subset asked for.
    patch_scores : dict[target, (N,) float32]
        One score per patch, aligned with ``coords`` (bag order, all slides).
    family_scores : dict[target, (G,) float32]
        One score per modality-1 group, in the order of ``family_names``.
    family_names
        Gene families (or MRI sequences) of the run's config.
    cls_attention : (2, N) float32
        The WSI class token's attention over the patches, Nystrom layer 1 and 2.
    convergence_delta : dict[target, float] or None
        IG only: ``sum(attributions) - (T(x) - T(baseline))``.
    target_values, baseline_values
        ``T(x)`` per target; ``T(baseline)`` per target (IG only, else None).
    risk
        The model's risk for the patient (= ``target_values["risk"]`` when computed).
    coords : (N, 2) int64
        Level-0 (x, y) top-left corners of the patches.
    patch_size, patch_level, downsample
        Patch geometry from the bag attributes (size at ``patch_level``).
    slide_index : (N,) int64
        Index into ``slide_ids`` / ``slide_paths`` of each patch's slide.
    slide_ids, slide_paths
        The patient's slides, and their files when found (else None).
    baseline
        Words describing the baseline.
    settings
        Steps, segments, precision and the other knobs the numbers depend on.
    from_cache
        True when read from the explanation cache (not stored).
    """

    case_id: str
    fold: int
    method: str
    targets: tuple[str, ...]
    patch_scores: dict[str, np.ndarray]
    family_scores: dict[str, np.ndarray]
    family_names: tuple[str, ...]
    cls_attention: np.ndarray
    convergence_delta: dict[str, float] | None
    target_values: dict[str, float]
    baseline_values: dict[str, float] | None
    risk: float
    coords: np.ndarray
    patch_size: int | None
    patch_level: int | None
    downsample: float | None
    slide_index: np.ndarray
    slide_ids: list[str]
    slide_paths: list[str | None]
    baseline: str
    settings: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def n_patches(self) -> int:
        return int(self.coords.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The array data: ``coords``, ``slide_index``, ``cls_attention`` and, per target,
        ``patch_scores__<target>`` and ``family_scores__<target>`` (the explanation cache and
        ``deref explain``'s ``.npz`` both hold these)."""
        out = {"coords": self.coords, "slide_index": self.slide_index, "cls_attention": self.cls_attention}
        for t in self.targets:
            out[f"patch_scores__{t}"] = self.patch_scores[t]
            out[f"family_scores__{t}"] = self.family_scores[t]
        return out

    def patch_frame(self):
        """One row per patch: patch, slide_id, x, y, attention_layer1/2, one column per target."""
        import pandas as pd

        df = pd.DataFrame(
            {
                "patch": np.arange(self.n_patches),
                "slide_id": np.asarray(self.slide_ids, dtype=object)[self.slide_index],
                "x": self.coords[:, 0],
                "y": self.coords[:, 1],
                "attention_layer1": self.cls_attention[0],
                "attention_layer2": self.cls_attention[1],
            }
        )
        for t in self.targets:
            df[t] = self.patch_scores[t]
        return df

    def family_frame(self):
        """One row per gene family (MRI sequence), one column per target."""
        import pandas as pd

        df = pd.DataFrame({"family": list(self.family_names)})
        for t in self.targets:
            df[t] = self.family_scores[t]
        return df

    def family_ranking(self, target: str) -> list[str]:
        """Family names by decreasing absolute score for ``target`` (ties: table order)."""
        s = np.abs(self.family_scores[target])
        return [self.family_names[i] for i in np.argsort(-s, kind="stable")]

    def geometry(self, level_downsamples: Sequence[float] | None = None) -> PatchGeometry:
        """The patches' :class:`~deref.explain.patches.PatchGeometry`, from the recorded
        ``patch_size``, ``patch_level`` and ``downsample`` by the rules of
        :func:`deref.explain.patches.patch_geometry` (``level_downsamples``: the slide's, for a
        bag that records a level above 0 but no downsample)."""
        from deref.explain.patches import patch_geometry

        attrs = {
            "patch_size": self.patch_size,
            "patch_level": self.patch_level,
            "downsample": self.downsample,
        }
        return patch_geometry(attrs, level_downsamples)

    def slide_scores(self, target: str, slide: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, coords)`` of one slide's patches, for ``render_heatmap``."""
        sel = self.slide_index == slide
        return self.patch_scores[target][sel], self.coords[sel]


# ----------------------------------------------------------------------------- model plumbing
def available_targets(config) -> tuple[str, ...]:
    """``("risk", *config.feature_names)``."""
    return (RISK, *config.feature_names)


def _check_targets(targets: Sequence[str] | None, config) -> tuple[str, ...]:
    allowed = available_targets(config)
    if targets is None:
        return allowed
    if isinstance(targets, str):
        targets = (targets,)
    out = tuple(dict.fromkeys(targets))
    unknown = [t for t in out if t not in allowed]
    if unknown or not out:
        raise InputError(
            f"unknown attribution target(s) {unknown or list(targets)}; expected some of {list(allowed)}"
        )
    return out


def _attribution_net(model: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` fed at the attribution layers (module docstring).

    Its WSI input is the ``fc1`` outputs ``(B, N, C1)``; the family tokens ``(B, G, C1)`` (the
    SNN outputs) go in through the model's own ``m1_tokens=``. Parameters are shared; the
    original model is not touched (thread-safe for readers).
    """
    enc = copy.copy(model.wsi_encoder)
    enc._modules = type(enc._modules)(enc._modules)
    enc._modules["fc1"] = nn.Identity()
    if hasattr(enc, "pos_layer"):  # gradients of the inputs only: no kernel gradient in PPEG
        ppeg = copy.copy(enc.pos_layer)
        ppeg.frozen_kernel = True
        enc._modules["pos_layer"] = ppeg
    clone = copy.copy(model)
    clone._modules = type(clone._modules)(clone._modules)
    clone._modules["wsi_encoder"] = enc
    return clone


def _check_model(model: nn.Module) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or cfg.model_type != "deref" or not hasattr(model, "wsi_encoder"):
        kind = getattr(cfg, "model_type", type(model).__name__)
        raise ConfigError(f"attributions need a DeReF model (model_type 'deref'); this run is {kind!r}")
    if model.training:
        raise ConfigError("attributions need the model in eval mode (call model.eval())")


def _risk_direction(model: nn.Module, features: Tensor, segments: tuple[int, ...]) -> Tensor:
    """``d risk / d V`` at the given features (B, F, C2), in float32, through fusion and head."""
    from deref.model.deref import survival_from_logits

    with torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
        v = features.detach().float().clone().requires_grad_(True)
        logits = model.fuse_and_predict(v, segments)["logits"]  # (S, B, K)
        risk = survival_from_logits(logits)[2].mean(dim=0)  # mean of per-s risks = the model's risk
        (g,) = torch.autograd.grad(risk.sum(), v)
    return g


def _target_matrix(out, targets: tuple[str, ...], names: tuple[str, ...], g: Tensor) -> Tensor:
    """(B, T) target values from a forward's output (see the module docstring)."""
    cols = []
    for t in targets:
        if t == RISK:
            cols.append(out.risk.float())
        else:
            f = names.index(t)
            cols.append((out.features[:, f].float() * g[:, f]).sum(dim=-1))
    return torch.stack(cols, dim=1)


def _to_device(x: Tensor | np.ndarray, dev: torch.device) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(device=dev, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=dev)


def _default_batch(n_patches: int, steps: int) -> int:
    return max(1, min(steps, IG_TOKENS_PER_BATCH // max(1, n_patches)))


@torch.no_grad()
def _fc1(model: nn.Module, x: Tensor) -> Tensor:
    fc1 = model.wsi_encoder.fc1
    return torch.nn.functional.linear(x.float(), fc1.weight.float(), fc1.bias.float())


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"method={method!r}; expected one of {list(METHODS)}")


def _patient_bag(cfg, m1: Sequence[Tensor], wsi: Tensor) -> tuple[list[Tensor], Tensor]:
    """One patient's ``m1`` groups as ``(1, d_g)`` and bag as ``(1, N, D)``, checked against ``cfg``."""
    from deref.model.deref import check_inputs

    m1 = [torch.as_tensor(x, dtype=torch.float32).reshape(1, -1) for x in m1]
    wsi = torch.as_tensor(wsi, dtype=torch.float32)
    if wsi.dim() == 2:
        wsi = wsi.unsqueeze(0)
    if wsi.dim() != 3 or wsi.shape[0] != 1:
        raise InputError(f"wsi has shape {tuple(wsi.shape)}; expected one patient's bag (N, D) or (1, N, D)")
    check_inputs(cfg, m1, wsi, None)
    return m1, wsi


def _baseline_patch(cfg, wsi_baseline: Tensor | np.ndarray | None, dev: torch.device) -> Tensor:
    """The ``(D,)`` baseline patch embedding (zeros when none is given)."""
    if wsi_baseline is None:
        return torch.zeros(cfg.wsi_dim, device=dev)
    base = _to_device(wsi_baseline, dev).reshape(-1)
    if base.numel() != cfg.wsi_dim:
        raise InputError(f"wsi_baseline has {base.numel()} values; expected wsi_dim = {cfg.wsi_dim}")
    return base


def _layer_inputs(
    model: nn.Module,
    m1: Sequence[Tensor],
    wsi: Tensor,
    wsi_baseline: Tensor | np.ndarray | None,
    m1_baseline: Tensor | np.ndarray | None,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(inputs, baselines)`` at the attribution layers: family tokens ``(1, G, C1)`` and fc1
    outputs ``(1, N, C1)`` of the patient, and of the baseline (module docstring)."""
    cfg = model.config
    dev = next(model.parameters()).device
    m1, wsi = _patient_bag(cfg, m1, wsi)
    wsi = wsi.to(dev)
    base_patch = _baseline_patch(cfg, wsi_baseline, dev)
    tok = family_tokens(model, m1)  # (1, G, C1)
    if m1_baseline is None:
        tok_base = family_tokens(model, [torch.zeros_like(x) for x in m1])
    else:
        tok_base = _to_device(m1_baseline, dev).reshape(1, *tok.shape[1:])
    h = _fc1(model, wsi)  # (1, N, C1)
    h_base = _fc1(model, base_patch.view(1, 1, -1)).expand_as(h).contiguous()
    return (tok, h), (tok_base.expand_as(tok).contiguous(), h_base)


@dataclass
class _Problem:
    """One patient's attribution problem at the attribution layers.

    ``inputs`` / ``baselines``: family tokens (1, G, C1) and fc1 outputs (1, N, C1);
    ``risk_direction``: ``g = d risk / d V`` (1, F, C2), set from the first float32 forward
    and then held fixed (module docstring, "Targets").
    """

    net: nn.Module
    segments: int | str
    targets: tuple[str, ...]
    inputs: tuple[Tensor, Tensor]
    baselines: tuple[Tensor, Tensor]
    risk_direction: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.inputs[1].device

    def forward(self, tok: Tensor, h: Tensor, attention: bool = False):
        return self.net(
            None, h, None, m1_tokens=tok, segments=self.segments, return_attention=attention, validate=False
        )

    def target_matrix(self, out) -> Tensor:
        """(B, T) target values of a forward's output."""
        return _target_matrix(out, self.targets, tuple(self.net.config.feature_names), self.risk_direction)


def _segment_arg(cfg, segs: tuple[int, ...], segments: int | str | None) -> int | str:
    """The ``segments=`` argument of a forward that averages exactly ``segs``."""
    seg_arg = segs[0] if len(segs) == 1 else "all" if segs == tuple(cfg.segments) else None
    if seg_arg is None:  # pragma: no cover - segments_for_forward returns one of the two
        raise ConfigError(f"unsupported reorganization {segments!r}")
    return seg_arg


def _reduce(attr: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(patch (N,), family (G,)) float64 scores: per patch the sum over its C1 channels, per
    family the sum over its token."""
    fam = attr[0][0].double().sum(dim=-1).cpu().numpy()
    patch = attr[1][0].double().sum(dim=-1).cpu().numpy()
    return patch, fam


@dataclass
class _Scores:
    """Per-target patch (N,) and family (G,) scores; IG adds its deltas and ``T(baseline)``."""

    patch_scores: dict[str, np.ndarray] = field(default_factory=dict)
    family_scores: dict[str, np.ndarray] = field(default_factory=dict)
    convergence_delta: dict[str, float] | None = None
    baseline_values: dict[str, float] | None = None


def _gradient_scores(problem: _Problem, values: Tensor, leaves: list[Tensor] | None, autocast) -> _Scores:
    """Gradient x (input - baseline) per target: one forward (``values`` and ``leaves`` of the
    value forward when it kept its graph, else a new one under ``autocast``), a backward each."""
    res = _Scores()
    targets = problem.targets
    with torch.enable_grad(), autocast:
        if leaves is None:
            leaves = [x.clone().requires_grad_(True) for x in problem.inputs]
            values = problem.target_matrix(problem.forward(*leaves))[0]
        for i, t in enumerate(targets):
            grads = torch.autograd.grad(
                values[i],
                leaves,
                retain_graph=i < len(targets) - 1,
                allow_unused=True,
                materialize_grads=True,
            )
            attr = [gr.float() * (x - b) for gr, x, b in zip(grads, problem.inputs, problem.baselines)]
            res.patch_scores[t], res.family_scores[t] = _reduce(attr)
    return res


def _ig_scores(
    problem: _Problem, target_values: dict[str, float], steps: int, batch: int, autocast
) -> _Scores:
    """Integrated Gradients of each target (captum, Gauss-Legendre), its convergence delta and
    ``T(baseline)``."""
    from captum.attr import IntegratedGradients

    res = _Scores(convergence_delta={}, baseline_values={})
    for i, t in enumerate(problem.targets):

        def forward(tok_in: Tensor, h_in: Tensor, _i: int = i) -> Tensor:
            o = problem.target_matrix(problem.forward(tok_in, h_in))[:, _i]
            # Keep both inputs in the graph: an input with no path to the target then
            # gets an exact zero gradient instead of an autograd error.
            return o + (tok_in.sum(dim=(1, 2)) + h_in.sum(dim=(1, 2))) * 0.0

        with autocast:
            attr, delta = IntegratedGradients(forward).attribute(
                problem.inputs,
                baselines=problem.baselines,
                n_steps=steps,
                method="gausslegendre",
                internal_batch_size=batch,
                return_convergence_delta=True,
            )
        res.patch_scores[t], res.family_scores[t] = _reduce(attr)
        res.convergence_delta[t] = float(delta.reshape(-1)[0])
        total = float(res.patch_scores[t].sum() + res.family_scores[t].sum())
        # captum's delta = sum(attr) - (T(x) - T(x')) with its own forwards: recover T(x').
        res.baseline_values[t] = float(target_values[t] - (total - res.convergence_delta[t]))
    return res


def _value_forward(problem: _Problem, keep_graph: bool):
    """The float32 forward that gives the target values, risk directions and attention:
    ``(out, leaves)``; with ``keep_graph`` its graph is kept for the gradient method (``leaves``
    are its inputs), else ``leaves`` is None."""
    if keep_graph:
        with torch.enable_grad():
            leaves = [x.clone().requires_grad_(True) for x in problem.inputs]
            return problem.forward(*leaves, attention=True), leaves
    with torch.no_grad(), torch.autocast(problem.device.type, enabled=False):
        return problem.forward(*problem.inputs, attention=True), None


def attribute_inputs(
    model: nn.Module,
    m1: Sequence[Tensor],
    wsi: Tensor,
    wsi_baseline: Tensor | np.ndarray | None = None,
    m1_baseline: Tensor | np.ndarray | None = None,
    *,
    method: str = "grad",
    targets: Sequence[str] | None = None,
    steps: int = DEFAULT_STEPS,
    segments: int | str | None = None,
    bf16: bool = False,
    internal_batch_size: int | None = None,
) -> AttributionArrays:
    """Attributions of one patient's inputs (see the module docstring).

    Parameters
    ----------
    model
        A DeReF model in eval mode (any device).
    m1
        Modality-1 groups, each ``(1, d_g)`` or ``(d_g,)``, standardized as the model expects.
    wsi
        The patient's bag, ``(1, N, D)`` or ``(N, D)``; every row a real patch.
    wsi_baseline
        ``(D,)`` baseline patch embedding (the training mean); None = zeros.
    m1_baseline
        ``(G, C1)`` baseline family tokens (the mean token over the training patients, see
        ``deref.inference.mean_family_tokens``); None = the tokens of the all-zero profile (the
        training mean profile), which a trained SNN maps to almost-zero tokens: a region where
        the token encoder's LayerNorm makes the model very steep, so IG converges slowly there.
    method
        ``"grad"`` or ``"ig"``.
    targets
        Subset of ``("risk", *config.feature_names)``; None = all.
    steps
        IG points (Gauss-Legendre).
    segments
        Reorganization for every forward (None = the model's evaluation default).
    bf16
        Run the attribution forwards and backwards under bf16 autocast (about 2x faster on CPUs
        with AVX-512 BF16; IG's convergence delta grows accordingly). Target values and the
        risk directions ``g_f`` are always float32.
    internal_batch_size
        IG points per forward (default: about ``20,000 / N``; larger batches were slower on CPU).
    """
    _check_model(model)
    _check_method(method)
    if steps < 1:
        raise InputError(f"steps={steps}; expected at least 1")
    targets = _check_targets(targets, model.config)
    inputs, baselines = _layer_inputs(model, m1, wsi, wsi_baseline, m1_baseline)
    segs = model.segments_for_forward(segments)
    net = _attribution_net(model)
    problem = _Problem(net, _segment_arg(model.config, segs, segments), targets, inputs, baselines)
    out, leaves = _value_forward(problem, keep_graph=method == "grad" and not bf16)
    problem.risk_direction = _risk_direction(model, out.features.detach(), segs)
    with torch.enable_grad():  # the gradient method differentiates these values (leaves kept)
        values = problem.target_matrix(out)[0]
    target_values = {t: float(values[i].detach()) for i, t in enumerate(targets)}
    autocast = torch.autocast(problem.device.type, dtype=torch.bfloat16, enabled=bf16)
    if method == "grad":
        scores = _gradient_scores(problem, values, leaves, autocast)
    else:
        batch = internal_batch_size or _default_batch(inputs[1].shape[1], steps)
        scores = _ig_scores(problem, target_values, steps, batch, autocast)
    return AttributionArrays(
        targets=targets,
        patch_scores=scores.patch_scores,
        family_scores=scores.family_scores,
        target_values=target_values,
        baseline_values=scores.baseline_values,
        convergence_delta=scores.convergence_delta,
        cls_attention=out.wsi_attention[0].detach().float().cpu().numpy(),
        risk=float(out.risk[0].detach()),
        segments=segs,
    )


# ----------------------------------------------------------------------------- slides
def slide_candidates(
    slide_id: str, bag_dir: str | Path | None, slide_dir: str | Path | None = None
) -> list[Path]:
    """The files that may hold slide ``slide_id``, in the order :func:`find_slide_paths` tries
    them: ``slide_dir`` (when given), then ``<bag folder>/../slides`` and the bag folder itself
    (the demo's and CLAM's layouts)."""
    roots: list[Path] = []
    if slide_dir is not None:
        roots.append(Path(slide_dir))
    if bag_dir is not None:
        roots += [Path(bag_dir).parent / "slides", Path(bag_dir)]
    return [r / slide_id for r in roots]


def find_slide_paths(
    slide_ids: Sequence[str], bag_dir: str | Path | None, slide_dir: str | Path | None = None
) -> list[str | None]:
    """The slide file of each slide id (resolved), or None when none of its
    :func:`slide_candidates` is a file."""
    out: list[str | None] = []
    for sid in slide_ids:
        hit = next((p for p in slide_candidates(sid, bag_dir, slide_dir) if p.is_file()), None)
        out.append(None if hit is None else str(hit.resolve()))
    return out


# ----------------------------------------------------------------------------- patient API
def _baseline_words(has_mean: bool, fold: int) -> str:
    wsi = (
        f"every patch replaced by fold {fold}'s training mean patch embedding"
        if has_mean
        else "every patch embedding set to zero (the run stores no mean patch embedding)"
    )
    return f"genomics: each family token at the mean of fold {fold}'s training patients' tokens; WSI: {wsi}"


def _check_request(predictor, cohort, case_id: str, method: str, targets: Sequence[str] | None):
    """``(case_id, targets)`` checked against the run and the cohort."""
    _check_method(method)
    cfg = predictor.config
    if cfg.model_type != "deref":
        raise ConfigError(f"attributions need a DeReF run; {predictor.run.path} is a {cfg.model_type!r} run")
    targets = _check_targets(targets, cfg)
    case_id = str(case_id)
    if case_id not in cohort.slides:
        raise DataError(f"{cohort.source}: case {case_id!r} is not in the table")
    return case_id, targets


@dataclass(frozen=True)
class _Request:
    """What one explanation is computed from: the patient, the fold model and every setting
    the numbers depend on (``settings`` is stored with the result and hashed by the cache)."""

    case_id: str
    fold: int
    method: str
    steps: int
    segments: int | str | None
    bf16: bool
    settings: dict[str, Any]


def _request(
    predictor,
    case_id: str,
    fold: int | None,
    method: str,
    steps: int,
    segments: int | str | None,
    bf16: bool | None,
) -> _Request:
    """The fold model (``Predictor.fold_for``), the precision and the settings of a request."""
    k = predictor.fold_for(case_id, fold)
    bf16 = predictor.bf16 if bf16 is None else bool(bf16)
    segs = predictor.fold(k).model.segments_for_forward(segments)
    settings = {
        "version": ATTRIBUTION_VERSION,
        "method": method,
        "steps": int(steps) if method == "ig" else None,
        "segments": list(segs),
        "bf16": bf16,
        "baseline": "train-mean-patch+train-mean-tokens",
        "train_data": predictor.run.info.data.fingerprint,
    }
    return _Request(case_id, k, method, steps, segments, bf16, settings)


class _CacheSlot:
    """The explanation cache entry of one request (see ``deref.explain.cache``)."""

    def __init__(self, predictor, cohort, req: _Request) -> None:
        fold_dir = predictor.run.fold_dir(req.fold)
        self.cache = ExplanationCache(predictor.run.path)
        self.key = self.cache.key(
            fold=req.fold,
            case_id=req.case_id,
            method=req.method,
            settings=req.settings,
            weights=fold_dir / "model.safetensors",
            extra_files=[fold_dir / "preprocessing.json", *bag_files(cohort, req.case_id)],
            data_fingerprint=cohort.fingerprint,
        )

    def load(self) -> PatientAttribution | None:
        hit = self.cache.load(self.key)
        return None if hit is None else _from_cache(*hit)

    def save(self, result: PatientAttribution) -> None:
        self.cache.save(self.key, *_to_cache(result))


def _bag_layout(bag, case_id: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(slide_ids, slide_index (N,), coords (N, 2))`` of a patient's bag (one slide, and zero
    coordinates, when the bag does not say)."""
    slide_ids = list(bag.slide_ids) if bag.slide_ids else [str(bag.attrs.get("slide_id", case_id))]
    slide_index = (
        np.asarray(bag.slide_index, dtype=np.int64)
        if bag.slide_index is not None
        else np.zeros(bag.n, np.int64)
    )
    coords = (
        np.asarray(bag.coords, dtype=np.int64) if bag.coords is not None else np.zeros((bag.n, 2), np.int64)
    )
    return slide_ids, slide_index, coords


def _compute(
    predictor,
    cohort,
    req: _Request,
    targets: tuple[str, ...],
    *,
    slide_dir: str | Path | None,
    internal_batch_size: int | None,
    progress: Callable[[str], None] | None,
) -> PatientAttribution:
    """Attributions of ``targets`` for the request, with the bag's layout and slide files."""
    k = req.fold
    inputs = predictor.inputs(cohort, [req.case_id], k)
    bag = inputs.bags[0]
    wsi_mean = predictor.fold(k).wsi_mean
    if progress:
        progress(
            f"{req.case_id}: {req.method} attributions of {len(targets)} target(s) over {bag.n} patches (fold {k})"
        )
    arrays = attribute_inputs(
        predictor.fold(k).model,
        inputs.m1,
        torch.from_numpy(np.ascontiguousarray(bag.features)),
        wsi_mean,
        predictor.family_token_baseline(k, cohort),
        method=req.method,
        targets=targets,
        steps=req.steps,
        segments=req.segments,
        bf16=req.bf16,
        internal_batch_size=internal_batch_size,
    )
    slide_ids, slide_index, coords = _bag_layout(bag, req.case_id)
    attrs = bag.attrs or {}
    return PatientAttribution(
        case_id=req.case_id,
        fold=k,
        method=req.method,
        targets=arrays.targets,
        patch_scores={t: v.astype(np.float32) for t, v in arrays.patch_scores.items()},
        family_scores={t: v.astype(np.float32) for t, v in arrays.family_scores.items()},
        family_names=tuple(predictor.config.m1_names),
        cls_attention=arrays.cls_attention.astype(np.float32),
        convergence_delta=arrays.convergence_delta,
        target_values=arrays.target_values,
        baseline_values=arrays.baseline_values,
        risk=arrays.risk,
        coords=coords,
        patch_size=_int_or_none(attrs.get("patch_size")),
        patch_level=_int_or_none(attrs.get("patch_level")),
        downsample=_float_or_none(attrs.get("downsample")),
        slide_index=slide_index,
        slide_ids=slide_ids,
        slide_paths=find_slide_paths(slide_ids, cohort.bag_dir, slide_dir),
        baseline=_baseline_words(wsi_mean is not None, k),
        settings=dict(req.settings, segments=list(arrays.segments)),
    )


def explain_patient(
    predictor,
    cohort,
    case_id: str,
    *,
    method: str = "grad",
    fold: int | None = None,
    steps: int = DEFAULT_STEPS,
    targets: Sequence[str] | None = None,
    use_cache: bool = True,
    segments: int | str | None = None,
    bf16: bool | None = None,
    slide_dir: str | Path | None = None,
    internal_batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> PatientAttribution:
    """Attributions of one patient (see the module docstring for targets, methods, baseline).

    Parameters
    ----------
    predictor
        ``deref.inference.Predictor`` of a DeReF run.
    cohort
        The cohort holding the patient (``predictor.load_cohort()`` for the run's own).
    case_id
        The patient.
    method
        ``"grad"`` (gradient x (input - baseline), interactive) or ``"ig"`` (Integrated
        Gradients, ``steps`` points).
    fold
        Fold model; default the fold that held the patient out (else the first fold).
    targets
        Subset of ``("risk", *feature_names)``; None = all.
    use_cache
        Read and write ``RUN/explanations/`` (see ``deref.explain.cache``); targets missing
        from a cached entry are computed and merged into it.
    segments
        Reorganization (None = the model's evaluation default, the mean over all ``s``).
    bf16
        bf16 autocast for the attribution passes; None = the predictor's setting. IG over
        10,000 patches takes ~11 s with it and ~18 s without on 2 CPU cores.
    slide_dir
        Where the slide files are (default: next to the bag folder, see ``slide_candidates``).
    """
    case_id, targets = _check_request(predictor, cohort, case_id, method, targets)
    req = _request(predictor, case_id, fold, method, steps, segments, bf16)
    slot = _CacheSlot(predictor, cohort, req) if use_cache else None
    have = None if slot is None else slot.load()
    if have is not None:  # the key does not cover where the slides are: look them up again
        have = dataclasses.replace(
            have, slide_paths=find_slide_paths(have.slide_ids, cohort.bag_dir, slide_dir)
        )
    if have is not None and all(t in have.targets for t in targets):
        return _subset(have, targets)
    missing = tuple(t for t in targets if have is None or t not in have.targets)
    result = _compute(
        predictor,
        cohort,
        req,
        missing,
        slide_dir=slide_dir,
        internal_batch_size=internal_batch_size,
        progress=progress,
    )
    if slot is None:
        return result
    stored = result if have is None else _merge(have, result)
    slot.save(stored)
    return _subset(stored, targets)


# the fields of PatientAttribution that hold one entry per target
_PER_TARGET = ("patch_scores", "family_scores", "convergence_delta", "target_values", "baseline_values")


def _merge(old: PatientAttribution, new: PatientAttribution) -> PatientAttribution:
    """``new`` plus the targets of ``old`` it lacks (same patient, fold, method and settings)."""

    def join(a, b):
        return None if a is None and b is None else {**(a or {}), **(b or {})}

    joined = {f: join(getattr(old, f), getattr(new, f)) for f in _PER_TARGET}
    return dataclasses.replace(new, targets=tuple(dict.fromkeys((*old.targets, *new.targets))), **joined)


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def _float_or_none(v: Any) -> float | None:
    try:
        return None if v is None or not math.isfinite(float(v)) else float(v)
    except (TypeError, ValueError):
        return None


def _subset(result: PatientAttribution, targets: tuple[str, ...]) -> PatientAttribution:
    if result.targets == targets:
        return result
    picked = {
        f: None if getattr(result, f) is None else {t: getattr(result, f)[t] for t in targets}
        for f in _PER_TARGET
    }
    return dataclasses.replace(result, targets=targets, **picked)


_SCALARS = ("case_id", "fold", "method", "risk", "patch_size", "patch_level", "downsample", "baseline")


def _to_cache(r: PatientAttribution) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = r.arrays()
    meta = {name: getattr(r, name) for name in _SCALARS}
    meta.update(
        targets=list(r.targets),
        family_names=list(r.family_names),
        slide_ids=list(r.slide_ids),
        slide_paths=list(r.slide_paths),
        convergence_delta=r.convergence_delta,
        target_values=r.target_values,
        baseline_values=r.baseline_values,
        settings=r.settings,
    )
    return arrays, meta


def _from_cache(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> PatientAttribution:
    return PatientAttribution(
        **{name: meta[name] for name in _SCALARS},
        targets=tuple(meta["targets"]),
        patch_scores={t: arrays[f"patch_scores__{t}"] for t in meta["targets"]},
        family_scores={t: arrays[f"family_scores__{t}"] for t in meta["targets"]},
        family_names=tuple(meta["family_names"]),
        cls_attention=arrays["cls_attention"],
        convergence_delta=meta["convergence_delta"],
        target_values=meta["target_values"],
        baseline_values=meta["baseline_values"],
        coords=arrays["coords"],
        slide_index=arrays["slide_index"],
        slide_ids=list(meta["slide_ids"]),
        slide_paths=list(meta["slide_paths"]),
        settings=meta["settings"],
        from_cache=True,
    )
