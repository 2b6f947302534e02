"""The look and the provenance text shared by every figure: palette, fonts, captions, p-values,
and the bare matplotlib figure the static builders draw on.

Style: white background, Okabe–Ito colours (distinguishable with the common colour-vision
deficiencies) ordered from blue (lowest risk) to vermillion (highest), 10–13 pt text.
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from deref import __version__

if TYPE_CHECKING:  # matplotlib loads with the first static figure, not with this module
    from matplotlib.figure import Figure

__all__ = [
    "OKABE_ITO",
    "FONT_FAMILY",
    "SOFTWARE",
    "group_colors",
    "css_rgba",
    "figure_meta",
    "caption_text",
    "format_p",
    "mpl_figure",
    "HOUSE_TEMPLATE",
    "house_template",
]

#: Okabe & Ito (2008) colour-blind-safe palette.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: Font stack of the plotly figures (matplotlib uses its default sans-serif).
FONT_FAMILY = "Arial, Helvetica, DejaVu Sans, sans-serif"
#: The ``Software`` / ``Creator`` entry of exported files.
SOFTWARE = f"DeReF Studio {__version__}"
#: The plotly template every dashboard figure is drawn with.
HOUSE_TEMPLATE = "simple_white"


def house_template(fig: Any) -> Any:
    """The house template (:data:`HOUSE_TEMPLATE`) for a plotly figure whose traces are all added.

    Its layout part is the whole template's; its data part keeps only the trace types ``fig``
    has. plotly.js applies a data template to the traces of its own type only, so the figure
    draws exactly as with ``template="simple_white"``, and setting it costs a third (the
    full template carries defaults for 24 trace types, validated and copied into every figure:
    most of a Patient page's plotly time).

    Parameters
    ----------
    fig : plotly.graph_objects.Figure
        With every trace it will have (a trace type added later gets no template defaults).

    Returns
    -------
    plotly.graph_objects.layout.Template
        Shared between calls: pass it to ``update_layout(template=...)``, which copies it.
    """
    return _house_template(tuple(sorted({trace.type for trace in fig.data})))


@functools.lru_cache(maxsize=64)
def _house_template(trace_types: tuple[str, ...]) -> Any:
    import plotly.graph_objects as go
    import plotly.io as pio

    full = pio.templates[HOUSE_TEMPLATE]
    data = {t: full.data[t] for t in trace_types if full.data[t]}
    return go.layout.Template(layout=full.layout, data=data)


def group_colors(n: int) -> list[str]:
    """``n`` Okabe–Ito colours ordered low -> high risk (blue ... vermillion)."""
    o = OKABE_ITO
    if n <= 2:
        return [o["blue"], o["vermillion"]][:n]
    if n == 3:
        return [o["blue"], o["orange"], o["vermillion"]]
    if n == 4:
        return [o["blue"], o["bluish_green"], o["orange"], o["vermillion"]]
    base = [
        o["blue"],
        o["sky_blue"],
        o["bluish_green"],
        o["orange"],
        o["vermillion"],
        o["reddish_purple"],
        o["black"],
    ]
    return [base[i % len(base)] for i in range(n)]


def css_rgba(hex_color: str, alpha: float) -> str:
    """A ``#rrggbb`` colour with opacity ``alpha``, as a CSS ``rgba(r,g,b,a)`` string (plotly fills)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def figure_meta(
    run: str | None = None,
    cohort: str | None = None,
    cutoff: str | None = None,
    date: str | None = None,
    **extra: Any,
) -> dict[str, str]:
    """Provenance of a figure: ``run``, ``cohort``, ``cutoff`` and ``date`` (today by default).

    Extra keyword arguments are kept (as strings); None values are dropped.
    """
    meta = {"run": run, "cohort": cohort, "cutoff": cutoff, "date": date or _dt.date.today().isoformat()}
    meta.update(extra)
    return {k: str(v) for k, v in meta.items() if v is not None}


def caption_text(meta: Mapping[str, Any] | None) -> str:
    """The caption line printed on a figure, e.g. ``run: r1 | cohort: BLCA | ...``."""
    if not meta:
        return ""
    return " | ".join(f"{k}: {v}" for k, v in meta.items() if k != "title" and v is not None)


def format_p(p: float) -> str:
    """A p-value for display: ``p = 0.032``, ``p = 4.1e-06``, ``p = n/a``."""
    if p is None or not np.isfinite(p):
        return "p = n/a"
    if p < 1e-3:
        return f"p = {p:.1e}"
    return f"p = {p:.3f}"


def mpl_figure(**kwargs: Any) -> Figure:
    """A bare matplotlib Figure with an Agg canvas (no pyplot state, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig
