"""Plots as PNG files (matplotlib, headless Agg backend, imported only when plotting).

Every function draws one figure and writes it atomically; none keeps global pyplot state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from deepzip._atomic import atomic_path
from deepzip.errors import ConfigError
from deepzip.prune import SensitivityResult
from deepzip.report.tables import CompressionTable

__all__ = [
    "QuantizedLayerData",
    "StagePoint",
    "plot_accuracy_vs_ratio",
    "plot_bits_per_layer",
    "plot_quantized_distributions",
    "plot_sensitivity",
    "plot_weight_distributions",
]

_FloatArray = NDArray[np.float32]


def _figure(width: float, height: float) -> Any:
    # a bare Figure renders with Agg through savefig: the caller's pyplot backend is untouched
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _text(s: str) -> str:
    """User text (layer, stage, model names) as written: a ``$`` would start matplotlib math."""
    return s.replace("$", r"\$")


def _grid(n: int, what: str) -> tuple[int, int]:
    if n == 0:
        raise ConfigError(f"{what}: no layers to plot")
    cols = min(n, 2) if n <= 4 else 3
    return math.ceil(n / cols), cols


def plot_sensitivity(result: SensitivityResult, path: str | os.PathLike[str]) -> Path:
    """One accuracy-vs-sparsity curve per layer, the unpruned baseline dashed (atomic write)."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    xs = [100 * s for s in result.sparsities]
    for name, accs in result.curves.items():
        ax.plot(
            xs,
            [100 * a for a in accs],
            marker="o",
            markersize=3,
            label=_text(f"{name} ({result.weights[name]:,} w)"),
        )
    ax.axhline(100 * result.baseline, color="gray", linestyle="--", linewidth=1, label="unpruned")
    ax.set_xlabel("weights pruned in this layer only (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Pruning sensitivity per layer (no retraining)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_weight_distributions(
    before: Mapping[str, _FloatArray],
    after: Mapping[str, _FloatArray],
    path: str | os.PathLike[str],
) -> Path:
    """Per layer: the weights before pruning and the surviving weights after (histograms).

    Args:
        before: ``{layer: all weights}`` of the dense model.
        after: ``{layer: surviving (non-zero) weights}`` after pruning and retraining.
        path: the PNG to write.
    """
    names = list(before)
    rows, cols = _grid(len(names), "plot_weight_distributions")
    fig = _figure(5.2 * cols, 3.3 * rows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        dense, dense_note = _finite(before[name])
        kept, kept_note = _finite(after.get(name, np.zeros(0)))
        lo, hi = _range(dense, kept)
        bins = np.linspace(lo, hi, 121)
        ax.hist(
            dense,
            bins=bins,
            color="0.6",
            alpha=0.8,
            histtype="stepfilled",
            label=f"before pruning ({dense_note})",
        )
        ax.hist(
            kept,
            bins=bins,
            color="tab:blue",
            alpha=0.8,
            histtype="stepfilled",
            label=f"kept ({kept_note})",
        )
        ax.set_yscale("log")
        ax.set_title(_text(name), fontsize=10)
        ax.set_xlabel("weight value")
        ax.set_ylabel("count (log)")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Weight distribution before and after pruning (with retraining)", fontsize=11)
    return _save(fig, path)


def _finite(values: NDArray[Any]) -> tuple[NDArray[np.float64], str]:
    """The finite values, flat, and a legend count (``"n"``, or ``"n, m not finite"``).

    One NaN or infinity would make every histogram bin non-finite and the plot empty.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    finite = flat[np.isfinite(flat)]
    bad = flat.size - finite.size
    return finite, f"{flat.size:,}" + (f", {bad:,} not finite" if bad else "")


def _range(*arrays: NDArray[np.float64]) -> tuple[float, float]:
    """The finite values' range (``(-1, 1)`` without any, widened when it is one point)."""
    values = [a[np.isfinite(a)] for a in arrays]
    values = [a for a in values if a.size]
    if not values:
        return -1.0, 1.0
    lo = min(float(a.min()) for a in values)
    hi = max(float(a.max()) for a in values)
    if lo == hi:
        return lo - 1.0, hi + 1.0
    return lo, hi


@dataclass(frozen=True)
class QuantizedLayerData:
    """What the quantization plot shows for one layer.

    Attributes:
        weights: the surviving weights before quantization.
        clustered: the codebook right after clustering.
        finetuned: the codebook at the end (after fine-tuning), or ``None``.
        counts: members per cluster.
        bits: bits per index.
    """

    weights: _FloatArray
    clustered: _FloatArray
    finetuned: _FloatArray | None
    counts: NDArray[np.int64]
    bits: int | None = None


def plot_quantized_distributions(
    layers: Mapping[str, QuantizedLayerData], path: str | os.PathLike[str]
) -> Path:
    """Per layer: the weights being quantized, with the centroids marked.

    The histogram is the surviving weights before quantization; crosses mark the centroids
    after clustering (at their cluster's size), red lines those after fine-tuning.
    """
    names = list(layers)
    rows, cols = _grid(len(names), "plot_quantized_distributions")
    fig = _figure(5.2 * cols, 3.3 * rows)
    for i, name in enumerate(names):
        data = layers[name]
        ax = fig.add_subplot(rows, cols, i + 1)
        w, w_note = _finite(data.weights)
        lo, hi = _range(w, np.asarray(data.clustered, dtype=np.float64).ravel())
        ax.hist(
            w,
            bins=np.linspace(lo, hi, 121),
            color="0.65",
            histtype="stepfilled",
            label=f"weights ({w_note})",
        )
        counts = np.asarray(data.counts, dtype=np.float64)
        ax.plot(
            np.asarray(data.clustered, dtype=np.float64),
            counts / max(1.0, float(np.max(counts, initial=1.0))) * _peak(w, lo, hi),
            "x",
            color="tab:blue",
            markersize=6,
            label=f"centroids after clustering (k={len(data.clustered)})",
        )
        if data.finetuned is not None:
            for j, c in enumerate(np.asarray(data.finetuned, dtype=np.float64)):
                ax.axvline(
                    c,
                    color="tab:red",
                    linewidth=0.7,
                    alpha=0.8,
                    label="centroids after fine-tuning" if j == 0 else None,
                )
        bits = f", {data.bits} bits" if data.bits is not None else ""
        ax.set_title(_text(f"{name}{bits}"), fontsize=10)
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Weight sharing: distribution and centroids", fontsize=11)
    return _save(fig, path)


def _peak(w: NDArray[np.float64], lo: float, hi: float) -> float:
    if not w.size:
        return 1.0
    counts, _ = np.histogram(w, bins=np.linspace(lo, hi, 121))
    return float(counts.max()) or 1.0


@dataclass(frozen=True)
class StagePoint:
    """One stage on the accuracy-vs-ratio plot."""

    label: str
    ratio: float
    accuracy: float


def plot_accuracy_vs_ratio(
    points: Sequence[StagePoint],
    path: str | os.PathLike[str],
    *,
    baseline: float | None = None,
    baseline_label: str = "dense",
    title: str = "Accuracy vs compression ratio across the stages",
    ylabel: str = "test accuracy (%)",
) -> Path:
    """Accuracy against the real ``.dzip`` ratio after each stage, in stage order.

    Labels, ``baseline_label``, ``title`` and ``ylabel`` are shown as written (a ``$`` does
    not start matplotlib math).
    """
    fig = _figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    xs = [p.ratio for p in points]
    ys = [100 * p.accuracy for p in points]
    ax.plot(xs, ys, "-o", color="tab:blue", markersize=5)
    for i, (p, x, y) in enumerate(zip(points, xs, ys, strict=True)):
        # stages that leave the size unchanged sit on one point: stagger their labels
        same = sum(1 for q in points[:i] if abs(q.ratio - p.ratio) < 1e-9 * max(1.0, p.ratio))
        ax.annotate(
            _text(p.label),
            (x, y),
            textcoords="offset points",
            xytext=(6, 6 - 11 * same),
            fontsize=8,
        )
    if baseline is not None:
        ax.axhline(
            100 * baseline, color="gray", linestyle="--", linewidth=1, label=_text(baseline_label)
        )
        ax.axhline(
            100 * baseline - 0.3,
            color="tab:red",
            linestyle=":",
            linewidth=1,
            label=_text(f"{baseline_label} − 0.3"),
        )
        ax.legend(fontsize=8, loc="lower left")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (float32 bytes / .dzip bytes, log scale)")
    ax.set_ylabel(_text(ylabel))
    ax.set_title(_text(title))
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_bits_per_layer(table: CompressionTable, path: str | os.PathLike[str]) -> Path:
    """Per layer: weight and index bits per stored entry, fixed-width vs in the file."""
    fig = _figure(max(6.0, 1.6 * len(table.layers) + 2), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    names = [r.name for r in table.layers]
    x = np.arange(len(names), dtype=np.float64)
    width = 0.2
    series = [
        ("weight bits, fixed (P+Q)", [r.weight_bits_fixed for r in table.layers], "#9ecae1"),
        ("weight bits, coded (P+Q+C)", [r.weight_bits_coded for r in table.layers], "#3182bd"),
        ("index bits, fixed (P+Q)", [r.index_bits_fixed or 0 for r in table.layers], "#fdae6b"),
        ("index bits, coded (P+Q+C)", [r.index_bits_coded or 0 for r in table.layers], "#e6550d"),
    ]
    for j, (label, values, color) in enumerate(series):
        bars = ax.bar(x + (j - 1.5) * width, values, width, label=label, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, [_text(n) for n in names], fontsize=9)
    ax.set_ylabel("bits per stored entry")
    ax.set_title(f"Bits per layer (file ratio {table.ratio:.1f}×)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)
