"""``deepzip bench FILE.dzip``: per-layer table, model from metadata, JSON, errors."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

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


def test_an_input_shape_the_model_cannot_take_is_one_clear_error(
    lenet_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", str(lenet_files["named"]), "--input-shape", "3,3", "--repeats", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("deepzip: error: the model's forward pass fails on an example input ")
    assert "shape (1, 3, 3) (batch 1, sample shape 3,3)" in err
    assert "mat1 and mat2 shapes cannot be multiplied" in err


@pytest.mark.parametrize("verb", [dz.runtime.benchmark_layers, dz.runtime.benchmark_model])
def test_an_example_the_model_cannot_take_is_a_config_error(
    lenet_files: dict[str, Path], verb: Callable[..., object]
) -> None:
    with pytest.raises(dz.ConfigError, match=r"example input of shape \(2, 5\)") as info:
        verb(lenet_files["named"], create_model("lenet-300-100"), torch.rand(2, 5), repeats=1)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("verb", [dz.runtime.benchmark_layers, dz.runtime.benchmark_model])
def test_an_example_without_a_batch_dimension_is_refused(
    lenet_files: dict[str, Path], verb: Callable[..., object]
) -> None:
    with pytest.raises(dz.ConfigError, match="example_input needs a batch dimension"):
        verb(lenet_files["named"], create_model("lenet-300-100"), torch.tensor(1.0))


def _saved_model(path: Path, model: nn.Module) -> Path:
    torch.manual_seed(0)
    dz.prune_(model, dz.PruneConfig(sparsity=0.9))
    dz.quantize_(model, dz.QuantizeConfig(bits=4))
    save(model, path)
    return path


def test_children_of_weight_reading_parents_get_no_runtime_form(tmp_path: Path) -> None:
    def make() -> nn.Module:
        torch.manual_seed(1)
        return nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    path = _saved_model(tmp_path / "encoder.dzip", make())
    forced = dz.runtime.RuntimePolicy(mode="sparse")
    x = torch.randn(2, 5, 16)
    timings = dz.runtime.benchmark_layers(path, make(), x, repeats=1, warmup=0, policy=forced)
    rows = {t.name: t for t in timings}
    for name in ("linear1.weight", "linear2.weight"):
        assert rows[name].dense_ms is not None  # called by the layer's forward
        assert rows[name].runtime_ms is None
        assert rows[name].policy_form == "dense"
        assert "child of TransformerEncoderLayer" in rows[name].note
        assert "child of TransformerEncoderLayer" in rows[name].policy_reason


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_runtime_modules_are_timed_on_the_device_of_their_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No CUDA here: a model on the meta device stands in for one on a GPU (no bias, which
    # from_shared would copy to the CPU); the timing itself is faked, as meta tensors hold
    # no data to multiply.
    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 8, bias=False))

    path = _saved_model(tmp_path / "mlp.dzip", make())
    devices: list[set[torch.device]] = []

    def fake_medians(
        fns: list[functools.partial[object]], *, repeats: int, warmup: int, device: torch.device
    ) -> list[list[float]]:
        assert device == torch.device("meta")  # synchronized there (were it CUDA)
        for fn in fns:
            module = fn.func
            assert isinstance(module, nn.Module)
            tensors = [*module.parameters(), *module.buffers()]
            devices.append({t.device for t in tensors} | {fn.args[0].device})
        return [[1.0] for _ in fns]

    monkeypatch.setattr(dz.runtime.bench, "interleaved_medians", fake_medians)
    # loading into a meta model is refused (it would do nothing); the dense reference is
    # not what this test times, so it is the meta model itself
    monkeypatch.setattr(dz.runtime.bench, "load_model", lambda model, path: model)
    model = make().to("meta")
    timings = dz.runtime.benchmark_layers(path, model, torch.zeros(2, 64, device="meta"))
    assert [t.runtime_ms for t in timings] == [1.0, 1.0]  # both runtime modules were timed
    assert devices == [{torch.device("meta")}] * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_times_every_layer(lenet_files: dict[str, Path]) -> None:
    model = create_model("lenet-300-100").to("cuda")
    x = torch.randn(8, 784, device="cuda")
    timings = dz.runtime.benchmark_layers(lenet_files["named"], model, x, repeats=2, warmup=1)
    assert all(t.runtime_ms is not None and t.runtime_ms > 0 for t in timings)


def test_a_module_registered_twice_is_timed_once(tmp_path: Path) -> None:
    # its second name (an alias in the file) got a second row timing the same module
    from deepzip.runtime.bench import benchmark_layers

    torch.manual_seed(0)
    lin = nn.Linear(32, 32)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    dz.prune_(model, dz.PruneConfig(sparsity=0.9))
    dz.quantize_(model, dz.QuantizeConfig(bits=4))
    save(model, tmp_path / "m.dzip")
    fresh = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
    fresh.append(fresh[0])
    rows = benchmark_layers(tmp_path / "m.dzip", fresh, torch.randn(2, 32), repeats=1, warmup=0)
    assert [r.name for r in rows] == ["0.weight"]
