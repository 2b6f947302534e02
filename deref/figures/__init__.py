"""Figures as library functions: every figure the dashboard and the CLI show is built here and
returned as a figure object (plotly for the app, matplotlib for publication files).

Modules by subject: :mod:`~deref.figures.km` (Kaplan–Meier, risk box plots, their tables).
Import names from this package (``from deref.figures import km_figure_plotly``).
"""

from deref.figures.km import *  # noqa: F403
from deref.figures.km import __all__ as _km_all

__all__ = list(_km_all)
