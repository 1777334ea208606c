"""Per-layer tables as rich renderables and Markdown (building only; the CLI prints)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from deepzip.prune import PruneReport, StepRecord
from deepzip.quantize import QuantizeReport

__all__ = [
    "markdown_table",
    "prune_table",
    "prune_table_rows",
    "quantize_table",
    "steps_table",
]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def prune_table_rows(report: PruneReport) -> list[list[str]]:
    """Rows ``[layer, type, shape, weights, kept, kept %]`` plus a total row."""
    rows = [
        [
            r.name,
            r.layer_type,
            "×".join(str(d) for d in r.shape),
            f"{r.weights:,}",
            f"{r.kept:,}",
            _pct(r.kept_fraction),
        ]
        for r in report.layers
    ]
    rows.append(
        ["total", "", "", f"{report.weights:,}", f"{report.kept:,}", _pct(report.kept_fraction)]
    )
    return rows


_PRUNE_HEADERS = ["layer", "type", "shape", "weights", "kept", "kept %"]


def prune_table(
    report: PruneReport,
    *,
    acc_before: float | None = None,
    acc_after: float | None = None,
    title: str = "Pruning",
) -> Table:
    """A rich table of the per-layer report, with accuracy before → after in the caption."""
    caption = None
    if acc_before is not None or acc_after is not None:
        caption = f"test accuracy: {_pct(acc_before)} before → {_pct(acc_after)} after"
        if acc_before is not None and acc_after is not None:
            caption += f" ({100 * (acc_after - acc_before):+.2f} points)"
    table = Table(title=title, caption=caption)
    for h in _PRUNE_HEADERS:
        table.add_column(h, justify="left" if h in ("layer", "type", "shape") else "right")
    rows = prune_table_rows(report)
    for row in rows[:-1]:
        table.add_row(*row)
    table.add_row(*rows[-1], style="bold")
    return table


def quantize_table(
    report: QuantizeReport,
    *,
    acc_before: float | None = None,
    acc_clustered: float | None = None,
    acc_finetuned: float | None = None,
    title: str = "Quantization",
) -> Table:
    """Per layer: bits, distinct values, weights kept; accuracy before → clustered → tuned."""
    caption = (
        f"test accuracy: {_pct(acc_before)} before → {_pct(acc_clustered)} clustered → "
        f"{_pct(acc_finetuned)} after fine-tuning the centroids"
    )
    table = Table(title=title, caption=caption)
    for h in ("layer", "type", "bits", "distinct values", "weights", "kept"):
        table.add_column(h, justify="left" if h in ("layer", "type") else "right")
    for layer in report.layers:
        table.add_row(
            layer.name,
            layer.layer_type,
            str(layer.bits),
            str(layer.levels),
            f"{layer.weights:,}",
            f"{layer.kept:,}",
        )
    return table


def steps_table(steps: Sequence[StepRecord]) -> Table:
    """One row per prune → retrain step with validation accuracy."""
    table = Table(title="Prune → retrain steps (validation accuracy)")
    for h in ("step", "progress", "kept %", "after prune", "after retrain"):
        table.add_column(h, justify="right")
    for s in steps:
        table.add_row(
            str(s.step + 1),
            f"{s.progress:.3f}",
            _pct(s.kept_fraction),
            _pct(s.accuracy_after_prune),
            _pct(s.accuracy_after_retrain),
        )
    return table


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
