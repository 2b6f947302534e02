"""Static figure files: a matplotlib figure as PNG (300 dpi), SVG or PDF bytes, with the
figure's provenance in the file's own metadata.

plotly's static export (kaleido) needs a Chromium that is not always installed; the
``*_matplotlib`` builders need nothing, so every file is drawn by matplotlib.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from deref.figures.style import SOFTWARE, caption_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURE_FORMATS", "export_figure", "file_metadata"]

#: The file formats :func:`export_figure` writes.
FIGURE_FORMATS = ("png", "svg", "pdf")

_RC = {
    "svg.fonttype": "none",  # text stays text: editable in Inkscape/Illustrator
    "svg.hashsalt": "deref",  # stable element ids: same figure, same bytes
    "pdf.fonttype": 42,  # TrueType, as journals ask
}


def file_metadata(fmt: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` in the shape each backend's ``savefig(metadata=...)`` takes.

    PNG: text chunks (``Title``, ``Software``, ``Description`` = caption, one per ``meta`` key,
    capitalised); SVG: Dublin Core ``Title``, ``Description``, ``Keywords``, ``Creator``,
    ``Date``; PDF: the Info dictionary (``Title``, ``Subject`` = caption, ``Keywords`` =
    ``key=value; ...``, ``Creator``).
    """
    meta = {str(k): str(v) for k, v in meta.items() if v is not None}
    title = meta.get("title") or ("DeReF Studio figure" + (f" ({meta['run']})" if "run" in meta else ""))
    caption = caption_text(meta)
    keywords = [f"{k}={v}" for k, v in meta.items() if k != "title"]
    if fmt == "png":
        out = {"Title": title, "Software": SOFTWARE, "Description": caption}
        for k, v in meta.items():
            key = k.strip().replace(" ", "_")[:79] or "key"
            out.setdefault(key[0].upper() + key[1:], v)
        return out
    if fmt == "svg":
        out = {"Title": title, "Description": caption, "Keywords": keywords, "Creator": SOFTWARE}
        if "date" in meta:
            out["Date"] = meta["date"]
        return out
    return {"Title": title, "Subject": caption, "Keywords": "; ".join(keywords), "Creator": SOFTWARE}


def _checked_format(fig: Any, fmt: str) -> str:
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(
            f"export_figure needs a matplotlib Figure, got {type(fig).__name__}; "
            "build it with km_figure_matplotlib / risk_boxplot_matplotlib"
        )
    fmt = fmt.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"unsupported figure format {fmt!r}; use png, svg or pdf")
    return fmt


@contextmanager
def _quiet_fonttools() -> Iterator[None]:
    """The PDF backend subsets fonts with fontTools, which logs every glyph at INFO."""
    ft_logger = logging.getLogger("fontTools")
    level = ft_logger.level
    ft_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        ft_logger.setLevel(level)


def export_figure(fig: Figure, fmt: str, meta: Mapping[str, Any] | None = None) -> bytes:
    """Render a matplotlib figure to PNG (300 dpi), SVG or PDF bytes with provenance metadata.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        From a ``*_matplotlib`` builder.
    fmt : {"png", "svg", "pdf"}
    meta : mapping, optional
        Provenance (:func:`~deref.figures.figure_meta`), written as :func:`file_metadata`
        says. The builders also print it as a caption line on the figure.

    Returns
    -------
    bytes

    Raises
    ------
    TypeError
        ``fig`` is not a matplotlib figure (plotly figures need a browser for static export;
        build the matplotlib version instead).
    ValueError
        Unknown ``fmt``.
    """
    fmt = _checked_format(fig, fmt)
    import matplotlib

    buf = io.BytesIO()
    with _quiet_fonttools(), matplotlib.rc_context(_RC):
        fig.savefig(
            buf,
            format=fmt,
            dpi=300 if fmt == "png" else 72,
            metadata=file_metadata(fmt, meta or {}),
            facecolor="white",
            bbox_inches="tight",
            pad_inches=0.08,
        )
    return buf.getvalue()
