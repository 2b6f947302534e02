"""The one stratification report: risk groups of a run's predictions, their statistics, figures,
files and printed summary.

The dashboard's Stratification page (``km_export``), ``deref figures`` and ``deref evaluate``
all build a :class:`StratificationReport` with :func:`stratification_report`, so the cutoffs,
the figure titles, the file metadata, the file names and the printed lines are made in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from deref.errors import DataError
from deref.stratify import (
    CutoffRule,
    Cutoffs,
    StratificationResult,
    assign_groups,
    compute_cutoffs,
    stratify,
)
from deref.survival import SurvivalFrame, survival_frame

__all__ = ["StratificationReport", "stratification_report", "FIGURES", "EXPORT_FORMATS"]

#: What a report draws: the Kaplan–Meier figure or the box plot of the t-test's quantity.
FIGURES = ("km", "box")
#: What :meth:`StratificationReport.export` writes.
EXPORT_FORMATS = ("png", "svg", "pdf", "csv")

Backend = Literal["matplotlib", "plotly"]


@dataclass(frozen=True)
class StratificationReport:
    """Risk groups of one cohort's predictions and everything shown or written about them.

    Build it with :func:`stratification_report`.

    Attributes
    ----------
    cutoffs : Cutoffs
        The thresholds (per fold, from the training risks unless asked otherwise).
    groups : pandas.Series
        Ordered categorical risk group per patient, on a ``RangeIndex`` in the row order of
        the predictions.
    result : StratificationResult
        Kaplan–Meier, log-rank, hazard ratio, t-test and at-risk table.
    meta : dict[str, str]
        Provenance (:func:`deref.figures.figure_meta`): run, cohort, cutoff, date, run_created.
    """

    cutoffs: Cutoffs
    groups: pd.Series
    result: StratificationResult
    meta: dict[str, str]

    @property
    def rule(self) -> CutoffRule:
        return self.cutoffs.rule

    @property
    def title(self) -> str:
        """``<run>: <rule> split``: the title of every figure of the report."""
        return f"{self.meta['run']}: {self.rule.name} split"

    def _check_what(self, what: str) -> None:
        if what not in FIGURES:
            raise DataError(f"unknown figure {what!r}; use one of {', '.join(FIGURES)}")

    @staticmethod
    def _plotly(backend: str) -> bool:
        if backend not in ("matplotlib", "plotly"):
            raise DataError(f"unknown figure backend {backend!r}; use 'matplotlib' or 'plotly'")
        return backend == "plotly"

    def km_figure(self, backend: Backend = "matplotlib"):
        """The Kaplan–Meier figure (matplotlib Figure for files, plotly Figure for the app)."""
        from deref.figures import km_figure_matplotlib, km_figure_plotly

        build = km_figure_plotly if self._plotly(backend) else km_figure_matplotlib
        return build(self.result, title=self.title, meta=self.meta)

    def box_figure(self, backend: Backend = "matplotlib"):
        """The box plot of the t-test's quantity per group (matplotlib or plotly)."""
        from deref.figures import risk_boxplot_matplotlib, risk_boxplot_plotly

        build = risk_boxplot_plotly if self._plotly(backend) else risk_boxplot_matplotlib
        return build(self.result, title=f"{self.title}: risk groups", meta=self.meta)

    def file_meta(self, what: str = "km") -> dict[str, str]:
        """The provenance written into a file's metadata (``meta`` plus the file's title)."""
        self._check_what(what)
        kind = "Kaplan–Meier" if what == "km" else "Box plot"
        return {**self.meta, "title": f"{kind}, {self.title}"}

    def export(self, fmt: str, what: str = "km") -> bytes:
        """File bytes: ``png`` (300 dpi), ``svg``, ``pdf`` of figure ``what`` with provenance in
        the file's metadata, or ``csv``: every number behind the figures
        (:func:`deref.figures.stratification_table`, the same for both figures)."""
        from deref.figures import export_figure, stratification_table

        self._check_what(what)
        if fmt.lower().lstrip(".") == "csv":
            return stratification_table(self.result).to_csv(index=False).encode()
        fig = self.km_figure() if what == "km" else self.box_figure()
        return export_figure(fig, fmt, self.file_meta(what))

    def file_stem(self, what: str = "km", *, run_prefix: bool = True) -> str:
        """A file name without extension: ``<run>_<what>_<rule>`` (downloads, any folder), or with
        ``run_prefix=False`` the names ``deref figures`` writes into its output folder:
        ``km_<rule>`` and ``risk_boxplot``."""
        self._check_what(what)
        if not run_prefix:
            return f"km_{self.rule.slug}" if what == "km" else "risk_boxplot"
        return f"{self.meta['run']}_{what}_{self.rule.slug}".replace("/", "_").replace(" ", "_")

    def summary_lines(self) -> list[str]:
        """The report as printed by the CLI: rule and cutoffs, log-rank, HR with its CI, each
        group's n, events and median (with CI), then the notes."""
        from deref.figures import format_p, hazard_ratio_text, median_text

        res = self.result
        lr = res.logrank
        lines = [
            f"risk groups: {self.rule.name}, cutoffs from {self.cutoffs.describe()}",
            f"log-rank: {format_p(lr.p_value) if lr.estimable else f'not estimable: {lr.reason}'}",
            hazard_ratio_text(res),
        ]
        lines += [
            f"  {g.name}: n={g.n}, events={g.events}, {median_text(g, res.time_unit)}" for g in res.groups
        ]
        lines += [f"note: {note}" for note in res.notes]
        return lines


def stratification_report(
    pred: pd.DataFrame | SurvivalFrame,
    *,
    rule: str | CutoffRule,
    run_name: str,
    train_risks: pd.DataFrame | None = None,
    cutoffs_from: Literal["training", "cohort"] = "training",
    time_unit: str = "months",
    cohort_name: str | None = None,
    run_created: str | None = None,
    **extra_meta: Any,
) -> StratificationReport:
    """Cut a cohort's predictions into risk groups and stratify them.

    Parameters
    ----------
    pred : pandas.DataFrame or SurvivalFrame
        Predictions: ``case_id, fold, time, censorship`` (or ``event``), ``risk``; validated
        once (:func:`deref.survival.survival_frame`).
    rule : str or CutoffRule
        ``median``, ``tertiles``, ``quartiles``, ``quantiles:P1,...`` or ``thresholds:T1,...``.
    run_name : str
        The run's name, in titles, captions and file names.
    train_risks : pandas.DataFrame, optional
        ``train_risks.csv`` (``fold, case_id, risk``): the source of the cutoffs when
        ``cutoffs_from="training"`` and ``rule`` is a quantile rule.
    cutoffs_from : {"training", "cohort"}
        ``cohort``: the cohort's own risk quantiles (explicitly requested, labelled so).
    time_unit : str
        Unit of ``time``, for labels.
    cohort_name, run_created : str, optional
        Provenance for captions and file metadata.
    **extra_meta
        More provenance entries (kept as strings).

    Returns
    -------
    StratificationReport

    Raises
    ------
    DataError
        Malformed predictions or training risks, no training risks for a training-cutoff
        quantile rule, a risk group without patients.
    """
    from deref.figures import figure_meta

    sf = survival_frame(pred, require_risk=True)
    cutoffs = compute_cutoffs(rule, train_risks=train_risks, pred_df=sf, cutoffs_from=cutoffs_from)
    groups = assign_groups(sf, cutoffs)
    result = stratify(sf, groups, cutoffs=cutoffs, time_unit=time_unit)
    meta = figure_meta(
        run=run_name,
        cohort=cohort_name,
        cutoff=cutoffs.describe(),
        run_created=run_created,
        **extra_meta,
    )
    return StratificationReport(cutoffs, groups, result, meta)
