"""Reports: per-layer tables (rich, Markdown, JSON), plots, and a run's HTML report.

``deepzip.report.run`` (the report of a pipeline run) is imported on demand: it sits above
``deepzip.pipeline``.
"""

from __future__ import annotations

from deepzip.report.plots import (
    QuantizedLayerData,
    StagePoint,
    plot_accuracy_vs_ratio,
    plot_bits_per_layer,
    plot_quantized_distributions,
    plot_sensitivity,
    plot_weight_distributions,
)
from deepzip.report.tables import (
    CompressionRow,
    CompressionTable,
    compression_markdown,
    compression_rich_table,
    compression_row,
    compression_table,
    compression_table_rows,
    markdown_table,
    prune_table,
    prune_table_rows,
    quantize_table,
    stage_rows,
    stages_rich_table,
    steps_table,
)

__all__ = [
    "CompressionRow",
    "CompressionTable",
    "QuantizedLayerData",
    "StagePoint",
    "compression_markdown",
    "compression_rich_table",
    "compression_row",
    "compression_table",
    "compression_table_rows",
    "markdown_table",
    "plot_accuracy_vs_ratio",
    "plot_bits_per_layer",
    "plot_quantized_distributions",
    "plot_sensitivity",
    "plot_weight_distributions",
    "prune_table",
    "prune_table_rows",
    "quantize_table",
    "stage_rows",
    "stages_rich_table",
    "steps_table",
]
