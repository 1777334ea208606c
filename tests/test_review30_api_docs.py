"""The public API against its docstrings: typed errors for wrong inputs, documented results."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.datasets import ImageDataset, TensorLoader
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.prune import mask_dict
from deepzip.quantize import assign_nearest, fisher_diagonal, kmeans_1d
from deepzip.quantize import strip_ as quantize_strip_
from deepzip.runtime import (
    RuntimePolicy,
    benchmark_layers,
    benchmark_model,
    compress_modules_,
    load_compressed,
    runtime_report,
)
from deepzip.runtime.policy import density_threshold


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize(
    ("call", "verb"),
    [
        (lambda m: dz.prune_(m, dz.PruneConfig(sparsity=0.5)), "prune_"),
        (dz.pruning_report, "pruning_report"),
        (mask_dict, "mask_dict"),
        (dz.strip_, "strip_"),
        (lambda m: dz.quantize_(m, dz.QuantizeConfig(bits=2)), "quantize_"),
        (dz.export_shared, "export_shared"),
        (quantize_strip_, "strip_"),
        (lambda m: compress_modules_(m, {}), "compress_modules_"),
    ],
)
@pytest.mark.parametrize("model", [None, {"weight": torch.ones(2, 2)}, "model.safetensors"])
def test_verbs_refuse_a_model_that_is_not_a_module(call, verb, model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=rf"{verb}\(\) takes an nn.Module"):
        call(model)


def test_prune_refuses_another_config_type() -> None:
    model = _mlp()
    with pytest.raises(ConfigError, match=r"prune_.*PruneConfig.*QuantizeConfig"):
        dz.prune_(model, dz.QuantizeConfig())  # type: ignore[arg-type]
    assert dz.pruning_report(model).layers == ()  # nothing changed


def test_quantize_refuses_another_config_type() -> None:
    model = _mlp()
    with pytest.raises(ConfigError, match=r"quantize_.*QuantizeConfig.*PruneConfig"):
        dz.quantize_(model, dz.PruneConfig(sparsity=0.5))  # type: ignore[arg-type]
    assert dz.export_shared(model) == {}


@pytest.mark.parametrize("progress", ["0.5", None, True])
def test_prune_refuses_a_progress_that_is_not_a_number(progress: object) -> None:
    with pytest.raises(ConfigError, match="progress"):
        dz.prune_(_mlp(), dz.PruneConfig(sparsity=0.5), progress=progress)  # type: ignore[arg-type]


def _saved(tmp_path: Path, model: nn.Module) -> Path:
    dz.prune_(model, dz.PruneConfig(sparsity=0.9))
    dz.quantize_(model, dz.QuantizeConfig(bits=3))
    path = tmp_path / "m.dzip"
    dz.save(model, path)
    return path


def test_load_compressed_refuses_a_model_that_is_not_a_module(tmp_path: Path) -> None:
    path = _saved(tmp_path, _mlp())
    with pytest.raises(ConfigError, match=r"load_compressed\(\) takes an nn.Module"):
        load_compressed(path, None)  # type: ignore[arg-type]


class _TwoOutputs(nn.Module):
    """A model returning a tuple of tensors, as many models do (logits, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.a(x)
        return self.b(h), {"hidden": h}


def test_benchmark_model_takes_a_model_with_a_tuple_output(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = _saved(tmp_path, _TwoOutputs())
    x = torch.randn(2, 8)
    policy = RuntimePolicy(mode="sparse")
    timing = benchmark_model(path, _TwoOutputs(), x, repeats=1, warmup=0, policy=policy)
    assert timing.report.sparse == ("a.weight", "b.weight")
    assert 0.0 <= timing.max_abs_difference < 1e-5


@pytest.mark.parametrize("bench", [benchmark_layers, benchmark_model])
def test_benchmarks_refuse_bad_model_and_example_types(
    tmp_path: Path, bench: Callable[..., object]
) -> None:
    path = _saved(tmp_path, _mlp())
    with pytest.raises(ConfigError, match="example_input must be a tensor"):
        bench(path, _mlp(), [[0.0] * 8], repeats=1, warmup=0)
    with pytest.raises(ConfigError, match=rf"{bench.__name__}\(\) takes an nn.Module"):
        bench(path, None, torch.randn(1, 8), repeats=1, warmup=0)


def test_tensor_loader_refuses_zero_dimensional_and_non_tensor_inputs() -> None:
    with pytest.raises(InvalidTensorError, match=r"images must be a tensor.*0-d"):
        TensorLoader(torch.tensor(1.0), torch.tensor(1), 2)
    with pytest.raises(InvalidTensorError, match=r"labels must be a tensor.*list"):
        TensorLoader(torch.zeros(2, 3), [0, 1], 2)  # type: ignore[arg-type]


def test_image_dataset_refuses_non_tensor_inputs() -> None:
    with pytest.raises(InvalidTensorError, match="x/y: images must be a tensor"):
        ImageDataset([[0.0]], torch.zeros(1), "x", "y")  # type: ignore[arg-type]


def test_initial_centroids_raises_as_documented() -> None:
    from deepzip.quantize import initial_centroids

    doc = initial_centroids.__doc__ or ""
    assert "Raises:" in doc
    with pytest.raises(ConfigError, match="distinct"):
        initial_centroids(torch.tensor([1.0, 2.0]), 4)
    with pytest.raises(InvalidTensorError):
        initial_centroids(torch.tensor([1.0, float("nan")]), 1)


def test_fisher_diagonal_restores_each_submodules_own_training_flag() -> None:
    # model.train(was_training) set a BatchNorm the user had frozen in eval mode back to
    # training inside a model in training mode
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    model.train()
    model[1].eval()
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    fisher_diagonal(model, batches)
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_density_threshold_refuses_an_unknown_kind_and_batch_size() -> None:
    # "Linear" (not "linear") silently read the convolution table
    assert density_threshold("linear", 1) != density_threshold("conv", 1)
    with pytest.raises(ConfigError, match="kind must be 'linear' or 'conv', got 'Linear'"):
        density_threshold("Linear", 1)  # type: ignore[arg-type]
    for bad in (0, True, 2.0):
        with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
            density_threshold("conv", bad)  # type: ignore[arg-type]


def test_assign_nearest_refuses_non_finite_centroids() -> None:
    # a NaN centroid passed the "sorted" check and every value got label 1
    values = torch.tensor([-1.0, 0.0, 5.0])
    assert assign_nearest(values, torch.tensor([-1.0, 0.0, 5.0])).tolist() == [0, 1, 2]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InvalidTensorError, match="centroids must be finite"):
            assign_nearest(values, torch.tensor([-1.0, bad, 5.0]))


def test_iterative_prune_refuses_bad_argument_types() -> None:
    # schedule=None raised AttributeError: 'NoneType' object has no attribute 'fractions'
    model = nn.Sequential(nn.Linear(8, 4))
    config, schedule = dz.PruneConfig(sparsity=0.5), dz.ScheduleConfig(steps=(0.5, 1.0))

    def no_retrain(m: nn.Module, i: int) -> None:
        del m, i

    cases: list[tuple[object, object, object, str]] = [
        (model, config, None, "iterative_prune\\(\\) takes a ScheduleConfig, got NoneType"),
        (model, dz.QuantizeConfig(), schedule, "takes a PruneConfig, got QuantizeConfig"),
        ({"w": 1}, config, schedule, "iterative_prune\\(\\) takes an nn.Module, got dict"),
    ]
    for m, c, s, match in cases:
        with pytest.raises(ConfigError, match=match):
            dz.iterative_prune(m, c, s, no_retrain)  # type: ignore[arg-type]
    assert not hasattr(model[0], "parametrizations")


def test_sensitivity_refuses_non_numbers_and_keeps_numpy_sweeps() -> None:
    # ["a"] raised ValueError from float(); suggest("0.1") raised TypeError
    model = nn.Sequential(nn.Linear(8, 4))
    for bad, match in (
        (["a"], "sensitivity sparsity must be a number, got 'a'"),
        ([True], "sensitivity sparsity must be a number, got True"),
        ("0.5", "sparsities must be a sequence of numbers"),
        (0.5, "sparsities must be a sequence of numbers, got float"),
    ):
        with pytest.raises(ConfigError, match=re.escape(match)):
            dz.sensitivity_analysis(model, lambda m: 0.5, sparsities=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"sensitivity_analysis\(\) takes an nn\.Module"):
        dz.sensitivity_analysis(None, lambda m: 0.5)  # type: ignore[arg-type]
    result = dz.sensitivity_analysis(model, lambda m: 0.5, sparsities=np.array([0.25, 0.5]))
    assert result.sparsities == (0.25, 0.5)
    for bad_drop in ("0.1", True, None):
        with pytest.raises(ConfigError, match="max_drop must be a finite number >= 0"):
            result.suggest(bad_drop)  # type: ignore[arg-type]


def test_kmeans_refuses_a_tol_that_is_not_a_number() -> None:
    for bad in ("0", True, None):
        with pytest.raises(ConfigError, match="tol must be a finite number >= 0"):
            kmeans_1d(torch.randn(50), 4, tol=bad)  # type: ignore[arg-type]


def test_load_state_dict_refuses_a_bad_device_before_reading(tmp_path: Path) -> None:
    # device="nodev" raised torch's RuntimeError after the file was read
    path = _saved(tmp_path, _mlp())
    with pytest.raises(ConfigError, match="device 'nodev' is not a valid torch device"):
        dz.load_state_dict(path, device="nodev")
    with pytest.raises(ConfigError, match="device 'meta' holds no data"):
        dz.load_state_dict(path, device="meta")
    state = dz.load_state_dict(path, device="cpu")
    assert {t.device.type for t in state.values()} == {"cpu"}


@pytest.mark.parametrize(
    ("call", "verb"),
    [
        (lambda p: dz.load_model(None, p), "load_model"),  # type: ignore[arg-type]
        (lambda p: dz.load_checkpoint(None, p), "load_checkpoint"),  # type: ignore[arg-type]
        (lambda p: dz.save_checkpoint(None, p), "save_checkpoint"),  # type: ignore[arg-type]
    ],
)
def test_file_verbs_refuse_a_model_that_is_not_a_module(
    tmp_path: Path, call: Callable[[Path], object], verb: str
) -> None:
    # AttributeError: 'NoneType' object has no attribute 'state_dict' / 'named_modules'
    path = tmp_path / ("m.dzip" if verb == "load_model" else "m.safetensors")
    if verb == "load_model":
        dz.save(_mlp(), path)
    elif verb == "load_checkpoint":
        dz.save_checkpoint(_mlp(), path)
    with pytest.raises(ConfigError, match=rf"{verb}\(\) takes an nn\.Module, got NoneType"):
        call(path)
    if verb == "save_checkpoint":
        assert not path.exists()


def test_benchmark_layers_counts_dense_bytes_in_the_weights_dtype(tmp_path: Path) -> None:
    # benchmark_layers said 4 bytes per weight for a float64 model; runtime_report said 8
    model = _mlp().double()
    path = _saved(tmp_path, model)
    timings = benchmark_layers(path, _mlp().double(), torch.randn(2, 8).double(), repeats=1)
    assert [t.dense_bytes for t in timings] == [8 * 8 * 16, 8 * 16 * 4]
    report = runtime_report(load_compressed(path, _mlp().double()))
    assert [layer.dense_bytes for layer in report.layers] == [t.dense_bytes for t in timings]
