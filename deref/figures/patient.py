"""Figures of the dashboard's patient page (plotly)."""

from __future__ import annotations

__all__: list[str] = []
