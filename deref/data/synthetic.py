"""A synthetic multimodal demo cohort with planted, documented survival signal.

:func:`make_demo_cohort` writes, deterministically from a seed, a cohort exactly as real data
would be laid out on disk:

* ``cohort.csv`` — an MCAT-layout table, one row per slide (about 10% of patients have two
  slides; their rows repeat the patient's clinical and genomic values);
* ``signatures.csv`` — the six MCAT gene families (synthetic symbols ``TSG01``, ``ONC01``, ...);
* ``slides/<slide_id>`` — one pyramidal, tiled-JPEG, Aperio-style TIFF per slide (named like a
  TCGA ``.svs``) that OpenSlide opens, 20x at 0.5 um/px, with tissue drawn where the patch
  coordinates are and two visibly different patch phenotypes;
* ``bags/<slide stem>.h5`` — CLAM-layout bags (``features``, ``coords``, attrs) plus the
  per-patch truth ``phenotype`` (0 normal, 1 risky);
* ``truth.csv`` — per patient the true log-risk and each planted component;
* ``demo.json`` — the generator's parameters and the oracle C-index (written last: a folder
  with ``demo.json`` is complete).

The planted signal (see ``assets/DEMO.md`` for the full description)::

    log_risk = B_ONC * S_onc + B_TSG * S_tsg + B_FRAC * (r - R0) + B_INT * (r - R0) * S_cyt

with ``S_f`` the mean of the family's ``_rnaseq`` values as written in the table and ``r`` the
fraction of the patient's patches (all slides together) that carry the risky phenotype.
Survival times are Weibull with that log-risk as the log hazard ratio, censored by an
independent random follow-up time.

:func:`simulate_demo` computes the tables, the slide layouts and the oracle C-index without
rendering any slide (well under a second for 300 patients).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from deref.data.bags import write_bag_h5
from deref.errors import DataError
from deref.slides import block_mean, write_pyramidal_tiff

# --------------------------------------------------------------------------- constants
#: Version of the generator; bumped whenever the same seed would give different files.
DEMO_VERSION = 2

PATCH_SIZE = 256
MPP = 0.5
APP_MAG = 20
#: Downsample between successive pyramid levels (Aperio's usual factor).
LEVEL_FACTOR = 4
#: Default level-0 slide size (width, height) in pixels: 14 x 12 patches of 256 px.
SLIDE_SIZE = (3584, 3072)
JPEG_QUALITY = 60
BACKGROUND = (243, 242, 244)
#: A patch is part of the bag when at least this fraction of it is tissue (CLAM-style).
TISSUE_THRESHOLD = 0.5
#: Layout sampling: the tissue mask is sampled on a grid of this step (px) to find patches.
_LAYOUT_STEP = 16

#: Synthetic gene symbol prefix and number of genes per family (the MCAT families; the
#: signatures table lists them in deref.model.config.GENE_FAMILIES order).
FAMILY_PANEL: dict[str, tuple[str, int]] = {
    "Tumor Suppressor Genes": ("TSG", 12),
    "Oncogenes": ("ONC", 18),
    "Protein Kinases": ("PKN", 16),
    "Cell Differentiation Markers": ("CDM", 14),
    "Transcription Factors": ("TFX", 20),
    "Cytokines and Growth Factors": ("CYT", 14),
}
#: Genes listed in a second family too (as in MSigDB-derived tables): gene -> second family.
SHARED_GENES: dict[str, str] = {"PKN15": "Transcription Factors", "PKN16": "Transcription Factors"}
#: Correlation of the six latent family programmes (FAMILY_PANEL order).
FAMILY_CORRELATION = np.array(
    [
        # TSG    ONC    PKN    CDM    TFX    CYT
        [1.00, -0.25, -0.10, 0.05, 0.00, 0.00],
        [-0.25, 1.00, 0.35, 0.00, 0.15, 0.10],
        [-0.10, 0.35, 1.00, 0.10, 0.30, 0.10],
        [0.05, 0.00, 0.10, 1.00, 0.20, 0.35],
        [0.00, 0.15, 0.30, 0.20, 1.00, 0.15],
        [0.00, 0.10, 0.10, 0.35, 0.15, 1.00],
    ]
)
#: Skew of the ``_rnaseq`` values: a standardized log-normal of this log-scale sd.
RNASEQ_SKEW = 0.5
#: CNV levels -2..2 with these marginal frequencies (those of TCGA-BLCA's MCAT table).
CNV_FREQUENCIES = (0.02, 0.16, 0.44, 0.31, 0.07)
#: Correlation between a gene's expression programme and its copy-number latent.
CNV_EXPRESSION_CORRELATION = 0.5
#: The fixed seed of the gene panel (symbols, loadings, which genes have a CNV column).
_PANEL_SEED = 20250610

# Planted signal -------------------------------------------------------------------------
#: Families whose mean ``_rnaseq`` drives risk, and the cross-modal modifier family.
ONCOGENE_FAMILY = "Oncogenes"
SUPPRESSOR_FAMILY = "Tumor Suppressor Genes"
MODIFIER_FAMILY = "Cytokines and Growth Factors"
#: Coefficients of the log-risk (per unit of the component as defined in the module doc).
B_ONC = 1.1
B_TSG = -1.1
B_FRAC = 7.0
B_INT = 4.5
#: Centre of the risky-patch fraction in the fraction and interaction terms.
R0 = 0.35
#: Risky fraction of a patient: Beta(a, b).
FRACTION_BETA = (1.4, 2.6)
#: Second slide's risky fraction = first's + N(0, sd) (clipped to [0, 1]).
SECOND_SLIDE_SD = 0.05
#: Probability that a patient has two slides.
TWO_SLIDE_PROB = 0.10
#: Weibull event times: S(t | x) = exp(-(t / SCALE)^SHAPE * exp(log_risk)).
WEIBULL_SHAPE = 1.2
WEIBULL_SCALE = 36.0
#: Independent censoring: follow-up ~ Uniform(FOLLOWUP_MIN, FOLLOWUP_MAX) months.
FOLLOWUP_MIN = 3.0
FOLLOWUP_MAX = 65.0

# Patch embeddings ----------------------------------------------------------------------
#: Distance between the two phenotype prototypes, and scales of the batch effect / noise.
PROTOTYPE_DISTANCE = 4.0
PATIENT_BATCH_SD = 0.25
PATCH_NOISE_SD = 1.0

# Seed-sequence stream tags (each random quantity has its own stream, so one change does
# not shift the others, and results do not depend on worker scheduling).
_S_GENOMIC, _S_CLINICAL, _S_SURVIVAL, _S_SLIDE, _S_BATCH, _S_PROTO, _S_TEXTURE, _S_FRACTION = range(1, 9)

CLINICAL_COLUMNS = (
    "case_id",
    "slide_id",
    "site",
    "is_female",
    "oncotree_code",
    "age",
    "survival_months",
    "censorship",
)
_SITES = ("QA", "QB", "QC", "QD", "QE", "QF", "QG", "QH")
_STEM_RE = re.compile(r"^DEMO-\d{4}-\d{2}$")


def _gene_families() -> tuple[str, ...]:
    """The six MCAT family names in signatures-table order (from the model config).

    Imported lazily: ``deref.model`` imports torch, which the slide-rendering worker processes
    (that import this module) must not pay for.
    """
    from deref.model.config import GENE_FAMILIES

    if set(GENE_FAMILIES) != set(FAMILY_PANEL):
        raise RuntimeError(
            f"demo gene panel {sorted(FAMILY_PANEL)} does not match GENE_FAMILIES {GENE_FAMILIES}"
        )
    return tuple(GENE_FAMILIES)


def _rng(*keys: int) -> np.random.Generator:
    """A generator for one random stream, keyed by small non-negative integers.

    The key count is appended: ``SeedSequence`` ignores trailing zeros (``[s, 4, c, 0]`` and
    ``[s, 4, c]`` give the same stream), and a non-zero last word keeps every key list distinct.
    """
    return np.random.default_rng(np.random.SeedSequence([*(int(k) for k in keys), len(keys)]))


# --------------------------------------------------------------------------- gene panel
@dataclass(frozen=True)
class GenePanel:
    """The synthetic gene panel (fixed, the same for every seed).

    Attributes
    ----------
    families
        ``{family: [gene, ...]}`` as written to the signatures table (shared genes listed in
        both families).
    genes
        Every distinct gene, in panel order.
    home
        Index into FAMILY_PANEL (and FAMILY_CORRELATION) of each gene's own (driving) family.
    loading
        Loading of each gene's expression on its family's latent programme.
    has_cnv
        Whether the gene has a ``_cnv`` column.
    """

    families: dict[str, list[str]]
    genes: list[str]
    home: np.ndarray
    loading: np.ndarray
    has_cnv: np.ndarray

    @property
    def columns(self) -> list[str]:
        """Genomic column names, sorted by name as in MCAT tables."""
        cols = [f"{g}_rnaseq" for g in self.genes]
        cols += [f"{g}_cnv" for g, c in zip(self.genes, self.has_cnv) if c]
        return sorted(cols)


def gene_panel() -> GenePanel:
    """The demo's gene panel: 94 genes in six families; 94 ``_rnaseq`` and 40 ``_cnv`` columns."""
    rng = _rng(_PANEL_SEED)
    genes: list[str] = []
    home: list[int] = []
    families: dict[str, list[str]] = {}
    for fi, (fam, (prefix, n)) in enumerate(FAMILY_PANEL.items()):
        names = [f"{prefix}{i:02d}" for i in range(1, n + 1)]
        families[fam] = list(names)
        genes += names
        home += [fi] * n
    for gene, fam in SHARED_GENES.items():
        families[fam].append(gene)
    n = len(genes)
    loading = rng.uniform(0.5, 0.85, n)
    # About 15% of the genes barely follow their programme (realistic dilution of a family).
    weak = rng.random(n) < 0.15
    loading[weak] = rng.uniform(0.0, 0.2, int(weak.sum()))
    has_cnv = rng.random(n) < 0.5
    return GenePanel(families, genes, np.asarray(home), loading, has_cnv)


def signatures_frame(panel: GenePanel | None = None) -> pd.DataFrame:
    """The signatures table: one column per family, gene symbols down it, blank-padded."""
    panel = panel or gene_panel()
    n = max(len(v) for v in panel.families.values())
    return pd.DataFrame(
        {f: panel.families[f] + [""] * (n - len(panel.families[f])) for f in _gene_families()}
    )


def _standardized_lognormal(u: np.ndarray, s: float) -> np.ndarray:
    m = math.exp(s * s / 2)
    sd = math.sqrt((math.exp(s * s) - 1) * math.exp(s * s))
    return (np.exp(s * u) - m) / sd


def _simulate_genomics(panel: GenePanel, n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``(genomic values per patient (n x columns), latent family programmes (n x 6))``."""
    from scipy.stats import norm

    rng = _rng(seed, _S_GENOMIC)
    chol = np.linalg.cholesky(FAMILY_CORRELATION)
    programmes = rng.standard_normal((n, len(FAMILY_PANEL))) @ chol.T
    lam = panel.loading
    own = programmes[:, panel.home] * lam + rng.standard_normal((n, len(panel.genes))) * np.sqrt(1 - lam**2)
    rnaseq = np.round(_standardized_lognormal(own, RNASEQ_SKEW), 4)
    rho = CNV_EXPRESSION_CORRELATION
    latent = rho * own + math.sqrt(1 - rho * rho) * rng.standard_normal(own.shape)
    cuts = norm.ppf(np.cumsum(CNV_FREQUENCIES)[:-1])
    cnv = np.searchsorted(cuts, latent) - 2
    data: dict[str, np.ndarray] = {}
    for j, g in enumerate(panel.genes):
        data[f"{g}_rnaseq"] = rnaseq[:, j]
        if panel.has_cnv[j]:
            data[f"{g}_cnv"] = cnv[:, j].astype(np.int64)
    frame = pd.DataFrame(data)[panel.columns]
    return frame, programmes


def family_score(genomic: pd.DataFrame, family: str, panel: GenePanel | None = None) -> np.ndarray:
    """Mean of the family's ``_rnaseq`` columns (the planted genomic component)."""
    panel = panel or gene_panel()
    cols = [f"{g}_rnaseq" for g in panel.families[family]]
    return genomic[cols].to_numpy(dtype=float).mean(axis=1)


# --------------------------------------------------------------------------- slide layout
@dataclass(frozen=True)
class Blob:
    """A tissue blob: a rotated ellipse whose radius is modulated by a few harmonics."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float
    amps: tuple[float, ...]
    phases: tuple[float, ...]

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether level-0 points ``(x, y)`` (broadcastable arrays, px) are inside."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.cx, y - self.cy
        u = (dx * c + dy * s) / self.rx
        v = (-dx * s + dy * c) / self.ry
        u, v = np.broadcast_arrays(u, v)
        rho2 = u * u + v * v
        spread = float(sum(self.amps))
        inside = rho2 <= (1.0 - spread) ** 2
        # Only points in the ring the harmonics can reach need the angle.
        ring = ~inside & (rho2 <= (1.0 + spread) ** 2)
        theta = np.arctan2(v[ring], u[ring])
        edge = np.ones_like(theta)
        for k, (a, p) in enumerate(zip(self.amps, self.phases), start=2):
            edge = edge + a * np.cos(k * theta + p)
        inside[ring] = rho2[ring] <= edge * edge
        return inside


def blob_tissue_mask(blobs: tuple[Blob, ...], width: int, height: int, step: int) -> np.ndarray:
    """Tissue mask sampled at the centres of ``step`` x ``step`` blocks: ``(height//step, width//step)``."""
    y = ((np.arange(height // step) + 0.5) * step).astype(np.float32)[:, None]
    x = ((np.arange(width // step) + 0.5) * step).astype(np.float32)[None, :]
    mask = np.zeros((y.shape[0], x.shape[1]), dtype=bool)
    for b in blobs:
        mask |= b.contains(x, y)
    return mask


@dataclass(frozen=True)
class SlideLayout:
    """Where a slide's tissue and patches are, and which patches are risky."""

    case_index: int
    slide_index: int
    slide_id: str
    width: int
    height: int
    blobs: tuple[Blob, ...]
    coords: np.ndarray  # (N, 2) int64 (x, y) level-0 top-left corners, row-major order
    phenotype: np.ndarray  # (N,) int8, 1 = risky

    @property
    def stem(self) -> str:
        return Path(self.slide_id).stem

    @property
    def n_patches(self) -> int:
        return int(self.coords.shape[0])

    @property
    def n_risky(self) -> int:
        return int(self.phenotype.sum())


def _random_blobs(rng: np.random.Generator, width: int, height: int) -> tuple[Blob, ...]:
    def one(cx: float, cy: float, r_lo: float, r_hi: float) -> Blob:
        rx = rng.uniform(r_lo, r_hi) * width
        ry = rng.uniform(r_lo, r_hi) * height
        amps = tuple(float(rng.uniform(0.0, 0.09 / math.sqrt(k - 1))) for k in range(2, 6))
        phases = tuple(float(rng.uniform(0, 2 * math.pi)) for _ in range(2, 6))
        angle = float(rng.uniform(-0.25, 0.25))
        return Blob(cx * width, cy * height, rx, ry, angle, amps, phases)

    main = one(0.5 + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.03, 0.03), 0.33, 0.41)
    blobs = [main]
    if rng.random() < 0.3:  # a small detached fragment near a corner
        cx = rng.choice([0.13, 0.87])
        cy = rng.choice([0.15, 0.85])
        blobs.append(one(cx, cy, 0.06, 0.09))
    return tuple(blobs)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")


def _layout_slide(
    seed: int, case_index: int, slide_index: int, slide_id: str, size: tuple[int, int], fraction: float
) -> SlideLayout:
    width, height = size
    rng = _rng(seed, _S_SLIDE, case_index, slide_index)
    blobs = _random_blobs(rng, width, height)
    gw, gh = width // PATCH_SIZE, height // PATCH_SIZE
    k = PATCH_SIZE // _LAYOUT_STEP
    mask = blob_tissue_mask(blobs, width, height, _LAYOUT_STEP)
    frac = mask[: gh * k, : gw * k].reshape(gh, k, gw, k).mean(axis=(1, 3))
    keep = frac >= TISSUE_THRESHOLD
    rows, cols = np.nonzero(keep)  # row-major order
    coords = np.stack([cols * PATCH_SIZE, rows * PATCH_SIZE], axis=1).astype(np.int64)
    # Risky patches: the top-k of a smooth random field over the patch grid -> clusters.
    field = _smooth_field(rng, (gh, gw), sigma=1.6)[rows, cols]
    n_risky = int(round(fraction * len(rows)))
    phenotype = np.zeros(len(rows), dtype=np.int8)
    if n_risky > 0:
        phenotype[np.argsort(-field, kind="stable")[:n_risky]] = 1
    return SlideLayout(case_index, slide_index, slide_id, width, height, blobs, coords, phenotype)


# --------------------------------------------------------------------------- simulation
@dataclass
class DemoSimulation:
    """Everything of a demo cohort except the rendered slides and the bags' features.

    Attributes
    ----------
    table
        The MCAT-layout cohort table (one row per slide).
    signatures
        The signatures table.
    truth
        One row per patient: the planted components, the true log-risk, the latent event and
        follow-up times and the observed time / censorship.
    layouts
        One :class:`SlideLayout` per slide, in table order.
    oracle_cindex
        Harrell's C of the true log-risk on the observed times and events.
    """

    table: pd.DataFrame
    signatures: pd.DataFrame
    truth: pd.DataFrame
    layouts: list[SlideLayout]
    oracle_cindex: float
    seed: int
    n_patients: int
    slide_size: tuple[int, int]

    @property
    def n_slides(self) -> int:
        return len(self.layouts)

    @property
    def censored_fraction(self) -> float:
        return float(self.truth["censorship"].mean())


def log_risk(
    s_onc: np.ndarray, s_tsg: np.ndarray, risky_fraction: np.ndarray, s_cyt: np.ndarray
) -> np.ndarray:
    """The planted log-risk (log hazard ratio) from its four inputs."""
    r = np.asarray(risky_fraction, dtype=float) - R0
    return B_ONC * s_onc + B_TSG * s_tsg + B_FRAC * r + B_INT * r * s_cyt


def _oracle_cindex(time: np.ndarray, censorship: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C of ``risk`` (:func:`deref.metrics.harrell_c`, ``event = 1 - censorship``);
    NaN where it is undefined (a tiny cohort with no event or no comparable pair)."""
    from deref.metrics import harrell_c  # scikit-survival: not for the slide-rendering workers

    event = 1 - np.asarray(censorship, dtype=np.int64)
    try:
        return harrell_c(time, event, risk).cindex
    except DataError:
        return float("nan")


def _check_args(n_patients: int, seed: int, slide_size: tuple[int, int]) -> tuple[int, int]:
    if (
        isinstance(n_patients, bool)
        or not isinstance(n_patients, (int, np.integer))
        or not 2 <= n_patients <= 9999
    ):
        raise DataError(f"n_patients must be an integer in 2..9999, got {n_patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be an integer in 0..2**32-1, got {seed!r}")
    try:
        width, height = (int(v) for v in slide_size)
    except (TypeError, ValueError):
        raise DataError(f"slide_size must be (width, height) in pixels, got {slide_size!r}") from None
    for name, v in (("width", width), ("height", height)):
        if v % PATCH_SIZE or v < 4 * PATCH_SIZE:
            raise DataError(
                f"slide_size {name} must be a multiple of {PATCH_SIZE} and >= {4 * PATCH_SIZE} px, got {v}"
            )
    return width, height


@dataclass(frozen=True)
class _Clinical:
    """Per-patient clinical draws: ids, age, sex, site, number of slides, risky fractions."""

    case_ids: list[str]
    age: np.ndarray
    is_female: np.ndarray
    site: np.ndarray
    n_slides: np.ndarray
    fraction: np.ndarray  # (n,) first slide's risky fraction
    second: np.ndarray  # (n,) second slide's risky fraction (used where n_slides == 2)


def _simulate_clinical(n: int, seed: int) -> _Clinical:
    crng = _rng(seed, _S_CLINICAL)
    case_ids = [f"DEMO-{i + 1:04d}" for i in range(n)]
    age = np.clip(np.round(crng.normal(68, 10.5, n)), 34, 90).astype(np.int64)
    is_female = (crng.random(n) < 0.26).astype(np.int64)
    site = crng.choice(np.asarray(_SITES), size=n)
    n_slides = np.where(crng.random(n) < TWO_SLIDE_PROB, 2, 1)
    frng = _rng(seed, _S_FRACTION)
    fraction = frng.beta(*FRACTION_BETA, size=n)
    second = np.clip(fraction + frng.normal(0, SECOND_SLIDE_SD, n), 0.0, 1.0)
    return _Clinical(case_ids, age, is_female, site, n_slides, fraction, second)


def _slide_layouts(clin: _Clinical, seed: int, slide_size: tuple[int, int]) -> list[SlideLayout]:
    """One layout per slide, in table order (a patient's slides ``-01``, ``-02`` together)."""
    layouts = []
    for i, case in enumerate(clin.case_ids):
        for j in range(int(clin.n_slides[i])):
            fraction = clin.fraction[i] if j == 0 else clin.second[i]
            layouts.append(_layout_slide(seed, i, j, f"{case}-{j + 1:02d}.svs", slide_size, fraction))
    return layouts


def _patch_counts(layouts: list[SlideLayout], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(patches, risky patches)`` per patient, ``(n,)`` int64 each, all slides together."""
    n_patch = np.zeros(n, dtype=np.int64)
    n_risky = np.zeros(n, dtype=np.int64)
    for lay in layouts:
        n_patch[lay.case_index] += lay.n_patches
        n_risky[lay.case_index] += lay.n_risky
    if (n_patch == 0).any():  # cannot happen with the blob sizes used; guard anyway
        raise DataError("a demo slide has no tissue patch; use a larger slide_size")
    return n_patch, n_risky


def _simulate_survival(eta: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Weibull event times with log hazard ratio ``eta``, independent uniform follow-up."""
    n = len(eta)
    srng = _rng(seed, _S_SURVIVAL)
    u = srng.random(n)
    t_event = WEIBULL_SCALE * (-np.log1p(-u) * np.exp(-eta)) ** (1.0 / WEIBULL_SHAPE)
    t_follow = srng.uniform(FOLLOWUP_MIN, FOLLOWUP_MAX, n)
    return {
        "event_time": t_event,
        "followup_time": t_follow,
        "survival_months": np.maximum(np.round(np.minimum(t_event, t_follow), 2), 0.1),
        "censorship": (t_follow < t_event).astype(np.int64),
    }


def _truth_frame(
    clin: _Clinical, counts: tuple[np.ndarray, np.ndarray], scores: dict[str, np.ndarray], seed: int
) -> pd.DataFrame:
    """One row per patient: the planted components, the log-risk and the survival draws."""
    n_patch, n_risky = counts
    r = n_risky / n_patch
    s_onc, s_tsg, s_cyt = scores["oncogene_score"], scores["suppressor_score"], scores["cytokine_score"]
    eta = log_risk(s_onc, s_tsg, r, s_cyt)
    return pd.DataFrame(
        {
            "case_id": clin.case_ids,
            "n_slides": clin.n_slides.astype(np.int64),
            "n_patches": n_patch,
            "n_risky_patches": n_risky,
            "risky_fraction": r,
            **scores,
            "component_oncogenes": B_ONC * s_onc,
            "component_suppressors": B_TSG * s_tsg,
            "component_risky_fraction": B_FRAC * (r - R0),
            "component_interaction": B_INT * (r - R0) * s_cyt,
            "log_risk": eta,
            **_simulate_survival(eta, seed),
        }
    )


def _cohort_table(
    clin: _Clinical, truth: pd.DataFrame, genomic: pd.DataFrame, layouts: list[SlideLayout], panel: GenePanel
) -> pd.DataFrame:
    """The MCAT-layout table: one row per slide, repeating its patient's values."""
    per_patient = pd.DataFrame(
        {
            "case_id": clin.case_ids,
            "site": clin.site,
            "is_female": clin.is_female,
            "oncotree_code": "DEMO",
            "age": clin.age,
            "survival_months": truth["survival_months"].to_numpy(),
            "censorship": truth["censorship"].to_numpy(),
        }
    )
    per_patient = pd.concat([per_patient, genomic], axis=1)
    rows = per_patient.iloc[[lay.case_index for lay in layouts]].reset_index(drop=True)
    rows.insert(1, "slide_id", [lay.slide_id for lay in layouts])
    return rows[list(CLINICAL_COLUMNS) + panel.columns]


def simulate_demo(
    n_patients: int = 300, seed: int = 0, *, slide_size: tuple[int, int] = SLIDE_SIZE
) -> DemoSimulation:
    """Simulate the demo cohort's tables, slide layouts and truth without rendering anything.

    The same arguments give the same tables as :func:`make_demo_cohort` writes (the truth does
    not depend on ``wsi_dim``).
    """
    slide_size = _check_args(n_patients, seed, slide_size)
    seed = int(seed)
    n = int(n_patients)
    panel = gene_panel()
    genomic, _ = _simulate_genomics(panel, n, seed)
    clin = _simulate_clinical(n, seed)
    layouts = _slide_layouts(clin, seed, slide_size)
    scores = {
        "oncogene_score": family_score(genomic, ONCOGENE_FAMILY, panel),
        "suppressor_score": family_score(genomic, SUPPRESSOR_FAMILY, panel),
        "cytokine_score": family_score(genomic, MODIFIER_FAMILY, panel),
    }
    truth = _truth_frame(clin, _patch_counts(layouts, n), scores, seed)
    return DemoSimulation(
        table=_cohort_table(clin, truth, genomic, layouts, panel),
        signatures=signatures_frame(panel),
        truth=truth,
        layouts=layouts,
        oracle_cindex=_oracle_cindex(truth["survival_months"], truth["censorship"], truth["log_risk"]),
        seed=seed,
        n_patients=n,
        slide_size=slide_size,
    )


# --------------------------------------------------------------------------- embeddings
def phenotype_prototypes(seed: int, wsi_dim: int) -> np.ndarray:
    """``(2, wsi_dim)`` prototype embeddings of the normal (0) and risky (1) phenotypes."""
    rng = _rng(seed, _S_PROTO, wsi_dim)
    p0 = rng.standard_normal(wsi_dim)
    d = rng.standard_normal(wsi_dim)
    d *= PROTOTYPE_DISTANCE / np.linalg.norm(d)
    return np.stack([p0, p0 + d]).astype(np.float64)


def bag_features(seed: int, layout: SlideLayout, wsi_dim: int) -> np.ndarray:
    """Patch embeddings: phenotype prototype + the patient's batch effect + patch noise."""
    proto = phenotype_prototypes(seed, wsi_dim)
    batch = _rng(seed, _S_BATCH, layout.case_index, wsi_dim).normal(0.0, PATIENT_BATCH_SD, wsi_dim)
    noise = _rng(seed, _S_BATCH, layout.case_index, wsi_dim, layout.slide_index + 1).normal(
        0.0, PATCH_NOISE_SD, (layout.n_patches, wsi_dim)
    )
    return (proto[layout.phenotype.astype(np.int64)] + batch + noise).astype(np.float32)


# --------------------------------------------------------------------------- painting
_EOSIN = np.array([236.0, 172.0, 204.0])
_EOSIN_RISKY = np.array([212.0, 148.0, 198.0])
_CYTOPLASM = np.array([240.0, 200.0, 222.0])
_LUMEN = np.array([247.0, 240.0, 245.0])
_NUCLEUS = np.array([104.0, 72.0, 156.0])
_NUCLEUS_RISKY = np.array([58.0, 34.0, 104.0])
_TEXTURE = 768


def _stamp_nuclei(
    img: np.ndarray,
    rng: np.random.Generator,
    xy: np.ndarray,
    radius: tuple[float, float],
    elong: tuple[float, float],
    color: np.ndarray,
    alpha: float,
) -> None:
    """Blend soft-edged elliptical nuclei centred at ``xy`` (k x 2, px) into ``img`` (float)."""
    h, w, _ = img.shape
    for x, y in xy:
        a = rng.uniform(*radius)
        b = a * rng.uniform(*elong)
        th = rng.uniform(0, math.pi)
        r = int(math.ceil(a)) + 2
        x0, x1 = max(int(x) - r, 0), min(int(x) + r + 1, w)
        y0, y1 = max(int(y) - r, 0), min(int(y) + r + 1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dx, dy = xx + 0.5 - x, yy + 0.5 - y
        c, s = math.cos(th), math.sin(th)
        d = np.sqrt(((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2)
        al = (np.clip((1.0 - d) * 2.0, 0.0, 1.0) * alpha)[..., None]
        col = color * (1.0 + rng.normal(0.0, 0.06))
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - al) + col * al


def _periodic_smooth(rng: np.random.Generator, sigma: tuple[float, float]) -> np.ndarray:
    """Unit-variance periodic Gaussian-filtered white noise (filtered in the Fourier domain)."""
    s = _TEXTURE
    f = np.fft.fftfreq(s)
    g = np.exp(-2.0 * (math.pi**2) * ((f[:, None] * sigma[0]) ** 2 + (f[None, :] * sigma[1]) ** 2))
    out = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((s, s))) * g[:, : s // 2 + 1], s=(s, s))
    return out / out.std()


def _base(rng: np.random.Generator, color: np.ndarray, fibre: float) -> np.ndarray:
    """A smooth eosin background with faint collagen streaks (periodic, so crops never run out)."""
    shade = 1.0 + fibre * _periodic_smooth(rng, (4.0, 18.0)) + 0.02 * _periodic_smooth(rng, (48.0, 48.0))
    return color[None, None, :] * shade[..., None]


def _normal_texture(rng: np.random.Generator, glands: bool) -> np.ndarray:
    """Phenotype 0: pink stroma with sparse spindle nuclei, optionally with glands."""
    s = _TEXTURE
    img = _base(rng, _EOSIN, 0.012)
    n = int(rng.integers(70, 100))
    _stamp_nuclei(img, rng, rng.uniform(0, s, (n, 2)), (6.0, 9.0), (0.3, 0.45), _NUCLEUS, 0.85)
    if glands:  # glands: a pale lumen in a ring of cytoplasm with basal nuclei
        for _ in range(int(rng.integers(4, 7))):
            gx, gy = rng.uniform(70, s - 70), rng.uniform(70, s - 70)
            r_out = rng.uniform(40, 60)
            r_in = r_out * rng.uniform(0.4, 0.6)
            x0, y0 = int(gx - r_out - 4), int(gy - r_out - 4)
            x1, y1 = int(gx + r_out + 5), int(gy + r_out + 5)
            yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
            d = np.hypot(xx - gx, yy - gy)
            win = img[y0:y1, x0:x1]
            cyto = np.clip((r_out - d) / 3.0, 0, 1)[..., None]
            win = win * (1 - cyto) + _CYTOPLASM * cyto
            lumen = np.clip((r_in - d) / 2.0, 0, 1)[..., None]
            img[y0:y1, x0:x1] = win * (1 - lumen) + _LUMEN * lumen
            rn = r_out - 7.0
            m = int(2 * math.pi * rn / 10)
            ang = np.linspace(0, 2 * math.pi, m, endpoint=False) + rng.uniform(0, 1)
            rr = rn + rng.normal(0, 1.0, m)
            ring = np.stack([gx + rr * np.cos(ang), gy + rr * np.sin(ang)], axis=1)
            _stamp_nuclei(img, rng, ring, (4.5, 5.5), (0.7, 0.95), _NUCLEUS, 0.85)
    return np.clip(img, 0, 255).astype(np.uint8)


def _risky_texture(rng: np.random.Generator) -> np.ndarray:
    """Phenotype 1: crowded sheets and clusters of large, dark, pleomorphic nuclei."""
    s = _TEXTURE
    img = _base(rng, _EOSIN_RISKY, 0.015)
    n_clusters = int(rng.integers(13, 17))
    centres = rng.uniform(0, s, (n_clusters, 2))
    per = rng.integers(45, 70, n_clusters)
    pts = [c + rng.normal(0, rng.uniform(18, 28), (k, 2)) for c, k in zip(centres, per)]
    pts.append(rng.uniform(0, s, (int(rng.integers(260, 320)), 2)))
    xy = np.concatenate(pts) % s
    _stamp_nuclei(img, rng, xy, (5.0, 8.5), (0.55, 1.0), _NUCLEUS_RISKY, 0.92)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass
class TextureLibrary:
    """Phenotype textures (768 x 768 RGB uint8) at level 0 and downsampled to level 1."""

    normal: list[np.ndarray]
    risky: list[np.ndarray]
    normal_l1: list[np.ndarray]
    risky_l1: list[np.ndarray]


def texture_library(seed: int) -> TextureLibrary:
    """The textures patches are cut from (deterministic from the seed)."""
    rng = _rng(seed, _S_TEXTURE)
    normal = [_normal_texture(rng, glands=g) for g in (False, True, False, True)]
    risky = [_risky_texture(rng) for _ in range(4)]
    return TextureLibrary(
        normal,
        risky,
        [block_mean(t, LEVEL_FACTOR) for t in normal],
        [block_mean(t, LEVEL_FACTOR) for t in risky],
    )


def _stain_lut(rng: np.random.Generator) -> np.ndarray:
    """Per-slide stain variation: per channel, darkness (255 - v) scaled by ~U(0.9, 1.1)."""
    v = np.arange(256, dtype=np.float64)
    lut = np.empty((3, 256), dtype=np.uint8)
    for c in range(3):
        lut[c] = np.clip(255.0 - (255.0 - v) * rng.uniform(0.9, 1.1), 0, 255).round().astype(np.uint8)
    return lut


def _apply_lut(textures: list[np.ndarray], lut: np.ndarray) -> list[np.ndarray]:
    out = []
    for t in textures:
        o = np.empty_like(t)
        for c in range(3):
            o[..., c] = np.take(lut[c], t[..., c])
        out.append(o)
    return out


class _SlidePainter:
    """Paints a slide cell by cell (256-px level-0 cells, row-major), filling level 1 as it goes.

    Tissue is painted where the blob mask is (sampled every 4 px at level 0, i.e. once per
    level-1 pixel); each cell gets a randomly placed and flipped crop of a phenotype
    texture: the risky texture exactly on the bag's risky patches, the normal texture on every
    other cell with tissue. Level 1 is painted from the same crops of the downsampled textures,
    so it equals level 0 averaged over 4 x 4 blocks up to rounding.
    """

    def __init__(self, layout: SlideLayout, seed: int, library: TextureLibrary | None = None) -> None:
        lib = library or texture_library(seed)
        self.layout = layout
        self.rng = _rng(seed, _S_SLIDE, layout.case_index, layout.slide_index, 1)
        lut = _stain_lut(self.rng)
        self.tex0 = {0: _apply_lut(lib.normal, lut), 1: _apply_lut(lib.risky, lut)}
        self.tex1 = {0: _apply_lut(lib.normal_l1, lut), 1: _apply_lut(lib.risky_l1, lut)}
        f = LEVEL_FACTOR
        self.level1 = np.empty((layout.height // f, layout.width // f, 3), dtype=np.uint8)
        self.level1[...] = BACKGROUND
        self.mask = blob_tissue_mask(layout.blobs, layout.width, layout.height, f)  # per level-1 pixel
        ps = PATCH_SIZE
        self.risky_cells = {
            (int(x) // ps, int(y) // ps) for (x, y), p in zip(layout.coords, layout.phenotype) if p
        }

    def cells(self):
        """Yield ``(gx, gy, tile)`` per level-0 cell in row-major order; ``tile`` None = background."""
        lay, rng, f = self.layout, self.rng, LEVEL_FACTOR
        ps = PATCH_SIZE
        ps1 = ps // f
        bg = np.asarray(BACKGROUND, dtype=np.uint8)
        for gy in range(lay.height // ps):
            for gx in range(lay.width // ps):
                m = self.mask[gy * ps1 : (gy + 1) * ps1, gx * ps1 : (gx + 1) * ps1]
                if not m.any():
                    yield gx, gy, None
                    continue
                kind = 1 if (gx, gy) in self.risky_cells else 0
                i = int(rng.integers(len(self.tex0[kind])))
                ox, oy = (int(v) * f for v in rng.integers(0, (_TEXTURE - ps) // f + 1, 2))
                flip = int(rng.integers(4))  # no transposes: collagen streaks stay horizontal
                t0 = self.tex0[kind][i][oy : oy + ps, ox : ox + ps]
                t1 = self.tex1[kind][i][oy // f : oy // f + ps1, ox // f : ox // f + ps1]
                if flip & 1:
                    t0, t1 = t0[::-1], t1[::-1]
                if flip & 2:
                    t0, t1 = t0[:, ::-1], t1[:, ::-1]
                if not m.all():
                    t1 = np.where(m[..., None], t1, bg)
                    full = np.repeat(np.repeat(m, f, axis=0), f, axis=1)
                    t0 = np.where(full[..., None], t0, bg)
                self.level1[gy * ps1 : (gy + 1) * ps1, gx * ps1 : (gx + 1) * ps1] = t1
                yield gx, gy, np.ascontiguousarray(t0)

    def reduced_levels(self) -> list[np.ndarray]:
        """Level 1 (complete once :meth:`cells` is exhausted) and further 4x block means."""
        levels = [self.level1]
        while max(levels[-1].shape[:2]) // LEVEL_FACTOR >= PATCH_SIZE:
            levels.append(block_mean(levels[-1], LEVEL_FACTOR))
        return levels


def render_slide(layout: SlideLayout, seed: int, library: TextureLibrary | None = None) -> list[np.ndarray]:
    """The slide's pyramid levels as arrays (level 0 first), exactly as :func:`write_slide` encodes them."""
    painter = _SlidePainter(layout, seed, library)
    ps = PATCH_SIZE
    level0 = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
    level0[...] = BACKGROUND
    for gx, gy, tile in painter.cells():
        if tile is not None:
            level0[gy * ps : (gy + 1) * ps, gx * ps : (gx + 1) * ps] = tile
    return [level0, *painter.reduced_levels()]


def write_slide_tiff(path: str | os.PathLike, levels: list[np.ndarray], quality: int = JPEG_QUALITY) -> Path:
    """Write pyramid levels (arrays, level 0 first) as the demo's Aperio-style TIFF, atomically.

    :func:`deref.slides.write_pyramidal_tiff` at 20x and 0.5 um/px, 256-px tiles padded with
    the demo's glass colour: OpenSlide reads it as ``aperio`` with ``AppMag`` and ``MPP``.
    """
    return write_pyramidal_tiff(
        path,
        levels,
        mpp=MPP,
        magnification=APP_MAG,
        quality=quality,
        tile_size=PATCH_SIZE,
        background=BACKGROUND,
    )


def write_slide(
    path: str | os.PathLike,
    layout: SlideLayout,
    seed: int,
    library: TextureLibrary | None = None,
    quality: int = JPEG_QUALITY,
) -> Path:
    """Paint and write a demo slide (the pixels of :func:`render_slide`)."""
    return write_slide_tiff(path, render_slide(layout, seed, library), quality)


BAG_ATTRS = {
    "patch_size": PATCH_SIZE,
    "patch_level": 0,
    "downsample": 1.0,
    "mpp": MPP,
    "magnification": APP_MAG,
}


def write_demo_bag(path: str | os.PathLike, features: np.ndarray, layout: SlideLayout) -> Path:
    """Write a CLAM-layout bag plus the per-patch truth ``phenotype`` (atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.h5")
    try:
        write_bag_h5(tmp, features, layout.coords, dict(BAG_ATTRS, slide_id=layout.slide_id))
        with h5py.File(tmp, "a") as f:
            ds = f.create_dataset("phenotype", data=layout.phenotype.astype(np.int8))
            ds.attrs["meaning"] = "0 = normal stroma/epithelium, 1 = risky (dense dark nuclei)"
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------------- workers
def write_slide_and_bag(
    layout: SlideLayout,
    seed: int,
    wsi_dim: int,
    slides_dir: str | os.PathLike,
    bags_dir: str | os.PathLike,
    library: TextureLibrary | None = None,
) -> int:
    """Write one slide (``slides_dir/<slide_id>``) and its bag (``bags_dir/<stem>.h5``); bytes written."""
    slide = write_slide(Path(slides_dir) / layout.slide_id, layout, seed, library)
    bag = write_demo_bag(Path(bags_dir) / f"{layout.stem}.h5", bag_features(seed, layout, wsi_dim), layout)
    return slide.stat().st_size + bag.stat().st_size


#: State of a rendering worker process (set once by the pool initializer).
_WORKER: dict = {}


def _init_worker(seed: int, wsi_dim: int, slides_dir: str, bags_dir: str) -> None:
    _WORKER.update(
        seed=seed, wsi_dim=wsi_dim, slides_dir=slides_dir, bags_dir=bags_dir, library=texture_library(seed)
    )


def render_pool(workers: int, initializer: Callable, initargs: tuple) -> ProcessPoolExecutor:
    """A process pool for rendering (this demo's and :mod:`deref.data.synthetic_mri`'s).

    "fork" where the platform has it: workers start at once and re-import nothing (a "spawn"
    worker re-runs the caller's ``__main__``, which fails for ``python -`` or a notebook). The
    workers only use numpy, imagecodecs, tifffile, h5py and nibabel, never torch, so state
    inherited from a caller that has torch threads running is not touched. Elsewhere "spawn". A
    worker that dies raises ``BrokenProcessPool`` instead of hanging.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=initializer,
        initargs=initargs,
    )


def run_in_pool(pool: ProcessPoolExecutor, fn: Callable, items, on_done: Callable[[], None]) -> None:
    """``fn(item)`` for every item in ``pool``; ``on_done()`` after each one finishes. A worker's
    error cancels what has not started and is re-raised."""
    futures = [pool.submit(fn, item) for item in items]
    try:
        for fut in as_completed(futures):
            fut.result()  # re-raises a worker's error
            on_done()
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _render_one(layout: SlideLayout) -> int:
    w = _WORKER
    return write_slide_and_bag(layout, w["seed"], w["wsi_dim"], w["slides_dir"], w["bags_dir"], w["library"])


# --------------------------------------------------------------------------- the cohort
@dataclass
class DemoCohort:
    """Paths and facts of a written demo cohort."""

    out_dir: Path
    table: Path
    signatures: Path
    slides_dir: Path
    bags_dir: Path
    truth: Path
    meta: Path
    n_patients: int
    n_slides: int
    oracle_cindex: float
    censored_fraction: float
    wsi_dim: int
    seed: int


_OUTPUT_FILES = ("cohort.csv", "signatures.csv", "truth.csv", "demo.json")


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    existing = [out / n for n in _OUTPUT_FILES if (out / n).exists()]
    for sub, suffix in (("slides", ".svs"), ("bags", ".h5")):
        d = out / sub
        if d.is_dir():
            existing += [p for p in d.iterdir() if p.suffix == suffix and _STEM_RE.match(p.stem)]
    if existing and not overwrite:
        raise DataError(
            f"{out}: already holds a demo cohort ({existing[0].name} and {len(existing) - 1} more file(s)); "
            "pass overwrite=True to replace it, or choose another folder"
        )
    for p in existing:  # only files this generator writes
        p.unlink()
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "bags").mkdir(parents=True, exist_ok=True)


def make_demo_cohort(
    out_dir: str | os.PathLike,
    n_patients: int = 300,
    seed: int = 0,
    wsi_dim: int = 64,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    *,
    slide_size: tuple[int, int] = SLIDE_SIZE,
    overwrite: bool = False,
) -> DemoCohort:
    """Write the demo cohort (tables, slides, bags, truth) under ``out_dir``.

    Parameters
    ----------
    out_dir
        Output folder (created). Files of an earlier demo there are an error unless
        ``overwrite``; then only those files are replaced.
    n_patients, seed
        Cohort size and seed; everything written is a deterministic function of
        ``(n_patients, seed, wsi_dim, slide_size)``, whatever ``workers`` is.
    wsi_dim
        Width of the patch embeddings in the bags.
    workers
        Processes rendering slides (1 = in this process).
    progress
        Called as ``progress(done, total)`` after each slide is written (and once with 0).
    slide_size
        Level-0 ``(width, height)`` in px, multiples of 256 (tests use small slides).

    Returns
    -------
    DemoCohort
    """
    if isinstance(wsi_dim, bool) or not isinstance(wsi_dim, (int, np.integer)) or wsi_dim < 2:
        raise DataError(f"wsi_dim must be an integer >= 2, got {wsi_dim!r}")
    sim = simulate_demo(n_patients, seed, slide_size=slide_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_out_dir(out, overwrite)
    slides_dir, bags_dir = out / "slides", out / "bags"
    _render_slides(sim, int(wsi_dim), slides_dir, bags_dir, max(1, int(workers)), progress)
    table, signatures, truth, meta = (out / name for name in _OUTPUT_FILES)
    sim.table.to_csv(table, index=False)
    sim.signatures.to_csv(signatures, index=False)
    sim.truth.to_csv(truth, index=False)
    meta.write_text(json.dumps(_demo_meta(sim, int(wsi_dim)), indent=2) + "\n")
    return DemoCohort(
        out_dir=out,
        table=table,
        signatures=signatures,
        slides_dir=slides_dir,
        bags_dir=bags_dir,
        truth=truth,
        meta=meta,
        n_patients=sim.n_patients,
        n_slides=sim.n_slides,
        oracle_cindex=sim.oracle_cindex,
        censored_fraction=sim.censored_fraction,
        wsi_dim=int(wsi_dim),
        seed=sim.seed,
    )


def _render_slides(
    sim: DemoSimulation,
    wsi_dim: int,
    slides_dir: Path,
    bags_dir: Path,
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Write every slide and its bag, in this process or in ``workers`` processes."""
    total = len(sim.layouts)
    done = 0
    if progress is not None:
        progress(0, total)
    if workers == 1 or total == 1:
        library = texture_library(sim.seed)
        for lay in sim.layouts:
            write_slide_and_bag(lay, sim.seed, wsi_dim, slides_dir, bags_dir, library)
            done += 1
            if progress is not None:
                progress(done, total)
        return
    counter = iter(range(1, total + 1))

    def tick() -> None:
        n = next(counter)
        if progress is not None:
            progress(n, total)

    initargs = (sim.seed, wsi_dim, str(slides_dir), str(bags_dir))
    with render_pool(min(workers, total), _init_worker, initargs) as pool:
        run_in_pool(pool, _render_one, sim.layouts, tick)


def _demo_meta(sim: DemoSimulation, wsi_dim: int) -> dict:
    """The content of ``demo.json``: the generator's parameters and the oracle C-index."""
    return {
        "generator": "deref.data.synthetic",
        "version": DEMO_VERSION,
        "seed": sim.seed,
        "n_patients": sim.n_patients,
        "n_slides": sim.n_slides,
        "n_patches": int(sim.truth["n_patches"].sum()),
        "wsi_dim": wsi_dim,
        "slide_size": list(sim.slide_size),
        "oracle_cindex": None if math.isnan(sim.oracle_cindex) else sim.oracle_cindex,
        "censored_fraction": sim.censored_fraction,
        "log_risk": (
            f"{B_ONC} * mean({ONCOGENE_FAMILY} _rnaseq) + {B_TSG} * mean({SUPPRESSOR_FAMILY} _rnaseq) "
            f"+ {B_FRAC} * (r - {R0}) + {B_INT} * (r - {R0}) * mean({MODIFIER_FAMILY} _rnaseq); "
            "r = fraction of the patient's patches with phenotype 1"
        ),
        "coefficients": {
            "oncogenes": B_ONC,
            "suppressors": B_TSG,
            "risky_fraction": B_FRAC,
            "interaction": B_INT,
            "r0": R0,
        },
        "survival": {
            "model": "weibull",
            "shape": WEIBULL_SHAPE,
            "scale_months": WEIBULL_SCALE,
            "followup_uniform_months": [FOLLOWUP_MIN, FOLLOWUP_MAX],
        },
        "embeddings": {
            "prototype_distance": PROTOTYPE_DISTANCE,
            "patient_batch_sd": PATIENT_BATCH_SD,
            "patch_noise_sd": PATCH_NOISE_SD,
        },
        "documentation": "assets/DEMO.md",
    }


__all__ = [
    "DemoCohort",
    "DemoSimulation",
    "GenePanel",
    "SlideLayout",
    "bag_features",
    "family_score",
    "gene_panel",
    "log_risk",
    "make_demo_cohort",
    "render_slide",
    "signatures_frame",
    "simulate_demo",
    "texture_library",
    "write_slide",
    "write_slide_and_bag",
    "write_slide_tiff",
]
