"""Figures of the dashboard's cohort page (plotly)."""

from __future__ import annotations

__all__: list[str] = []
