"""Regression tests from review 29 of the runtime: each failed before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.format import save
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime import (
    Backend,
    RuntimeOverride,
    RuntimePolicy,
    SparseConv,
    SparseLinear,
    benchmark_layers,
    benchmark_model,
    compress_modules_,
    load_compressed,
    runtime_report,
)
from deepzip.runtime.timing import interleaved_medians, median_ms

BACKENDS: tuple[Backend, ...] = ("numba", "torch")


def _shared(
    shape: tuple[int, ...], density: float = 0.5, k: int = 8, seed: int = 0
) -> SharedTensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < density
    indices = (torch.randint(0, k, shape, generator=g) * mask).to(torch.uint8)
    return SharedTensor(torch.sort(torch.randn(k, generator=g)).values, indices, mask)


def _compressed(model: nn.Module, path: Path) -> Path:
    dz.prune_(model, dz.PruneConfig(sparsity=0.9))
    dz.quantize_(model, dz.QuantizeConfig())
    save(model, path)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [torch.zeros(3), torch.zeros(8, 1)])
def test_a_conv_bias_of_the_wrong_shape_is_refused(backend: Backend, bias: torch.Tensor) -> None:
    # the numba kernel read past a short bias (no bounds check): garbage in the output
    conv = nn.Conv2d(3, 8, 3)
    shared = _shared(tuple(conv.weight.shape))
    with pytest.raises(InvalidTensorError, match=r"c1: bias has shape"):
        SparseConv.from_conv(conv, shared, bias=bias, name="c1", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_inputs_that_are_not_real_floats_are_refused_not_truncated(
    backend: Backend, dtype: torch.dtype
) -> None:
    # the float32 product was cast back to the input's dtype: integers truncated silently
    linear = SparseLinear.from_shared(_shared((4, 6)), name="fc", backend=backend)
    with pytest.raises(InvalidTensorError, match=r"fc: expected a floating-point input"):
        linear(torch.ones(2, 6, dtype=dtype))
    conv = nn.Conv1d(2, 3, 3)
    sparse = SparseConv.from_conv(
        conv, _shared(tuple(conv.weight.shape)), name="c", backend=backend
    )
    with pytest.raises(InvalidTensorError, match=r"c: expected a floating-point input"):
        sparse(torch.ones(1, 2, 5, dtype=dtype))


def test_device_errors_name_the_layer() -> None:
    linear = SparseLinear.from_shared(_shared((4, 6)), name="fc1")
    with pytest.raises(InvalidTensorError, match=r"^fc1: the input is on meta"):
        linear(torch.randn(2, 6, device="meta"))
    numba = SparseLinear.from_shared(_shared((4, 6)), name="fc2", backend="numba").to("meta")
    with pytest.raises(InvalidTensorError, match=r"^fc2: the numba backend runs on the CPU"):
        numba(torch.randn(2, 6, device="meta"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_layer_of_no_output_features_passes_a_gradient(backend: Backend) -> None:
    # the backward pass reshaped the gradient to (0, -1), which torch refuses
    layer = SparseLinear.from_shared(_shared((0, 5)), backend=backend)
    x = torch.randn(3, 5, requires_grad=True)
    y = layer(x)
    assert y.shape == (3, 0)
    (y.sum() + x.sum()).backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.ones(3, 5))


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def test_benchmark_model_on_an_empty_batch(tmp_path: Path) -> None:
    # the largest difference of two empty outputs raised a bare RuntimeError
    torch.manual_seed(0)
    path = _compressed(_mlp(), tmp_path / "m.dzip")
    timing = benchmark_model(
        path, _mlp(), torch.randn(0, 32), repeats=1, warmup=0, policy=RuntimePolicy(mode="sparse")
    )
    assert timing.max_abs_difference == 0.0
    assert timing.report.sparse == ("0.weight", "2.weight")


def test_the_report_names_the_layers_class_not_its_parametrized_one() -> None:
    torch.manual_seed(0)
    model = _mlp()
    dz.prune_(model, dz.PruneConfig(sparsity=0.9))
    dz.quantize_(model, dz.QuantizeConfig())
    report = compress_modules_(
        model,
        dz.export_shared(model),
        policy=RuntimePolicy(overrides=(RuntimeOverride("0", "sparse"),)),
    )
    assert [(layer.layer_type, layer.form) for layer in report.layers] == [
        ("Linear", "sparse"),
        ("Linear", "dense"),
    ]


def test_benchmark_layers_reports_the_form_load_compressed_gives(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # the model itself is the layer: load_compressed decodes it dense
    root = _compressed(nn.Linear(32, 16), tmp_path / "root.dzip")
    sparse = RuntimePolicy(mode="sparse")
    loaded = runtime_report(load_compressed(root, nn.Linear(32, 16), policy=sparse)).layers
    (timed,) = benchmark_layers(
        root, nn.Linear(32, 16), torch.randn(2, 32), repeats=1, policy=sparse
    )
    assert (
        (timed.policy_form, timed.policy_reason)
        == (loaded[0].form, loaded[0].reason)
        == (
            "dense",
            "the model itself is the layer: a runtime module cannot replace it",
        )
    )

    # one module under two names: an override on the second name decides for both
    def tied() -> nn.Sequential:
        linear = nn.Linear(16, 16)
        return nn.Sequential(linear, nn.ReLU(), linear)

    path = _compressed(tied(), tmp_path / "tied.dzip")
    policy = RuntimePolicy(mode="sparse", overrides=(RuntimeOverride("2", "dense"),))
    (layer,) = runtime_report(load_compressed(path, tied(), policy=policy)).layers
    (timed,) = benchmark_layers(path, tied(), torch.randn(2, 16), repeats=1, policy=policy)
    assert (timed.policy_form, timed.policy_reason) == (layer.form, layer.reason)
    assert layer.form == "dense"


class _Unused(nn.Module):
    """A compressed layer the forward pass never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"repeats": 2.5}, "repeats must be an integer"),
        ({"repeats": True}, "repeats must be an integer"),
        ({"warmup": 1.5}, "warmup must be an integer"),
        ({"warmup": -1}, "warmup must be >= 0"),
    ],
)
def test_repetition_counts_are_config_errors(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    # a float raised TypeError; with no layer timed, a bad count passed silently
    with pytest.raises(ConfigError, match=match):
        interleaved_medians([lambda: None], **{"repeats": 1, **kwargs})  # type: ignore[arg-type]
    torch.manual_seed(0)
    path = _compressed(_Unused(), tmp_path / "u.dzip")
    with pytest.raises(ConfigError, match=match):
        benchmark_layers(path, _Unused(), torch.randn(2, 16), **kwargs)  # type: ignore[arg-type]


def test_the_median_of_no_times_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nothing was timed"):
        median_ms([])
    assert median_ms([3.0, 1.0, 2.0]) == 2.0
