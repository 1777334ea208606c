"""Reports: per-layer tables and plots."""

from __future__ import annotations

from deepzip.report.plots import plot_sensitivity
from deepzip.report.tables import (
    markdown_table,
    prune_table,
    prune_table_rows,
    quantize_table,
    steps_table,
)

__all__ = [
    "markdown_table",
    "plot_sensitivity",
    "prune_table",
    "prune_table_rows",
    "quantize_table",
    "steps_table",
]
