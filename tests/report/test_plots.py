"""Plots: user text (stage, layer, model names) is drawn as written; no global state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deepzip.errors import ConfigError
from deepzip.report.plots import (
    StagePoint,
    plot_accuracy_vs_ratio,
    plot_quantized_distributions,
    plot_weight_distributions,
)


def test_dollar_signs_in_names_are_not_matplotlib_math(tmp_path: Path) -> None:
    # "$\frac$" is invalid mathtext: drawn as math it fails when the figure is saved
    points = [StagePoint("train", 1.0, 0.9), StagePoint(r"cost $\frac$ stage", 40.0, 0.89)]
    png = plot_accuracy_vs_ratio(points, tmp_path / "a.png", title=r"model $\frac$", baseline=0.9)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_plotting_leaves_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    # a fresh interpreter: the backend is process-wide, and pytest may have chosen one already
    code = f"""
import matplotlib
matplotlib.use("svg")
import numpy as np
from deepzip.report.plots import plot_weight_distributions
plot_weight_distributions({{"w": np.ones(4)}}, {{"w": np.ones(2)}}, {str(tmp_path / "p.png")!r})
print(matplotlib.get_backend())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_of_no_layers_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plot_weight_distributions: no layers to plot"):
        plot_weight_distributions({}, {}, tmp_path / "a.png")
    with pytest.raises(ConfigError, match="plot_quantized_distributions: no layers to plot"):
        plot_quantized_distributions({}, tmp_path / "b.png")
    assert list(tmp_path.iterdir()) == []
