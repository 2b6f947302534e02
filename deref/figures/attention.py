"""Figures of the dashboard's attention page (plotly)."""

from __future__ import annotations

__all__: list[str] = []
