"""Plots as PNG files (matplotlib, headless Agg backend, imported only when plotting)."""

from __future__ import annotations

import os
from pathlib import Path

from deepzip._atomic import atomic_path
from deepzip.prune import SensitivityResult

__all__ = ["plot_sensitivity"]


def plot_sensitivity(result: SensitivityResult, path: str | os.PathLike[str]) -> Path:
    """One accuracy-vs-sparsity curve per layer, the unpruned baseline dashed (atomic write)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    xs = [100 * s for s in result.sparsities]
    for name, accs in result.curves.items():
        ax.plot(
            xs,
            [100 * a for a in accs],
            marker="o",
            markersize=3,
            label=f"{name} ({result.weights[name]:,} w)",
        )
    ax.axhline(100 * result.baseline, color="gray", linestyle="--", linewidth=1, label="unpruned")
    ax.set_xlabel("weights pruned in this layer only (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Pruning sensitivity per layer (no retraining)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
