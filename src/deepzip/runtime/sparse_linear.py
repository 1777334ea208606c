""":class:`SparseLinear`: a fully connected layer that computes from its shared, pruned form."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepzip.errors import InvalidTensorError
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime.sparse import Backend, SharedCSRArrays, SharedCSRModule, build_shared_csr

__all__ = ["SparseLinear"]


class SparseLinear(SharedCSRModule):
    """``y = x Wᵀ + b`` with ``W`` held as a value-grouped CSR (no dense weight, ever).

    Works like ``nn.Linear`` on inputs of shape ``(*, in_features)``, in ``eval()`` and
    under ``torch.no_grad()``/``torch.inference_mode()``; ``.to(device)`` moves the buffers.
    The product is computed in float32; the output has the input's dtype. The gradient flows
    to the input (not to the fixed weights), so layers before it can still be fine-tuned.

    Args:
        arrays: the weight, ``out_features × in_features`` (see :func:`build_shared_csr`).
        bias: ``(out_features,)`` or ``None``; kept as a frozen parameter.
        backend: see :data:`~deepzip.runtime.sparse.Backend`.
        name: the layer's name, for error messages.

    Raises:
        InvalidTensorError: a bias of the wrong shape.
        ConfigError: an unknown backend.
    """

    bias: nn.Parameter | None

    def __init__(
        self,
        arrays: SharedCSRArrays,
        bias: torch.Tensor | None = None,
        *,
        backend: Backend = "auto",
        name: str = "",
    ) -> None:
        super().__init__(arrays, backend=backend)
        self.name = name
        if bias is not None and tuple(bias.shape) != (arrays.rows,):
            raise InvalidTensorError(
                f"{name or 'SparseLinear'}: bias has shape {tuple(bias.shape)}, "
                f"expected ({arrays.rows},)"
            )
        self.bias = (
            None
            if bias is None
            else nn.Parameter(bias.detach().clone().to(self.codebook.device), requires_grad=False)
        )

    @classmethod
    def from_shared(
        cls,
        shared: SharedTensor,
        bias: torch.Tensor | None = None,
        *,
        name: str = "weight",
        backend: Backend = "auto",
    ) -> SparseLinear:
        """Build from ``(codebook, indices, mask)`` of shape ``out × in``, on the CPU.

        Raises:
            InvalidTensorError: the shared tensor is not 2-D or is malformed (names it).
        """
        if shared.indices.dim() != 2:
            raise InvalidTensorError(
                f"{name}: a linear weight must be 2-D, got shape {tuple(shared.indices.shape)}"
            )
        return cls(
            build_shared_csr(shared, name=name),
            None if bias is None else bias.detach().cpu(),
            backend=backend,
            name=name,
        )

    @property
    def in_features(self) -> int:
        """Input features."""
        return self.columns

    @property
    def out_features(self) -> int:
        """Output features."""
        return self.rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x Wᵀ + b`` for ``x`` of shape ``(*, in_features)``."""
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InvalidTensorError(
                f"{self.name or 'SparseLinear'}: expected inputs of shape (*, "
                f"{self.in_features}), got {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        flat = x.reshape(math.prod(lead), self.in_features)  # not -1: in_features may be 0
        yt = self.matmul_t(flat.t(), self.bias)
        return yt.t().contiguous().reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        """``in_features, out_features, bias, density, codebook size, weight bytes``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, density={self.density:.4f}, "
            f"k={self.codebook.numel()}, weight_nbytes={self.weight_nbytes}"
        )
