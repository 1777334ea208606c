"""Seeded heavy-tailed test weights shaped like a trained layer's, for the quantizer tests."""

from __future__ import annotations

import torch


def laplace(n: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    """``n`` float32 Laplace(0, scale) samples from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).float()
