"""``deepzip bench FILE.dzip``: per-layer table, model from metadata, JSON, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import deepzip as dz
from deepzip.cli import main
from deepzip.format import save
from deepzip.zoo import create_model


@pytest.fixture(scope="module")
def lenet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """LeNet-300-100 pruned and quantized (untrained), saved with and without its name."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = create_model("lenet-300-100")
    dz.prune_(model, dz.PruneConfig(sparsity=0.92))
    dz.quantize_(model, dz.QuantizeConfig())
    named, anonymous = root / "named.dzip", root / "anonymous.dzip"
    save(model, named, metadata={"deepzip.model": "lenet-300-100"})
    save(model, anonymous)
    return {"named": named, "anonymous": anonymous}


def test_table_names_every_layer(
    lenet_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", str(lenet_files["named"]), "--repeats", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("fc1.weight: dense", "fc2.weight: dense", "fc3.weight: dense", "min_dense_bytes",
                 "whole model: dense", "lenet-300-100", "batch 1"):  # fmt: skip
        assert text in out


def test_json_with_an_explicit_model(
    lenet_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "bench", str(lenet_files["anonymous"]), "--model", "lenet-300-100",
        "--batch", "4", "--repeats", "2", "--json",
    ])  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["batch"] == 4
    layers = {row["name"]: row for row in data["layers"]}
    assert set(layers) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    fc1 = layers["fc1.weight"]
    assert fc1["input_shape"] == [4, 784]
    assert fc1["dense_ms"] > 0
    assert fc1["runtime_ms"] > 0
    assert fc1["runtime_bytes"] * 2 < fc1["dense_bytes"]  # compact arrays + the batch CSR copy
    assert data["model_timing"]["max_abs_difference"] < 1e-4


def test_missing_architecture_is_one_clear_error(
    lenet_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", str(lenet_files["anonymous"]), "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the model architecture" in err
    assert "--model" in err
    assert main(["bench", str(lenet_files["named"]), "--input-shape", "1,x"]) == 2
    assert "--input-shape" in capsys.readouterr().err


@pytest.mark.parametrize("verb", [dz.runtime.benchmark_layers, dz.runtime.benchmark_model])
def test_an_example_without_a_batch_dimension_is_refused(
    lenet_files: dict[str, Path], verb: Callable[..., object]
) -> None:
    with pytest.raises(dz.ConfigError, match="example_input needs a batch dimension"):
        verb(lenet_files["named"], create_model("lenet-300-100"), torch.tensor(1.0))
