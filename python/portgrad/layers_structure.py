"""Layers that combine, reshape and reduce arrays: catenation, threading, totals, aggregation, parts, transposes."""
from __future__ import annotations

__all__: list = []
