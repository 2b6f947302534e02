"""Figures as library functions: every figure the dashboard and the CLI show is built here and
returned as a figure object (plotly for the app, matplotlib for publication files).

Modules by subject: :mod:`~deref.figures.style` (palette, captions, p-values),
:mod:`~deref.figures.export` (PNG / SVG / PDF files with metadata),
:mod:`~deref.figures.km` (Kaplan–Meier, risk box plots, their tables),
:mod:`~deref.figures.patient`, :mod:`~deref.figures.model`, :mod:`~deref.figures.attention`,
:mod:`~deref.figures.cohort`, :mod:`~deref.figures.mri` (the MRI viewer),
:mod:`~deref.figures.compare` (runs side by side: forest plot, Table III). Import names from this package
(``from deref.figures import km_figure_plotly``); each module lists its public names in
``__all__``, and this package re-exports them all.
"""

from deref.figures import attention, cohort, compare, export, km, model, mri, patient, style
from deref.figures.attention import *  # noqa: F403
from deref.figures.cohort import *  # noqa: F403
from deref.figures.compare import *  # noqa: F403
from deref.figures.export import *  # noqa: F403
from deref.figures.km import *  # noqa: F403
from deref.figures.model import *  # noqa: F403
from deref.figures.mri import *  # noqa: F403
from deref.figures.patient import *  # noqa: F403
from deref.figures.style import *  # noqa: F403

__all__ = [
    *style.__all__,
    *export.__all__,
    *km.__all__,
    *patient.__all__,
    *model.__all__,
    *attention.__all__,
    *cohort.__all__,
    *mri.__all__,
    *compare.__all__,
]
