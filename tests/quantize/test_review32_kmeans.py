"""Session 32, from mutation testing of quantize/kmeans.py: Lloyd's iterations, the empty-
cluster rule (``_reseat`` and its fallback to the farthest values) and ``_finish`` checked
against an independent exact reference (kmeans_reference.py), plus the argument checks whose
mutants survived."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest
import torch
from kmeans_reference import lloyd

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.kmeans import bits_to_k, check_float32_range, initial_centroids, kmeans_1d


def _cases(seed: int, count: int) -> list[tuple[list[int], list[int] | None, list[int], int]]:
    """Small integer data (exact in float64 prefix sums), optional integer importance with
    zeros, and starting centroids that often leave clusters empty (some lie outside the data)."""
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        n = rng.randint(6, 30)
        values = [rng.randint(-12, 12) for _ in range(n)]
        weights = [rng.randint(0, 3) for _ in range(n)] if rng.random() < 0.5 else None
        live = {v for i, v in enumerate(values) if weights is None or weights[i] > 0}
        k = rng.randint(2, 6)
        if len(live) > k:  # else kmeans_1d returns the distinct values without Lloyd
            out.append((values, weights, [rng.randint(-30, 30) for _ in range(k)], k))
    return out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("scale", [1, 4])
def test_lloyd_and_the_empty_cluster_rule_match_the_reference(seed: int, scale: int) -> None:
    reseats = 0
    for values, weights, init, k in _cases(seed, 30):
        x = torch.tensor(values, dtype=torch.float32) / scale  # exact: a power of two
        w = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        c0 = torch.tensor(init, dtype=torch.float32) / scale
        for max_iter in (1, 2, 3, 60):
            for tol in (0.0, 0.5 / scale):
                ref_c, ref_it, ref_conv, ref_labels = lloyd(
                    [Fraction(v, scale) for v in values],
                    weights,
                    [Fraction(v, scale) for v in init],
                    max_iter,
                    Fraction(tol),
                )
                got = kmeans_1d(x, k, weights=w, init_centroids=c0, max_iter=max_iter, tol=tol)
                where = f"{values} {weights} init {init} /{scale} max_iter {max_iter} tol {tol}"
                assert [Fraction(float(v)) for v in got.centroids] == ref_c, where
                assert (got.iterations, got.converged) == (ref_it, ref_conv), where
                assert got.labels.tolist() == ref_labels, where
                wt = [1] * len(values) if weights is None else weights
                sse = sum(
                    wi * (Fraction(v, scale) - ref_c[j]) ** 2
                    for v, wi, j in zip(values, wt, ref_labels, strict=True)
                )
                assert got.sse == pytest.approx(float(sse), rel=1e-12, abs=1e-12), where
        # the cases exercise the rule: a start with a centroid beyond the data leaves it empty
        lo, hi = min(values), max(values)
        reseats += sum(1 for c in init if c < lo or c > hi) > 0
    assert reseats >= 15


def test_the_split_takes_the_cluster_whose_split_lowers_the_sse_most() -> None:
    # traced by hand: centroids 0 and 100 over {0, 1, 10, 11}: the second cluster is empty.
    # Splitting {0, 1, 10, 11} at its mean 5.5 gives {0, 1} and {10, 11}: centroids 0.5, 10.5.
    got = kmeans_1d(torch.tensor([0.0, 1, 10, 11]), 2, init_centroids=torch.tensor([0.0, 100]))
    assert got.centroids.tolist() == [0.5, 10.5]
    assert got.labels.tolist() == [0, 0, 1, 1]
    # two live clusters and an empty one; the gain W_L·W_R/(W_L+W_R)·(m_L − m_R)² of a split
    # at the mean: {0 | 1, 2} (mean 1): 1·2/3·1.5² = 1.5; {20 | 30} (mean 25): 1/2·10² = 50
    got = kmeans_1d(
        torch.tensor([0.0, 1, 2, 20, 30]),
        3,
        init_centroids=torch.tensor([1.0, 25, 1000]),
        max_iter=1,
    )
    assert got.centroids.tolist() == [1.0, 20.0, 30.0]


def test_centroids_that_merge_in_float32_reduce_k_from_two() -> None:
    # two float64 values 1e-12 apart are one float32 centroid
    values = torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64)
    got = kmeans_1d(values, 2)
    assert got.k == 1
    assert got.centroids.tolist() == [1.0]
    assert got.labels.tolist() == [0, 0]
    assert any("k reduced from 2 to 1" in n for n in got.notes)


def test_fewer_values_with_importance_keeps_those_of_importance_below_one() -> None:
    values = torch.tensor([1.0, 2.0, 3.0])
    got = kmeans_1d(values, 3, weights=torch.tensor([0.25, 0.0, 0.5]))
    assert got.centroids.tolist() == [1.0, 3.0]
    assert got.labels.tolist() == [0, 1, 1]  # 2 is half-way: it goes to the upper one


def test_exactly_k_values_with_importance_need_no_iteration() -> None:
    got = kmeans_1d(torch.tensor([3.0, 1.0, 2.0]), 3, init="forgy", seed=5)
    assert got.centroids.tolist() == [1.0, 2.0, 3.0]
    assert (got.iterations, got.converged, got.sse) == (0, True, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_iter": True}, ConfigError, "max_iter must be an integer >= 1, got True"),
        ({"max_iter": 2.0}, ConfigError, "max_iter must be an integer >= 1, got 2.0"),
        ({"tol": "0.1"}, ConfigError, "tol must be a finite number >= 0, got '0.1'"),
        ({"tol": -1e-9}, ConfigError, "tol must be a finite number >= 0, got -1e-09"),
        ({"tol": float("inf")}, ConfigError, "tol must be a finite number >= 0, got inf"),
        (
            {"init_centroids": torch.tensor([[0.0, 1.0]])},
            InvalidTensorError,
            r"init_centroids must be 1-D, got shape \(1, 2\)",
        ),
    ],
)
def test_bad_lloyd_settings_are_refused(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        kmeans_1d(torch.tensor([0.0, 1.0, 2.0, 5.0]), 2, **kwargs)  # type: ignore[arg-type]


# --- the initialisations, against references written from their docstrings ----------------


def _merged(values: list[int], weights: list[int] | None) -> tuple[list[int], list[int]]:
    """Distinct values (ascending) and their summed importance (counts when unweighted)."""
    acc: dict[int, int] = {}
    for i, v in enumerate(values):
        acc[v] = acc.get(v, 0) + (1 if weights is None else weights[i])
    xs = sorted(acc)
    return xs, [acc[x] for x in xs]


def _data(seed: int) -> tuple[list[int], list[int] | None]:
    rng = random.Random(seed)
    values = [rng.randint(-40, 40) for _ in range(rng.randint(12, 60))]
    weights = [rng.choice([0, 1, 2, 5]) for _ in values] if seed % 2 else None
    if weights is not None:
        weights[0] = 3  # not all zero
    return values, weights


def _tensors(values: list[int], weights: list[int] | None) -> dict[str, torch.Tensor | None]:
    return {
        "values": torch.tensor(values, dtype=torch.float32),
        "weights": None if weights is None else torch.tensor(weights, dtype=torch.float32),
    }


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_density_init_takes_the_values_at_the_weighted_cdf_levels(seed: int, k: int) -> None:
    values, weights = _data(seed)
    xs, ws = _merged(values, weights)
    live = [(x, w) for x, w in zip(xs, ws, strict=True) if w > 0]
    assert len(live) >= k  # (the data of every seed has enough)
    total = sum(ws)
    expected = []
    for i in range(k):
        level = Fraction(2 * i + 1, 2 * k) * total  # (i + 0.5) / k of the importance
        cum = 0
        for x, w in zip(xs, ws, strict=True):
            cum += w
            if cum >= level:  # the first value whose cumulative importance reaches it
                expected.append(x)
                break
    got = initial_centroids(init="density", k=k, **_tensors(values, weights))  # type: ignore[arg-type]
    assert got.tolist() == sorted(expected)


def _draws(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", range(8))
def test_forgy_init_is_the_k_largest_efraimidis_spirakis_keys(seed: int) -> None:
    values, weights = _data(seed)
    xs, ws = _merged(values, weights)
    k = 5
    u = torch.rand(len(xs), generator=_draws(seed), dtype=torch.float64).tolist()
    keys = [
        math.log(max(ui, 1e-300)) / w if w > 0 else -math.inf for ui, w in zip(u, ws, strict=True)
    ]
    best = sorted(range(len(xs)), key=lambda i: -keys[i])[:k]
    got = initial_centroids(init="forgy", k=k, seed=seed, **_tensors(values, weights))  # type: ignore[arg-type]
    assert got.tolist() == sorted(xs[i] for i in best)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [1, 3, 6])
def test_kmeanspp_init_is_weighted_d2_seeding(seed: int, k: int) -> None:
    values, weights = _data(seed)
    xs, ws = _merged(values, weights)
    gen = _draws(seed)
    d2 = [1] * len(xs)  # the first pick: in proportion to importance alone
    chosen: list[int] = []
    for _ in range(k):
        cdf = list(itertools.accumulate(w * d for w, d in zip(ws, d2, strict=True)))
        r = float(torch.rand(1, generator=gen, dtype=torch.float64)) * cdf[-1]
        i = min(next(j for j, c in enumerate(cdf) if c > r), len(xs) - 1)
        chosen.append(i)
        fresh = [(x - xs[i]) ** 2 for x in xs]
        d2 = fresh if len(chosen) == 1 else [min(a, b) for a, b in zip(d2, fresh, strict=True)]
    got = initial_centroids(init="kmeans++", k=k, seed=seed, **_tensors(values, weights))  # type: ignore[arg-type]
    assert got.tolist() == sorted(xs[i] for i in chosen)


def test_kmeanspp_on_a_sample_keeps_to_values_with_importance_and_pads_a_short_sample() -> None:
    # 2**17 + 2 distinct values (past the sample size): the importance of the even ones only
    n = (1 << 17) + 2
    values = torch.arange(n, dtype=torch.float32)
    weights = (torch.arange(n) % 2 == 0).to(torch.float32)
    got = initial_centroids(values, 8, weights=weights, init="kmeans++", seed=1)
    assert all(int(v) % 2 == 0 for v in got.tolist())  # the sample draws by importance
    # three values carry all but 1e-30 of the importance: the sample holds only them, the
    # seeding runs out after three picks and the last pick fills the other two places
    heavy = torch.full((n,), 1e-30)
    heavy[[10, 70_000, n - 1]] = 1.0  # the last value too: the sample must reach it
    got = initial_centroids(values, 5, weights=heavy, init="kmeans++", seed=3)
    assert set(got.tolist()) == {10.0, 70_000.0, float(n - 1)}
    assert sorted(got.tolist().count(v) for v in set(got.tolist())) == [1, 1, 3]
    result = kmeans_1d(values, 5, weights=heavy, init="kmeans++", seed=3, max_iter=3)
    assert result.k == 5  # Lloyd's empty-cluster rule separates the repeated start


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeanspp_seeds_on_all_values_up_to_the_sample_size(seed: int) -> None:
    # exactly 2**17 distinct values, equally important: no sample, so the first pick is the
    # first draw r at floor(r · n) (the first value whose cumulative count exceeds r · n)
    n = 1 << 17
    r = float(torch.rand(1, generator=_draws(seed), dtype=torch.float64))
    got = initial_centroids(torch.arange(n, dtype=torch.float32), 1, init="kmeans++", seed=seed)
    assert got.tolist() == [float(math.floor(r * n))]


@pytest.mark.parametrize("seed", [-(1 << 63), 0, (1 << 64) - 1])
def test_every_torch_seed_is_accepted(seed: int) -> None:
    got = initial_centroids(torch.arange(10.0), 3, init="forgy", seed=seed)
    assert got.numel() == 3


@pytest.mark.parametrize("seed", [True, 1.0, "1", -(1 << 63) - 1, 1 << 64])
def test_a_seed_torch_cannot_take_is_refused(seed: object) -> None:
    with pytest.raises(ConfigError, match=r"seed must be an integer from -2\*\*63 to 2\*\*64 - 1"):
        initial_centroids(torch.arange(10.0), 3, init="forgy", seed=seed)  # type: ignore[arg-type]


# --- the argument checks whose mutants survived ------------------------------------------


@pytest.mark.parametrize("bits", [2.5, "3", None, True, 0, 9])
def test_bits_to_k_refuses_anything_but_an_integer_from_1_to_8(bits: object) -> None:
    with pytest.raises(ConfigError, match="bits must be an integer from 1 to 8"):
        bits_to_k(bits)  # type: ignore[arg-type]


def test_float64_beyond_float32_is_named_at_its_index_in_any_rank() -> None:
    values = torch.tensor([0.0, 1.0, 1e300, -1e300], dtype=torch.float64)
    with pytest.raises(
        InvalidTensorError, match=r"x: 2 value\(s\) .* \(first at index 2: 1e\+300\)"
    ):
        check_float32_range("x", values)
    grid = values.reshape(2, 2)
    with pytest.raises(InvalidTensorError, match=r"first at index \[1, 0\]: 1e\+300"):
        check_float32_range("x", grid)
    with pytest.raises(InvalidTensorError, match=r"1 value\(s\) .*first at index \[1, 1\]"):
        check_float32_range("x", grid, torch.tensor([[True, True], [False, True]]))


def test_negative_importance_is_counted_and_named_zeros_are_not() -> None:
    values = torch.arange(5.0)
    weights = torch.tensor([0.0, 0.5, -2.0, 0.0, -0.5])
    with pytest.raises(
        InvalidTensorError,
        match=r"importance must be finite and >= 0: 2 negative value\(s\) \(first at index 2: -2",
    ):
        kmeans_1d(values, 2, weights=weights)


def test_float64_importance_that_is_zero_in_float32_is_refused() -> None:
    from deepzip.quantize.scalar import uniform_quantize

    weights = torch.full((4,), 1e-50, dtype=torch.float64)
    with pytest.raises(InvalidTensorError, match="importance is zero for every value in float32"):
        uniform_quantize(torch.arange(4.0), 2, weights=weights)


def test_tol_stops_when_no_centroid_moves_more_than_tol_inclusive() -> None:
    # traced by hand: start 1, 3, 15; midpoints 2 and 9 give {1}, {2, 4, 4} and
    # {11, 12, 13, 13, 14, 15, 19, 19}: means 1, 10/3 and 116/8 = 14.5. The largest move is
    # exactly 0.5 (15 -> 14.5): with tol = 0.5 Lloyd stops there, after one iteration
    values = torch.tensor([13.0, 4, 15, 19, 2, 4, 11, 13, 1, 19, 14, 12])
    start = torch.tensor([1.0, 3.0, 15.0])
    got = kmeans_1d(values, 3, init_centroids=start, tol=0.5)
    assert (got.iterations, got.converged) == (1, True)
    assert got.centroids.tolist() == [1.0, float(torch.tensor(10 / 3)), 14.5]
    # a hair less tolerance and it goes on (the partition still changes)
    assert kmeans_1d(values, 3, init_centroids=start, tol=0.4999).iterations > 1


def test_the_exact_optimum_reports_no_iterations_and_its_size_limit_is_inclusive() -> None:
    from deepzip.quantize.kmeans import OPTIMAL_MAX_VALUES, optimal_kmeans_1d

    got = optimal_kmeans_1d(torch.tensor([0.0, 1, 2, 10, 11, 12, 30, 31]), 3)
    assert got.centroids.tolist() == [1.0, 11.0, 30.5]  # by hand: the three groups' means
    assert (got.iterations, got.converged, got.sse) == (0, True, 4.5)
    values = torch.arange(OPTIMAL_MAX_VALUES, dtype=torch.float32) % 97
    assert optimal_kmeans_1d(values, 2).k == 2
    with pytest.raises(ConfigError, match=f"at most {OPTIMAL_MAX_VALUES} values"):
        optimal_kmeans_1d(torch.arange(OPTIMAL_MAX_VALUES + 1, dtype=torch.float32), 2)


def test_the_exact_optimum_leaves_values_of_zero_importance_out() -> None:
    from deepzip.quantize.kmeans import optimal_kmeans_1d

    values = torch.tensor([0.0, 1, 2, 5, 10, 11, 12, 50])
    weights = torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 0])  # 5 and 50 do not count
    got = optimal_kmeans_1d(values, 2, weights=weights)
    assert got.centroids.tolist() == [1.0, 11.0]
    assert got.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # each takes its nearest
    assert got.sse == 4.0
