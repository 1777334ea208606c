"""Regression tests from a review of the runtime: each failed before its fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from runtime_helpers import make_shared
from torch import nn

import deepzip as dz
from deepzip.format import save
from deepzip.format.api import load_model
from deepzip.format.dzip_writer import DzipWriter
from deepzip.runtime import (
    Backend,
    RuntimePolicy,
    SparseConv,
    SparseLinear,
    benchmark_layers,
    compress_modules_,
    decide,
    load_compressed,
)


@pytest.mark.parametrize("bias_first", [False, True])
def test_a_quantized_bias_reaches_the_sparse_layer_whatever_the_order(bias_first: bool) -> None:
    weight = make_shared((4, 6), 0.5)
    bias = make_shared((4,), 1.0, k=4, seed=1)
    items = [("0.weight", weight), ("0.bias", bias)]
    model = nn.Sequential(nn.Linear(6, 4))
    compress_modules_(
        model, dict(reversed(items) if bias_first else items), policy=RuntimePolicy(mode="sparse")
    )
    assert isinstance(model[0], SparseLinear)
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), x @ weight.dense().t() + bias.dense())


def test_load_compressed_uses_the_files_quantized_conv_bias(tmp_path: Path) -> None:
    path = tmp_path / "conv.dzip"
    weight = make_shared((4, 2, 3, 3), 0.4)
    bias = make_shared((4,), 1.0, k=4, seed=1)
    with DzipWriter(path) as writer:
        writer.add_shared("0.weight", weight)
        writer.add_shared("0.bias", bias)
    dense = load_model(nn.Sequential(nn.Conv2d(2, 4, 3)), path)
    model = nn.Sequential(nn.Conv2d(2, 4, 3))
    load_compressed(path, model, policy=RuntimePolicy(mode="sparse"))
    assert isinstance(model[0], SparseConv)
    x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x))


@pytest.mark.parametrize("backend", ["auto", "numba", "torch"])
def test_a_runtime_module_deep_copies_after_a_batch(backend: Backend) -> None:
    shared = make_shared((6, 5), 0.5)
    module = SparseLinear.from_shared(shared, torch.randn(6), backend=backend)
    x = torch.randn(3, 5)
    expected = module(x)
    module(x[0])
    clone = copy.deepcopy(module)  # the float CSR copy of a batch cannot be deep-copied
    assert clone.cache_nbytes == 0
    torch.testing.assert_close(clone(x), expected)
    torch.testing.assert_close(module(x), expected)


def test_a_linear_layer_of_no_input_features_gives_its_bias() -> None:
    shared = make_shared((4, 0), 0.5)
    bias = torch.randn(4)
    backends: tuple[Backend, ...] = ("auto", "numba", "torch")
    for backend in backends:
        module = SparseLinear.from_shared(shared, bias, backend=backend)
        for batch in (1, 3):
            torch.testing.assert_close(module(torch.randn(batch, 0)), bias.expand(batch, 4))
        torch.testing.assert_close(module(torch.randn(0)), bias)


def test_the_policy_reason_does_not_round_the_comparison_away() -> None:
    policy = RuntimePolicy(linear_max_density=0.015, min_dense_bytes=0)
    reason = decide(policy, "fc", "fc.weight", nn.Linear(4, 4), "weight", 0.0152, 16).reason
    assert "1.52% > 1.5%" in reason
    default = RuntimePolicy(min_dense_bytes=0)
    reason = decide(default, "fc", "fc.weight", nn.Linear(4, 4), "weight", 0.2504, 16).reason
    assert "25.04% > 25%" in reason


def test_benchmark_layers_times_the_policys_backend(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    dz.prune_(model, dz.PruneConfig(sparsity=0.9))
    dz.quantize_(model, dz.QuantizeConfig())
    path = tmp_path / "l.dzip"
    save(model, path)
    x = torch.randn(8, 64)
    numba = RuntimePolicy(batch_size=8, mode="sparse", backend="numba")
    (timing,) = benchmark_layers(path, nn.Sequential(nn.Linear(64, 32)), x, repeats=1, policy=numba)
    # the numba backend multiplies a batch on the compact arrays: no float CSR copy is built
    runtime = SparseLinear.from_shared(dz.export_shared(model)["0.weight"])
    assert timing.runtime_bytes == runtime.weight_nbytes
