"""SparseConv against the dense convolution with decoded weights, every geometry."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from runtime_helpers import make_shared
from torch import nn

from deepzip.errors import InvalidTensorError
from deepzip.runtime import SparseConv, sparse_conv_unsupported

# The dense reference warns that an even kernel with padding="same" may copy its input; the
# geometry is covered on purpose, and the warning is about torch's speed, not the result.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel lengths:UserWarning"
)

CONVS: list[tuple[type[nn.Module], dict[str, Any]]] = [
    (nn.Conv2d, {"kernel_size": 3, "padding": 1}),
    (nn.Conv2d, {"kernel_size": (3, 2), "stride": (2, 1), "dilation": (1, 2), "padding": 2}),
    (nn.Conv2d, {"kernel_size": 4, "padding": "same", "bias": False}),
    (nn.Conv2d, {"kernel_size": 3, "padding": "valid", "stride": 2}),
    (nn.Conv2d, {"kernel_size": 3, "padding": (1, 2), "padding_mode": "reflect"}),
    (nn.Conv2d, {"kernel_size": 3, "padding": 1, "padding_mode": "replicate"}),
    (nn.Conv2d, {"kernel_size": 3, "padding": 1, "padding_mode": "circular"}),
    (nn.Conv1d, {"kernel_size": 4, "padding": "same"}),
    (nn.Conv1d, {"kernel_size": 3, "stride": 2, "padding": 1, "padding_mode": "circular"}),
    (nn.Conv1d, {"kernel_size": 5, "dilation": 2}),
]


def _pair(
    cls: type[nn.Module], kwargs: dict[str, Any], backend: str
) -> tuple[nn.Module, SparseConv]:
    torch.manual_seed(0)
    conv = cls(3, 5, **kwargs)
    shared = make_shared(tuple(conv.weight.shape), 0.4, k=256, seed=1)
    sparse = SparseConv.from_conv(conv, shared, backend=backend)  # type: ignore[arg-type]
    with torch.no_grad():
        conv.weight.copy_(shared.dense())
    return conv.eval(), sparse.eval()


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize(("cls", "kwargs"), CONVS)
def test_matches_the_dense_convolution(
    cls: type[nn.Module], kwargs: dict[str, Any], backend: str
) -> None:
    conv, sparse = _pair(cls, kwargs, backend)
    spatial = (11, 12) if cls is nn.Conv2d else (13,)
    for batch in (1, 4):
        x = torch.randn(batch, 3, *spatial, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            expected = conv(x)
            actual = sparse(x)
            assert actual.shape == expected.shape
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(sparse(x[0]), conv(x[0]), rtol=1e-4, atol=1e-4)


def test_large_batch_crosses_the_column_tiles_and_keeps_dtype() -> None:
    conv, sparse = _pair(nn.Conv2d, {"kernel_size": 3, "padding": 1}, "numba")
    x = torch.randn(5, 3, 9, 10, dtype=torch.float64)  # 450 output columns > one 256 tile
    with torch.no_grad():
        y = sparse(x)
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, conv.double()(x), rtol=1e-4, atol=1e-4)


def test_gradient_flows_to_the_input() -> None:
    conv, sparse = _pair(nn.Conv2d, {"kernel_size": 3, "stride": 2, "padding": 1}, "numba")
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    sparse(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    conv(x_ref).square().sum().backward()
    assert x.grad is not None
    assert x_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)


def test_unsupported_convolutions_are_named() -> None:
    assert sparse_conv_unsupported(nn.Conv2d(4, 4, 3)) is None
    assert "groups=2" in str(sparse_conv_unsupported(nn.Conv2d(4, 4, 3, groups=2)))
    assert "Conv3d" in str(sparse_conv_unsupported(nn.Conv3d(1, 1, 3)))
    grouped = nn.Conv2d(4, 4, 3, groups=4)
    with pytest.raises(InvalidTensorError, match=r"blocks\.0\.dw.*groups=4"):
        SparseConv.from_conv(grouped, make_shared((4, 1, 3, 3), 0.5), name="blocks.0.dw")
    with pytest.raises(InvalidTensorError, match="shape"):
        SparseConv.from_conv(nn.Conv2d(2, 4, 3), make_shared((4, 3, 3, 3), 0.5))


def test_bad_inputs_are_rejected() -> None:
    _, sparse = _pair(nn.Conv2d, {"kernel_size": 3}, "numba")
    with pytest.raises(InvalidTensorError, match="3 channels"):
        sparse(torch.randn(1, 4, 8, 8))
    with pytest.raises(InvalidTensorError, match="smaller"):
        sparse(torch.randn(1, 3, 2, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_dense_convolution() -> None:
    conv, sparse = _pair(nn.Conv2d, {"kernel_size": 3, "padding": 1}, "auto")
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        expected = conv(x)
        actual = sparse.to("cuda")(x.cuda())
    assert actual.is_cuda
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-4, atol=1e-4)
