"""Helpers for the runtime tests: seeded shared (quantized, pruned) tensors."""

from __future__ import annotations

import torch

from deepzip.quantize.shared import SharedTensor


def make_shared(shape: tuple[int, ...], density: float, k: int = 32, seed: int = 0) -> SharedTensor:
    """Random codebook (sorted, k values), random indices, Bernoulli(density) mask."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < density
    indices = torch.randint(0, k, shape, generator=g, dtype=torch.int64)
    indices = (indices * mask).to(torch.uint8)  # 0 at pruned positions, like quantize_
    codebook = torch.sort(torch.randn(k, generator=g)).values
    return SharedTensor(codebook, indices, mask)
