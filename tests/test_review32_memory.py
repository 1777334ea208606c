"""Session 32: large layers in bounded memory. The post-training path selects kept values and
scatters labels a block at a time, the scalar quantizers skip the tensor of ones when there is
no importance, and ``weighted_sse`` works in place. None of it may change a result: each is
checked here against the plain whole-tensor expression it replaces."""

from __future__ import annotations

import pytest
import torch

from deepzip import _select
from deepzip._select import masked_values
from deepzip.quantize import kmeans
from deepzip.quantize.kmeans import sum_float64, weighted_sse
from deepzip.quantize.scalar import ecsq_quantize, step_quantize, uniform_quantize


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("block", [1, 7, 1 << 22])
def test_masked_values_are_values_at_the_mask(
    dtype: torch.dtype, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_select, "BLOCK", block)
    g = torch.Generator().manual_seed(block)
    values = torch.randn(5, 9, 4, generator=g).to(dtype)
    for mask in (values > 0.3, torch.zeros_like(values, dtype=torch.bool), values == values):
        got = masked_values(values, mask, dtype=torch.float32)
        assert got.dtype == torch.float32
        assert torch.equal(got, values[mask].to(torch.float32))
        own = masked_values(values, mask)
        assert own.dtype == dtype
        assert torch.equal(own, values[mask])
    t = values.transpose(0, 2)  # not contiguous: C order of the view, as values[mask]
    assert torch.equal(masked_values(t, t > 0), t[t > 0])


@pytest.mark.parametrize("block", [1, 5, 1 << 22])
def test_weighted_sse_is_the_plain_expression_bit_for_bit(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kmeans, "_SSE_BLOCK", block)
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        values = torch.randn(1000, generator=g, dtype=dtype)
        before = values.clone()
        centroids = torch.randn(6, generator=g)
        labels = torch.randint(0, 6, (1000,), generator=g)
        w = torch.rand(1000, generator=g)
        err = values.to(torch.float64) - centroids.to(torch.float64)[labels]
        assert weighted_sse(values, centroids, labels, w) == sum_float64(
            w.to(torch.float64) * err * err
        )
        ones = torch.ones(1000)
        assert weighted_sse(values, centroids, labels) == sum_float64(
            ones.to(torch.float64) * err * err
        )
        assert weighted_sse(values, centroids, labels, ones) == weighted_sse(
            values, centroids, labels
        )
        assert torch.equal(values, before)  # a float64 input is not updated in place


def test_no_importance_is_importance_one_for_every_scalar_quantizer() -> None:
    g = torch.Generator().manual_seed(5)
    values = torch.randn(4000, generator=g) * 0.05
    values[:10] = 0.0
    ones = torch.ones_like(values)
    for quantize in (
        lambda w: uniform_quantize(values, 16, weights=w),
        lambda w: step_quantize(values, 0.01, weights=w),
        lambda w: ecsq_quantize(values, 16, 0.05, weights=w),
    ):
        plain, weighted = quantize(None), quantize(ones)
        assert torch.equal(plain.centroids, weighted.centroids)
        assert torch.equal(plain.labels, weighted.labels)
        assert plain.sse == weighted.sse
        assert (plain.k, plain.iterations, plain.converged, plain.notes) == (
            weighted.k,
            weighted.iterations,
            weighted.converged,
            weighted.notes,
        )


def _sorted_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """The formulation ``sparsity_mask`` had: the first n_prune of a stable ascending sort."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.sort(scores, stable=True).indices[:n_prune]] = False
    return keep


def test_sparsity_mask_prunes_the_stable_sorts_first_n_by_selection() -> None:
    from deepzip.prune import masks

    g = torch.Generator().manual_seed(11)
    for trial in range(60):
        n = int(torch.randint(1, 400, (1,), generator=g))
        # few distinct magnitudes: many ties, which go in index order
        weight = torch.randint(-4, 5, (n,), generator=g).to(torch.float32)
        current = torch.rand(n, generator=g) < 0.8 if trial % 2 else None
        for sparsity in (0.0, 0.1, 0.5, 0.73, 0.99):
            got = masks.sparsity_mask(weight, sparsity, current)
            scores = masks._scores("w", weight, current)
            n_prune = round(sparsity * n)
            if current is not None:
                n_prune = max(n_prune, n - int(current.sum()))
            assert torch.equal(got, _sorted_mask(scores, n_prune)), (trial, sparsity)
    shaped = torch.randn(3, 4, 5, generator=g)
    assert torch.equal(
        masks.sparsity_mask(shaped, 0.5).flatten(), _sorted_mask(shaped.abs().flatten(), 30)
    )


def test_global_masks_prune_the_stable_sorts_first_n_by_selection() -> None:
    from deepzip.prune import masks

    g = torch.Generator().manual_seed(12)
    for trial in range(30):
        weights = {
            name: torch.randint(-3, 4, shape, generator=g).to(torch.float32)
            for name, shape in (("b", (7, 5)), ("a", (11,)), ("c", (2, 3, 4)))
        }
        current = {"a": torch.rand(11, generator=g) < 0.7} if trial % 2 else None
        for sparsity in (0.0, 0.2, 0.5, 0.9):
            got = masks.global_magnitude_masks(weights, sparsity, current)
            names = sorted(weights)
            scores = torch.cat(
                [masks._scores(n, weights[n], (current or {}).get(n)) for n in names]
            )
            n_prune = max(round(sparsity * scores.numel()), int((scores < 0).sum()))
            expected = _sorted_mask(scores, n_prune)
            assert torch.equal(torch.cat([got[n].flatten() for n in names]), expected)
            assert list(got) == list(weights)  # in the weights' order
