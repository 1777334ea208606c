"""Session 34: the uniform quantizer numbers its bins in int32 and computes the SSE from the
bin numbers before building the int64 labels (the errors and the labels are never held at
once). The result must be what it was: int64 labels, and the SSE of those labels."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from deepzip.quantize.kmeans import weighted_sse
from deepzip.quantize.scalar import ecsq_quantize, uniform_quantize


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_labels_are_int64_and_the_sse_is_theirs(weighted: bool, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(34)
    x = (torch.round(torch.randn(500, generator=g) * 64) / 64).to(dtype)
    w = torch.randint(0, 4, (500,), generator=g).float() if weighted else None
    got = uniform_quantize(x, 8, weights=w)
    assert got.labels.dtype == torch.int64
    c = [Fraction(float(v)) for v in got.centroids]
    wt = [1] * 500 if w is None else [int(v) for v in w]
    exact = sum(
        wi * (Fraction(float(v)) - c[j]) ** 2
        for v, wi, j in zip(x.tolist(), wt, got.labels.tolist(), strict=True)
    )
    assert got.sse == pytest.approx(float(exact), rel=1e-12)


def test_uniform_merges_bins_whose_means_are_one_float32_and_labels_them_alike() -> None:
    # values within 1e-9 of 1: every bin's float64 mean rounds to the float32 1.0
    x = 1 + torch.linspace(-1e-9, 1e-9, 64, dtype=torch.float64)
    got = uniform_quantize(x, 4)
    assert got.centroids.tolist() == [1.0]
    assert got.labels.tolist() == [0] * 64
    assert any("closer than float32" in note for note in got.notes)
    assert got.sse == pytest.approx(float(sum((Fraction(v) - 1) ** 2 for v in x.tolist())))


def test_weighted_sse_takes_int32_labels_as_int64() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3000, generator=g)
    c = torch.tensor([-1.0, 0.0, 1.0])
    labels = torch.randint(0, 3, (3000,), generator=g)
    w = torch.rand(3000, generator=g)
    for weights in (None, w):
        got = weighted_sse(x, c, labels.to(torch.int32), weights)
        assert got == weighted_sse(x, c, labels, weights)
        wt = [1] * 3000 if weights is None else [Fraction(v) for v in weights.tolist()]
        exact = sum(
            wi * (Fraction(v) - int(c[j])) ** 2
            for v, wi, j in zip(x.tolist(), wt, labels.tolist(), strict=True)
        )
        assert got == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_ecsq_labels_are_int64_and_the_sse_is_theirs(weighted: bool) -> None:
    # ECSQ's rounds keep int32 labels (and the blocked path runs: n·k > 2^20); the result's
    # labels are int64 and its SSE is that of those labels
    g = torch.Generator().manual_seed(5)
    n = 20_000
    x = torch.round(torch.randn(n, generator=g) * 256) / 256
    w = torch.randint(0, 4, (n,), generator=g).float() if weighted else None
    got = ecsq_quantize(x, 64, 0.05, weights=w, max_iter=10)
    assert got.labels.dtype == torch.int64
    assert int(got.labels.min()) == 0
    assert int(got.labels.max()) == got.k - 1
    c = [Fraction(float(v)) for v in got.centroids]
    wt = [1] * n if w is None else [int(v) for v in w]
    exact = sum(
        wi * (Fraction(float(v)) - c[j]) ** 2
        for v, wi, j in zip(x.tolist(), wt, got.labels.tolist(), strict=True)
    )
    assert got.sse == pytest.approx(float(exact), rel=1e-12)
