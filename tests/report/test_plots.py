"""Plots: user text (stage, layer, model names) is drawn as written."""

from __future__ import annotations

from pathlib import Path

from deepzip.report.plots import StagePoint, plot_accuracy_vs_ratio


def test_dollar_signs_in_names_are_not_matplotlib_math(tmp_path: Path) -> None:
    # "$\frac$" is invalid mathtext: drawn as math it fails when the figure is saved
    points = [StagePoint("train", 1.0, 0.9), StagePoint(r"cost $\frac$ stage", 40.0, 0.89)]
    png = plot_accuracy_vs_ratio(points, tmp_path / "a.png", title=r"model $\frac$", baseline=0.9)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
