"""A run's report: every plot drawn, one self-contained HTML page, Markdown and JSON; the page
renders in headless Chromium (skipped without it)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepzip.config import Recipe
from deepzip.pipeline import run_recipe
from deepzip.report.run import build_run_report, write_run_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_toy import toy_data, toy_model

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_report.sh"
PLOTS = ["accuracy_vs_ratio", "bits_per_layer", "weights_pruning", "weights_quantized",
         "sensitivity"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    recipe = Recipe.from_dict(
        {
            "name": "Toy <MLP> & report",
            "stages": [
                {"type": "train", "epochs": 2, "lr": 0.05, "batch_size": 32},
                {"type": "sensitivity", "sparsities": [0.0, 0.5, 0.9]},
                {"type": "prune", "sparsity": 0.7, "schedule": {"kind": "oneshot"},
                 "retrain": {"epochs": 1, "final_epochs": 0, "batch_size": 32}},
                {"type": "quantize", "bits": 3},
                {"type": "finetune", "epochs": 1, "batch_size": 32},
                {"type": "encode"},
            ],
        }
    )  # fmt: skip
    run_recipe(toy_model(), recipe, out, data=toy_data(), device="cpu")
    return out


def test_report_has_every_plot_and_table(run_dir: Path) -> None:
    html_path = write_run_report(run_dir)
    assert html_path == run_dir / "report" / "report.html"
    page = html_path.read_text("utf-8")
    images = re.findall(r'<img alt="([a-z_]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [name for name, _ in images] == PLOTS
    for name, data in images:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert png == (run_dir / "report" / f"{name}.png").read_bytes()
    # self-contained: nothing is fetched from elsewhere
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<title>Toy &lt;MLP&gt; &amp; report</title>" in page
    for text in ("Per-layer compression", "weight bits (P+Q+C)", "1.weight", "4.weight",
                 "total", "header + directory + metadata", "[[stages]]"):  # fmt: skip
        assert text in page
    data = json.loads((run_dir / "report" / "report.json").read_text())
    assert list(data["plots"]) == PLOTS
    assert data["table"]["file_bytes"] == (run_dir / "model.dzip").stat().st_size
    md = (run_dir / "report" / "report.md").read_text()
    assert "![weights_quantized](weights_quantized.png)" in md
    assert "| 6. encode |" in md


def test_notes_say_what_is_missing(tmp_path: Path) -> None:
    recipe = Recipe.from_dict({"stages": [{"type": "quantize", "bits": 2}, {"type": "encode"}]})
    run_recipe(toy_model(), recipe, tmp_path)
    report = build_run_report(tmp_path)
    assert "accuracy_vs_ratio" not in report.plots  # no eval function: no accuracy
    assert list(report.plots) == ["bits_per_layer", "weights_quantized"]
    assert any("no sensitivity curves" in n for n in report.notes)
    assert any("No prune stage" in n for n in report.notes)


@pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium)",
)
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    html_path = write_run_report(run_dir)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(html_path), str(shot), "4000"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"plots rendered: {len(PLOTS)}/{len(PLOTS)}" in proc.stdout
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(header[16:20], "big") == 1280  # the window's width


def test_sensitivity_measured_outside_the_run(tmp_path: Path) -> None:
    from deepzip.prune import SensitivityResult

    recipe = Recipe.from_dict({"stages": [{"type": "quantize", "bits": 2}, {"type": "encode"}]})
    run_recipe(toy_model(), recipe, tmp_path / "run")
    sens = tmp_path / "sens.json"
    SensitivityResult(0.9, (0.0, 0.5), {"1.weight": (0.9, 0.7)}, {"1.weight": 960}).save_json(sens)
    report = build_run_report(tmp_path / "run", tmp_path / "out", sensitivity=sens)
    assert list(report.plots)[-1] == "sensitivity"
    assert report.plots["sensitivity"].read_bytes()[:4] == b"\x89PNG"
    assert not any("sensitivity" in n for n in report.notes)
