"""The values of a tensor at a bool mask, a block at a time.

Indexing by a bool mask (``values[mask]``) first builds the int64 positions of every selected
element, 8 bytes each, and only then copies the values: for a layer of tens of millions of
weights that is twice the memory of a float32 layer. :func:`masked_values` selects a block of
the mask at a time instead; the result is the same.
"""

from __future__ import annotations

import torch

__all__ = ["masked_values"]

BLOCK = 1 << 22
"""Elements of the mask per block."""


def masked_values(
    values: torch.Tensor, mask: torch.Tensor, *, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``values[mask].to(dtype)``: the values where the bool ``mask`` (same shape) is True, in
    C order, as ``dtype`` (default: ``values``' own), on ``values``' device."""
    flat_values, flat_mask = values.reshape(-1), mask.reshape(-1)
    out = torch.empty(
        int(flat_mask.sum()), dtype=values.dtype if dtype is None else dtype, device=values.device
    )
    done = 0
    for start in range(0, flat_values.numel(), BLOCK):
        block = flat_values[start : start + BLOCK][flat_mask[start : start + BLOCK]]
        out[done : done + block.numel()] = block
        done += block.numel()
    return out
