from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from deepzip import ConfigError, PruneConfig, ScheduleConfig, iterative_prune, sensitivity_analysis
from deepzip.config import QuantizeConfig, SLQConfig
from deepzip.prune import scale_dropout_
from deepzip.quantize import quantize_
from deepzip.quantize.incremental import slq_
from deepzip.report import plot_sensitivity


def _accuracy(x: torch.Tensor, y: torch.Tensor):  # type: ignore[no-untyped-def]
    def evaluate(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    return evaluate


def _train(x: torch.Tensor, y: torch.Tensor, epochs: int = 60):  # type: ignore[no-untyped-def]
    def retrain(model: nn.Module, step: int) -> None:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(epochs):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    return retrain


def test_iterative_prune_follows_schedule_and_recovers(
    mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = blobs
    _train(x, y, 100)(mlp, -1)
    dense = _accuracy(x, y)(mlp)
    calls: list[int] = []

    def retrain(model: nn.Module, step: int) -> None:
        calls.append(step)
        _train(x, y)(model, step)

    report, steps = iterative_prune(
        mlp,
        PruneConfig(sparsity=0.9),
        ScheduleConfig(steps=(0.5, 0.8, 1.0)),
        retrain,
        evaluate=_accuracy(x, y),
    )
    assert calls == [0, 1, 2]
    # per layer round(s * n) weights go; 1280 + 256 weights in all
    expected = [
        (1280 - round(1280 * 0.9 * f) + 256 - round(256 * 0.9 * f)) / 1536 for f in (0.5, 0.8, 1.0)
    ]
    assert [s.kept_fraction for s in steps] == pytest.approx(expected)
    assert report.kept_fraction == pytest.approx(expected[-1])
    assert steps[-1].accuracy_after_retrain is not None
    assert steps[-1].accuracy_after_retrain >= dense - 0.02


def test_dropout_scaled_by_sqrt_kept_not_compounding(mlp: nn.Module) -> None:
    changed = scale_dropout_(mlp, {"0.weight": 0.25, "3.weight": 0.5})
    assert changed == {"2": pytest.approx(0.5 * math.sqrt(0.25))}
    scale_dropout_(mlp, {"0.weight": 0.09, "3.weight": 0.5})
    assert mlp[2].p == pytest.approx(0.5 * 0.3)


def test_sensitivity_restores_model_and_writes_outputs(
    mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = blobs
    _train(x, y, 100)(mlp, -1)
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    result = sensitivity_analysis(mlp, _accuracy(x, y), sparsities=(0.0, 0.5, 0.99))
    for k, v in mlp.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert set(result.curves) == {"0.weight", "3.weight"}
    assert result.curves["0.weight"][0] == pytest.approx(result.baseline)
    assert result.curves["3.weight"][2] < result.baseline
    assert result.suggest(max_drop=0.0)["3.weight"] < 0.99
    result.save_json(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["layers"]["0.weight"]["weights"] == 20 * 64
    png = plot_sensitivity(result, tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sensitivity_rejects_bad_sweep(mlp: nn.Module) -> None:
    with pytest.raises(ConfigError, match=r"in \[0, 1\), got 1.0"):
        sensitivity_analysis(mlp, lambda m: 0.0, sparsities=(0.5, 1.0))


@pytest.mark.parametrize("how", ["quantize", "slq-unfinished"])
def test_sensitivity_refuses_quantized_layers(mlp: nn.Module, how: str) -> None:
    if how == "quantize":
        quantize_(mlp, QuantizeConfig(bits=3, include=("3",)))
    else:

        def interrupted(model: nn.Module, step: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            slq_(mlp, SLQConfig(bits=2, include=("3",)), interrupted)
    calls: list[nn.Module] = []

    def evaluate(model: nn.Module) -> float:
        calls.append(model)
        return 0.0

    with pytest.raises(ConfigError, match=r"^3\.weight is quantized \(\w+\)"):
        sensitivity_analysis(mlp, evaluate, sparsities=(0.0, 0.9))
    assert calls == []  # refused before any evaluation
    assert set(sensitivity_analysis(mlp, evaluate, exclude=("3",)).curves) == {"0.weight"}
