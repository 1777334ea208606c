"""SparseLinear against F.linear on the decoded weight: every batch shape, both backends."""

from __future__ import annotations

import pytest
import torch
from runtime_helpers import make_shared
from torch.nn import functional as F

from deepzip.errors import InvalidTensorError
from deepzip.runtime import SparseLinear

BACKENDS = ("numba", "torch")


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 2, 7, 8, 64, 300])
def test_matches_dense_decoding(backend: str, batch: int) -> None:
    shared = make_shared((96, 300), 0.1, k=32, seed=batch)
    bias = torch.randn(96, generator=torch.Generator().manual_seed(1))
    layer = SparseLinear.from_shared(shared, bias, backend=backend).eval()  # type: ignore[arg-type]
    x = torch.randn(batch, 300, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        _close(layer(x), F.linear(x, shared.dense(), bias))


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dimensions_dtype_and_no_bias(backend: str) -> None:
    shared = make_shared((10, 33), 0.3, k=4, seed=3)
    layer = SparseLinear.from_shared(shared, None, backend=backend)  # type: ignore[arg-type]
    x = torch.randn(2, 5, 33, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (2, 5, 10)
    assert y.dtype == torch.float64
    _close(y, F.linear(x, shared.dense().double()))
    assert layer(torch.randn(33)).shape == (10,)
    assert layer(torch.randn(0, 33)).shape == (0, 10)


def test_wide_layer_with_32_bit_columns() -> None:
    shared = make_shared((5, 70_000), 0.01, k=16, seed=4)
    layer = SparseLinear.from_shared(shared)
    assert layer.cols.dtype == torch.int32
    x = torch.randn(3, 70_000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _close(layer(x), F.linear(x, shared.dense()))
        _close(layer(x[:1]), F.linear(x[:1], shared.dense()))


def test_all_pruned_layer_returns_the_bias() -> None:
    shared = make_shared((4, 9), 0.0)
    bias = torch.arange(4, dtype=torch.float32)
    layer = SparseLinear.from_shared(shared, bias)
    with torch.no_grad():
        assert torch.equal(layer(torch.randn(3, 9)), bias.expand(3, 4))
        assert torch.equal(layer(torch.randn(1, 9)), bias.expand(1, 4))


def test_gradient_flows_to_the_input_only() -> None:
    shared = make_shared((12, 40), 0.2, seed=5)
    bias = torch.randn(12)
    layer = SparseLinear.from_shared(shared, bias)
    x = torch.randn(6, 40, requires_grad=True)
    (layer(x) ** 2).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (F.linear(x_ref, shared.dense(), bias) ** 2).sum().backward()
    assert x.grad is not None
    assert x_ref.grad is not None
    _close(x.grad, x_ref.grad)
    assert layer.bias is not None
    assert not layer.bias.requires_grad


def test_wrong_input_width_names_the_layer() -> None:
    layer = SparseLinear.from_shared(make_shared((4, 9), 0.5), name="head.weight")
    with pytest.raises(InvalidTensorError, match=r"head\.weight.*\(\*, 9\)"):
        layer(torch.randn(2, 8))


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(InvalidTensorError, match="must be 2-D"):
        SparseLinear.from_shared(make_shared((2, 3, 4), 0.5), name="w")
    with pytest.raises(InvalidTensorError, match="bias has shape"):
        SparseLinear.from_shared(make_shared((2, 3), 0.5), torch.zeros(3))


def test_buffers_follow_to_and_state_dict() -> None:
    layer = SparseLinear.from_shared(make_shared((8, 20), 0.4), torch.zeros(8))
    names = set(layer.state_dict())
    assert {"row_ptr", "block_code", "cols", "codebook"} <= names
    assert "bias" in names
    layer.to(torch.float64)  # float buffers change dtype; the product still runs in float32
    with torch.no_grad():
        y = layer(torch.randn(2, 20, dtype=torch.float64))
    assert y.dtype == torch.float64
    assert layer.in_features == 20
    assert layer.out_features == 8
    assert "density=" in repr(layer)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_cuda_matches_dense_decoding(batch: int) -> None:
    shared = make_shared((256, 512), 0.09, seed=6)
    bias = torch.randn(256)
    layer = SparseLinear.from_shared(shared, bias).to("cuda")
    x = torch.randn(batch, 512, device="cuda")
    with torch.inference_mode():
        y = layer(x)
    assert y.is_cuda
    _close(y.cpu(), F.linear(x.cpu(), shared.dense(), bias))
    with pytest.raises(InvalidTensorError, match="CPU only"):
        SparseLinear.from_shared(shared, backend="numba").to("cuda")(x)


def test_auto_gathers_single_vectors_and_hands_batches_to_a_csr_copy() -> None:
    shared = make_shared((64, 200), 0.1, seed=7)
    layer = SparseLinear.from_shared(shared)
    x = torch.randn(5, 200)
    with torch.inference_mode():
        _close(layer(x[0]), F.linear(x[0], shared.dense()))
        assert layer.cache_nbytes == 0  # one vector: the compact arrays only
        _close(layer(x), F.linear(x, shared.dense()))
    nnz = int(shared.mask.sum())
    assert layer.cache_nbytes == 8 * nnz + 4 * 65  # float32 values, int32 columns and rows
    compact = SparseLinear.from_shared(shared, backend="numba")
    with torch.inference_mode():
        _close(compact(x), F.linear(x, shared.dense()))
    assert compact.cache_nbytes == 0
    layer.to(torch.float64)  # moving the module drops the copy
    assert layer.cache_nbytes == 0
