""":class:`SparseConv`: a 1-D or 2-D convolution computed from its shared, pruned form.

The convolution is the sparse im2col product: the input is unfolded into patches
(``channels × kernel`` rows, one column per output position and sample) and multiplied by the
value-grouped CSR of the filters (``out_channels × (in_channels × kernel)``). Unfolding costs a
copy of the input per kernel position, so this only beats a dense convolution when the
filters are very sparse; the policy (:mod:`deepzip.runtime.policy`) decides, and grouped or
3-D convolutions stay dense (:func:`sparse_conv_unsupported` says why).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrize import type_before_parametrizations

from deepzip.errors import InvalidTensorError
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime.sparse import Backend, SharedCSRArrays, SharedCSRModule, build_shared_csr

__all__ = ["SparseConv", "sparse_conv_unsupported"]


def sparse_conv_unsupported(module: nn.Module) -> str | None:
    """Why ``module`` has no sparse convolution form, or ``None`` if it has one."""
    if isinstance(module, nn.Conv3d):
        return "Conv3d has no sparse runtime form (im2col is 1-D and 2-D only)"
    cls = type_before_parametrizations(module)
    if cls not in (nn.Conv1d, nn.Conv2d) or not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return (
            f"{cls.__name__} is not exactly a Conv1d or Conv2d (a subclass may compute otherwise)"
        )
    if module.groups != 1:
        return f"grouped convolution (groups={module.groups}) has no sparse runtime form"
    return None


def _pairs(values: tuple[int, ...], dims: int) -> tuple[int, int]:
    return (1, values[0]) if dims == 1 else (values[0], values[1])


class SparseConv(SharedCSRModule):
    """A ``Conv1d``/``Conv2d`` (``groups=1``) whose filters are a value-grouped CSR.

    Same inputs and outputs as the convolution it replaces (batched or not), every padding
    (numbers, ``"same"``, ``"valid"``) and padding mode; computed in float32, the output has
    the input's dtype. Build it with :meth:`from_conv`.

    Attributes:
        dims: 1 or 2.
        in_channels, out_channels: as on the convolution.
        kernel_size, stride, dilation: per spatial dimension.

    Raises:
        InvalidTensorError: a bias of the wrong shape (names the layer).
    """

    bias: nn.Parameter | None

    def __init__(
        self,
        arrays: SharedCSRArrays,
        bias: torch.Tensor | None,
        *,
        dims: Literal[1, 2],
        in_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        dilation: tuple[int, ...],
        pad: tuple[int, ...],
        padding_mode: str,
        backend: Backend = "auto",
        name: str = "",
    ) -> None:
        super().__init__(arrays, backend=backend)
        self.name = name
        if bias is not None and tuple(bias.shape) != (arrays.rows,):
            raise InvalidTensorError(
                f"{name or 'SparseConv'}: bias has shape {tuple(bias.shape)}, "
                f"expected ({arrays.rows},)"
            )
        self.dims = dims
        self.in_channels = in_channels
        self.out_channels = arrays.rows
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.pad = pad  # F.pad order: last dimension first, (left, right) pairs
        self.padding_mode = padding_mode
        self.bias = (
            None
            if bias is None
            else nn.Parameter(bias.detach().clone().to(self.codebook.device), requires_grad=False)
        )

    @classmethod
    def from_conv(
        cls,
        conv: nn.Module,
        shared: SharedTensor,
        *,
        bias: torch.Tensor | None = None,
        name: str = "weight",
        backend: Backend = "auto",
    ) -> SparseConv:
        """Build from a convolution's geometry and its shared weight (on the CPU).

        Args:
            conv: the ``nn.Conv1d``/``nn.Conv2d`` replaced (only its settings are read).
            shared: ``(codebook, indices, mask)`` of the convolution's weight shape.
            bias: the bias (default: ``conv.bias``).
            name: the layer's name, for error messages.
            backend: see :data:`~deepzip.runtime.sparse.Backend`.

        Raises:
            InvalidTensorError: the module has no sparse form (see
                :func:`sparse_conv_unsupported`), the shared tensor does not have the
                weight's shape, or the bias is not ``(out_channels,)``.
        """
        reason = sparse_conv_unsupported(conv)
        if reason is not None or not isinstance(conv, (nn.Conv1d, nn.Conv2d)):
            raise InvalidTensorError(f"{name}: {reason}")
        if tuple(shared.indices.shape) != tuple(conv.weight.shape):
            raise InvalidTensorError(
                f"{name}: shared weight has shape {tuple(shared.indices.shape)}, the "
                f"convolution {tuple(conv.weight.shape)}"
            )
        dims: Literal[1, 2] = 1 if isinstance(conv, nn.Conv1d) else 2
        kernel = tuple(int(k) for k in conv.kernel_size)
        dilation = tuple(int(d) for d in conv.dilation)
        if isinstance(conv.padding, str):  # "same" or "valid", as torch pads them
            pad: list[int] = []
            for k, d in zip(reversed(kernel), reversed(dilation), strict=True):
                total = d * (k - 1) if conv.padding == "same" else 0
                pad += [total // 2, total - total // 2]
        else:
            pad = [int(p) for p in reversed(conv.padding) for _ in range(2)]
        b = conv.bias if bias is None else bias
        return cls(
            build_shared_csr(shared, name=name),
            None if b is None else b.detach().cpu(),
            dims=dims,
            in_channels=int(conv.in_channels),
            kernel_size=kernel,
            stride=tuple(int(s) for s in conv.stride),
            dilation=dilation,
            pad=tuple(pad),
            padding_mode=str(conv.padding_mode),
            backend=backend,
            name=name,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x`` (``N×C×L`` or ``C×L`` in 1-D, ``N×C×H×W`` or ``C×H×W``)."""
        unbatched = x.dim() == self.dims + 1
        if x.dim() not in (self.dims + 1, self.dims + 2) or x.shape[-self.dims - 1] != (
            self.in_channels
        ):
            raise InvalidTensorError(
                f"{self.name or 'SparseConv'}: expected a {self.dims}-D input with "
                f"{self.in_channels} channels, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():  # the float32 product would be cast back, truncated
            raise InvalidTensorError(
                f"{self.name or 'SparseConv'}: expected a floating-point input, got {x.dtype}"
            )
        h = x.unsqueeze(0) if unbatched else x
        h = h.to(torch.float32)
        if any(self.pad):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            h = F.pad(h, list(self.pad), mode=mode)
        if self.dims == 1:
            h = h.unsqueeze(2)
        kernel = _pairs(self.kernel_size, self.dims)
        dilation = _pairs(self.dilation, self.dims)
        stride = _pairs(self.stride, self.dims)
        out_size = [
            (size - d * (k - 1) - 1) // s + 1
            for size, k, d, s in zip(h.shape[2:], kernel, dilation, stride, strict=True)
        ]
        if min(out_size) < 1:
            raise InvalidTensorError(
                f"{self.name or 'SparseConv'}: input of shape {tuple(x.shape)} is smaller "
                f"than the (dilated) kernel {self.kernel_size}"
            )
        patches = F.unfold(h, kernel, dilation=dilation, stride=stride)  # N × CK × L
        n = patches.shape[0]
        yt = self.matmul_t(patches.transpose(0, 1), self.bias)  # out × N × L
        y = yt.transpose(0, 1)
        shape = [n, self.out_channels] + (out_size[1:] if self.dims == 1 else out_size)
        y = y.reshape(shape).to(x.dtype)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        """Channels, kernel, stride, density, codebook size and weight bytes."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, pad={self.pad}, "
            f"bias={self.bias is not None}, density={self.density:.4f}, "
            f"k={self.codebook.numel()}, weight_nbytes={self.weight_nbytes}"
        )
