"""Figures of the dashboard's model page (plotly)."""

from __future__ import annotations

__all__: list[str] = []
