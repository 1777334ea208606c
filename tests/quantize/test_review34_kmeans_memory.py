"""Session 34: k-means keeps no sort permutation. ``_result`` labels the values from the values
themselves, a block of ``_BLOCK`` at a time, and ``_prepare`` builds its prefix sums in
place. Checked against the exact reference (kmeans_reference.py) with blocks small enough that
every case spans several, on the inputs where the permutation used to matter: repeated values,
-0.0 beside +0.0, values of zero importance exactly at a midpoint, non-float32 dtypes and
strided views."""

from __future__ import annotations

import random
import warnings
from fractions import Fraction

import pytest
import torch
from kmeans_reference import lloyd

from deepzip.quantize import kmeans as km
from deepzip.quantize.kmeans import initial_centroids, kmeans_1d, optimal_kmeans_1d


def _case(rng: random.Random) -> tuple[list[float], list[int] | None, list[int], int]:
    """Quarter-integers (exact in every float dtype tested) with many repeats and signed zeros;
    integer importance with zeros; a start that can leave clusters empty."""
    n = rng.randint(8, 40)
    values = [rng.choice([0.0, -0.0, rng.randint(-16, 16) / 4]) for _ in range(n)]
    weights = [rng.randint(0, 3) for _ in range(n)] if rng.random() < 0.5 else None
    if weights is not None:
        weights[rng.randrange(n)] = 1
    k = rng.randint(2, 5)
    return values, weights, [rng.randint(-5, 5) for _ in range(k)], k


def _reference(
    values: list[float], weights: list[int] | None, init: list[int], k: int, max_iter: int
) -> tuple[list[Fraction], list[int]] | None:
    live = {v for i, v in enumerate(values) if weights is None or weights[i] > 0}
    if len(live) <= k:  # kmeans_1d returns the distinct values without Lloyd
        return None
    c, _, _, labels = lloyd([Fraction(v) for v in values], weights, init, max_iter)
    return c, labels


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_labels_match_the_reference_whatever_the_label_block(
    monkeypatch: pytest.MonkeyPatch, block: int, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(km, "_BLOCK", block)
    rng = random.Random(34)
    checked = 0
    while checked < 25:
        values, weights, init, k = _case(rng)
        for max_iter in (1, 60):
            ref = _reference(values, weights, init, k, max_iter)
            if ref is None:
                continue
            x = torch.tensor(values, dtype=dtype)
            w = None if weights is None else torch.tensor(weights, dtype=torch.float32)
            c0 = torch.tensor(init, dtype=torch.float32)
            got = kmeans_1d(x, k, weights=w, init_centroids=c0, max_iter=max_iter)
            where = f"{values} {weights} init {init} max_iter {max_iter}"
            assert [Fraction(float(v)) for v in got.centroids] == ref[0], where
            assert got.labels.tolist() == ref[1], where
            assert got.labels.dtype == torch.int64
            wt = [1] * len(values) if weights is None else weights
            sse = sum(
                wi * (Fraction(v) - ref[0][j]) ** 2
                for v, wi, j in zip(values, wt, ref[1], strict=True)
            )
            assert got.sse == pytest.approx(float(sse), rel=1e-12, abs=1e-12), where
            checked += 1


def test_a_value_of_no_importance_at_a_midpoint_goes_right_in_every_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # centroids 0 and 2 (the values of importance); the value 1 is their midpoint, -0.0 and
    # +0.0 are the lower centroid, and 1 - 2**-23 just below the midpoint goes left
    monkeypatch.setattr(km, "_BLOCK", 2)
    below = 1 - 2.0**-23
    values = torch.tensor([1.0, 0.0, -0.0, 2.0, 1.0, below, 2.0, 0.0, 1.0])
    weights = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    got = kmeans_1d(values, 2, weights=weights)
    assert got.centroids.tolist() == [0.0, 2.0]
    assert got.labels.tolist() == [1, 0, 0, 1, 1, 0, 1, 0, 1]
    assert got.sse == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_strided_view_without_importance_is_labelled_quietly(dtype: torch.dtype) -> None:
    # the labels are searched from the values: a strided float64 view must not reach
    # searchsorted as it is (torch warns that it copies a non-contiguous input)
    base = torch.tensor([1.0, -0.0, 2.0, 0.0, 3.0, -0.0, 4.0, 0.0] * 3, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = kmeans_1d(base[::2], 2)
    assert got.centroids.tolist() == [1.5, 3.5]
    assert got.labels.tolist() == [0, 0, 1, 1] * 3


def test_labels_of_a_strided_view_are_those_of_its_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(km, "_BLOCK", 5)
    g = torch.Generator().manual_seed(3)
    base = torch.round(torch.randn(301, generator=g) * 8) / 8
    view = base[::3]
    weights = torch.rand(view.numel(), generator=g)
    a = kmeans_1d(view, 6, weights=weights, init="kmeans++", seed=2)
    b = kmeans_1d(view.contiguous(), 6, weights=weights, init="kmeans++", seed=2)
    assert torch.equal(a.centroids, b.centroids)
    assert torch.equal(a.labels, b.labels)
    # and each label is the nearest centroid (a tie goes to the upper one), from first principles
    c = [Fraction(float(v)) for v in a.centroids]
    for v, label in zip(view.tolist(), a.labels.tolist(), strict=True):
        d = [abs(Fraction(v) - cj) for cj in c]
        best = min(d)
        assert label == max(j for j, dj in enumerate(d) if dj == best), v


@pytest.mark.parametrize("weighted", [False, True])
def test_prefix_sums_in_place_are_the_out_of_place_sums(weighted: bool) -> None:
    # kmeans_1d's cluster sums come from _prepare's prefix sums; built in place they must be
    # the out-of-place cumulative sums of the merged importance and importance x value (the
    # importance itself is their step; without importance, the run starts as int32)
    g = torch.Generator().manual_seed(5)
    n = 20_000
    x = torch.round(torch.randn(n, generator=g, dtype=torch.float64) * 50) / 7
    w = torch.rand(n, generator=g, dtype=torch.float64) if weighted else None
    s = km._prepare(x, None if w is None else w.clone())
    xd, inverse = torch.unique(x, sorted=True, return_inverse=True)
    assert torch.equal(s.xd, xd)
    zero = torch.zeros(1, dtype=torch.float64)
    if w is None:
        counts = torch.bincount(inverse, minlength=xd.numel())
        wd = counts.double()
        assert s.pw.dtype == torch.int32  # the run starts, 4 bytes each below 2^31 values
        assert s.pw.tolist() == [0, *torch.cumsum(counts, 0).tolist()]
    else:
        # the importance of a value is its step in the prefix sums over the sorted input
        order = torch.sort(x, stable=True).indices
        full = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w[order], 0)])
        run_start = torch.cat(
            [torch.zeros(1, dtype=torch.int64), torch.cumsum(torch.bincount(inverse), 0)]
        )
        assert torch.equal(s.pw, full[run_start])
        wd = s.pw[1:] - s.pw[:-1]
    assert torch.equal(s.importance(), wd)
    assert torch.equal(s.importance(3, 17), wd[3:17])
    assert torch.equal(s.px, torch.cat([zero, torch.cumsum(wd * xd, 0)]))
    assert s.n_pos == int((wd > 0).sum())


def test_initial_and_optimal_still_take_the_importance() -> None:
    # the importance is passed into _prepare by its only reference now: it must still count
    values = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])
    heavy_low = torch.tensor([100.0, 100.0, 100.0, 1.0, 1.0, 1.0])
    c = initial_centroids(values, 2, weights=heavy_low, init="density")
    assert c.tolist() == [0.0, 2.0]  # the CDF levels 1/4 and 3/4 both fall in the heavy half
    got = optimal_kmeans_1d(values, 2, weights=heavy_low)
    assert got.centroids.tolist() == [1.0, 11.0]
    assert got.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_float64_values_are_labelled_at_their_own_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1 - 1e-12 and 1 + 1e-12 round to the midpoint 1.0 in float32; in float64 they are on
    # either side of it
    monkeypatch.setattr(km, "_BLOCK", 3)
    values = torch.tensor([0.0, 1 - 1e-12, 2.0, 1 + 1e-12, 1.0, 0.0, 2.0], dtype=torch.float64)
    weights = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    got = kmeans_1d(values, 2, weights=weights)
    assert got.centroids.tolist() == [0.0, 2.0]
    assert got.labels.tolist() == [0, 0, 1, 1, 1, 0, 1]


def _bits(t: torch.Tensor) -> list[int]:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("zeros", ["none", "positive", "negative", "both", "one negative"])
def test_sorting_without_a_permutation_keeps_the_sign_of_the_merged_zero(
    dtype: torch.dtype, zeros: str
) -> None:
    # Without importance the values are sorted by NumPy, which orders -0.0 and +0.0 as it
    # likes. Merged, the zeros are one distinct value whose sign is that of the run's first
    # element: -0.0 whenever there is one (as the sort of the ordered bits gives).
    g = torch.Generator().manual_seed(len(zeros))
    n = 50_000
    x = torch.round(torch.randn(n, generator=g, dtype=dtype) * 20) / 4
    x[x == 0] = 0.5
    if zeros != "none":
        at = torch.randperm(n, generator=g)[: n // 5]
        signs = torch.where(torch.rand(at.numel(), generator=g) < 0.5, -1.0, 1.0).to(dtype)
        signs = {"positive": signs.abs(), "negative": -signs.abs(), "both": signs}.get(
            zeros, signs.abs()
        )
        if zeros == "one negative":
            signs[at.numel() // 2] = -1.0
        x[at] = 0.0 * signs
    sorted_bits, _ = km._sort_floats(x)
    got = km._sorted_values(x)
    ordered = sorted(x.tolist())  # Python's sort: -0.0 == 0.0, the rest by value
    assert got.tolist() == ordered
    has_negative_zero = bool(((x == 0) & torch.signbit(x)).any())
    distinct = torch.unique_consecutive(got)
    zero = distinct[distinct == 0]
    assert zero.numel() == (0 if zeros == "none" else 1)
    if zeros != "none":
        assert bool(torch.signbit(zero)) == has_negative_zero
    assert _bits(distinct) == _bits(torch.unique_consecutive(sorted_bits))
    # and the reduced k-means that returns the distinct values keeps that sign (NumPy sorts
    # a short array stably: the -0.0 stays last of the zeros)
    few = torch.tensor([1.0, 0.0, 0.0, *([-0.0] if has_negative_zero else [])], dtype=dtype)
    result = kmeans_1d(few, 3)
    assert bool(torch.signbit(result.centroids[0])) == has_negative_zero
    assert result.centroids.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_merged_zero_is_negative_exactly_when_the_input_has_a_negative_zero(
    dtype: torch.dtype,
) -> None:
    # NumPy's SIMD sort can turn -0.0 into +0.0 and back (found with 17 float64 values: two
    # -0.0 came out as +0.0); the merged zero's sign must come from the input
    rng = random.Random(17)
    for n in [*range(2, 80), 127, 128, 129, 255, 256, 1000, 4097]:
        values = [rng.choice([0.0, -0.0, rng.uniform(-2, 2)]) for _ in range(n)]
        values[rng.randrange(n)] = rng.choice([0.0, -0.0])
        x = torch.tensor(values, dtype=dtype)
        distinct = torch.unique_consecutive(km._sorted_values(x))
        zero = distinct[distinct == 0]
        assert zero.numel() == 1
        expected = any(v == 0 and str(v).startswith("-") for v in values)
        assert bool(torch.signbit(zero)) == expected, (n, values)
