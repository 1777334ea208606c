"""ECSQ's assignment evaluates only the clusters that can win (deepzip.quantize.ecsq_assign).

It used to evaluate the whole weight × cluster cost matrix every round, O(n·k). The reference
below is that full-matrix round, written out: every result must be bit for bit the same.
"""

from __future__ import annotations

import pytest
import torch

from deepzip.errors import ConfigError
from deepzip.quantize import ecsq_assign, scalar
from deepzip.quantize.ecsq_assign import SortedBlocks
from deepzip.quantize.kmeans import check_inputs
from deepzip.quantize.scalar import ecsq_quantize


def _full_round(
    x: torch.Tensor, h: torch.Tensor, label: torch.Tensor, centre: torch.Tensor, lr: torch.Tensor
) -> torch.Tensor:
    """One assignment round over the whole cost matrix: argmin (first on a tie), and a weight
    whose own cluster costs no more keeps it."""
    cost = h[:, None] * (x[:, None] - centre[None, :]) ** 2
    cost += lr[None, :]
    best = torch.argmin(cost, dim=1)
    own = cost.gather(1, label[:, None]).squeeze(1)
    keep = own <= cost.gather(1, best[:, None]).squeeze(1)
    return torch.where(keep, label, best)


def _full_matrix_ecsq(
    values: torch.Tensor, k: int, lam: float, weights: torch.Tensor | None, max_iter: int
) -> tuple[torch.Tensor, int, bool]:
    """ECSQ's loop with :func:`_full_round`: the final labels (original order), the rounds
    run, and whether it settled."""
    w = check_inputs(values, k, weights).to(torch.float64)
    x = values.to(torch.float64)
    n = x.numel()
    h = w * scalar._distortion_scale(x, w)
    _, label = torch.unique(scalar._cells(values, k), return_inverse=True)
    sums_of = (w, w * x, x)
    for step in range(1, max_iter + 1):
        centre, rate = scalar._centres_and_rates(sums_of, label, n, x.device)
        new = _full_round(x, h, label, centre, lam * rate)
        used = torch.bincount(new, minlength=centre.numel()) > 0
        new = (torch.cumsum(used, 0) - 1)[new]
        if torch.equal(new, label):
            return label, step, True
        label = new
    return label, max_iter, False


def _values(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    if kind == "gauss":
        return torch.randn(n, generator=g) * 0.05
    if kind == "grid":  # many exact ties: values on a grid, centres at their means
        return torch.randint(-4, 5, (n,), generator=g).float() * 0.5
    if kind == "heavy":
        return torch.randn(n, generator=g) ** 3
    return torch.rand(n, generator=g) * 1e-30  # tiny: costs near underflow


def _importance(kind: str, n: int, g: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "skewed":
        imp = torch.rand(n, generator=g) ** 4
    elif kind == "zeros":  # a third of the weights of zero importance
        imp = torch.where(torch.rand(n, generator=g) < 0.3, 0.0, torch.rand(n, generator=g))
    else:  # small integers: equal importance, ties across weights
        imp = torch.randint(0, 3, (n,), generator=g).float()
    imp[0] = 1.0  # (never all zero)
    return imp


K_LAM = [(4, 0.0), (32, 0.05), (256, 0.3), (16, 5.0)]
CASES = [  # every kind of values with every kind of importance, k and λ in turn
    (values, importance, K_LAM[(i + j) % len(K_LAM)])
    for i, values in enumerate(["gauss", "grid", "heavy", "tiny"])
    for j, importance in enumerate(["none", "skewed", "zeros", "ints"])
]


PATHS = {
    "whole": {},  # small: one block, every cluster
    "blocks": {"SMALL": 0},  # sorted blocks, bounds; few candidates by column
    # every group by cost matrix and argmin, or column by column; two blocks at a time
    "blocks-matrix": {"SMALL": 0, "_LOOP": 0, "_CHUNK": 1024},
    "blocks-columns": {"SMALL": 0, "_LOOP": 1 << 30, "_CHUNK": 1024},
}


@pytest.fixture(params=list(PATHS))
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way ecsq_assign can evaluate a round (forced by its size constants)."""
    for name, value in PATHS[request.param].items():
        monkeypatch.setattr(ecsq_assign, name, value)
    if request.param == "blocks-matrix":  # and matrices of a few blocks at a time
        monkeypatch.setattr(ecsq_assign, "_COST_ELEMENTS", 512 * 40)
    return str(request.param)


@pytest.mark.parametrize(("values", "importance", "k_lam"), CASES)
def test_labels_match_the_full_cost_matrix(
    values: str, importance: str, k_lam: tuple[int, float], path: str
) -> None:
    k, lam = k_lam
    g = torch.Generator().manual_seed(len(CASES) * k + int(lam * 100))
    # 3 blocks of 512 and a partial one: the padding of the last block is exercised
    x = _values(values, 1800, g)
    w = _importance(importance, 1800, g)
    for max_iter in (1, 3, 60):
        labels, steps, settled = _full_matrix_ecsq(x, k, lam, w, max_iter)
        r = ecsq_quantize(x, k, lam, weights=w, max_iter=max_iter)
        assert (r.iterations, r.converged) == (steps, settled)
        # the result is _finish of those labels: the same partition, same centres
        expect = scalar._finish(x, w, labels, k, steps, settled, [])
        assert torch.equal(r.centroids, expect.centroids)
        assert torch.equal(r.labels, expect.labels)
        assert r.sse == expect.sse


def _blocks_round(
    x: torch.Tensor, h: torch.Tensor, label: torch.Tensor, centre: torch.Tensor, lr: torch.Tensor
) -> torch.Tensor:
    blocks = SortedBlocks(x, h, centre.numel(), banded=bool((h != h[0]).any()))
    return blocks.unsort(blocks.assign(blocks.sort(label), centre, lr))


@pytest.mark.parametrize("seed", range(40))
def test_one_round_matches_on_adversarial_clusters(seed: int, path: str) -> None:
    """Duplicate centres, equal rates, weights at exact midpoints, zero and huge importance:
    every tie resolves as the full matrix resolves it."""
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, 40, (1,), generator=g))
    centre = torch.randint(-6, 7, (k,), generator=g).double() * 0.25  # duplicates likely
    lr = torch.randint(0, 3, (k,), generator=g).double() * [0.0, 0.01, 1.0][seed % 3]
    n = int(torch.randint(1, 3000, (1,), generator=g))
    x = torch.randint(-30, 31, (n,), generator=g).double() * 0.125  # on and between centres
    h = [
        torch.ones(n, dtype=torch.float64),
        torch.randint(0, 4, (n,), generator=g).double(),
        torch.rand(n, generator=g, dtype=torch.float64) * 1e-12,
        torch.rand(n, generator=g, dtype=torch.float64) * 1e301,  # bounds overflow
    ][seed % 4]
    label = torch.randint(0, k, (n,), generator=g)
    assert torch.equal(_blocks_round(x, h, label, centre, lr), _full_round(x, h, label, centre, lr))


def test_few_candidates_per_block() -> None:
    """The point of it: for sorted weights, a block needs one or two clusters, not 64."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(1 << 16, generator=g) * 0.05).double()
    blocks = SortedBlocks(x, torch.full_like(x, 2.0), 64, banded=False)
    centre = torch.linspace(-0.2, 0.2, 64, dtype=torch.float64)
    count = blocks.candidates(centre, torch.zeros(64, dtype=torch.float64)).sum(1)
    assert int(count.min()) >= 1
    # (the two tail blocks span the sparse tails, and need more)
    assert float(count.double().mean()) <= 2.0
    # the middle block (values within about 0.001 of 0) needs only the two centres around 0
    mid = int(torch.nonzero((blocks.lo <= 0) & (blocks.hi >= 0))[0])
    cand = blocks.candidates(centre, torch.zeros(64, dtype=torch.float64))
    assert set(torch.nonzero(cand[mid]).flatten().tolist()) <= {31, 32}


@pytest.mark.parametrize("end", ["first", "last"])
@pytest.mark.parametrize("banded", [False, True])
def test_a_block_ends_outlier_keeps_its_own_cluster(end: str, banded: bool) -> None:
    """A block's range is its least and greatest value: an outlier at either end, alone near
    its own cluster, must still be offered that cluster."""
    x = torch.zeros(1024, dtype=torch.float64)
    x[0 if end == "first" else 511] = -10.0 if end == "first" else 10.0
    h = torch.ones_like(x) if not banded else torch.where(torch.arange(1024) % 2 == 0, 1.0, 3.0)
    centre = torch.tensor([-10.0, 0.0, 10.0], dtype=torch.float64)
    lr = torch.zeros(3, dtype=torch.float64)
    label = torch.ones(1024, dtype=torch.int64)
    blocks = SortedBlocks(x, h.double(), 1 << 20, banded=banded)  # (k large: blocks, not whole)
    got = blocks.unsort(blocks.assign(blocks.sort(label), centre, lr))
    expect = _full_round(x, h.double(), label, centre, lr)
    assert torch.equal(got, expect)
    assert int(got[0 if end == "first" else 511]) == (0 if end == "first" else 2)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_layer_of_one_value_is_one_level(weighted: bool) -> None:
    """No spread (σ² = 0): distortion is measured in units of the mean importance alone."""
    # (sums of 0.25 times small integers are exact: the variance is exactly 0)
    x = torch.full((700,), 0.25)
    w = (torch.arange(700) % 4).float() if weighted else None
    for lam in (0.0, 0.5):
        r = ecsq_quantize(x, 8, lam, weights=w)
        assert r.centroids.tolist() == [x[0].item()]
        assert torch.equal(r.labels, torch.zeros(700, dtype=torch.int64))
        assert (r.sse, r.iterations, r.converged) == (0.0, 1, True)


def test_lambda_must_be_a_number_not_a_bool() -> None:
    with pytest.raises(ConfigError, match="ECSQ lambda must be a finite number >= 0, got True"):
        ecsq_quantize(torch.randn(50), 4, True)


def test_a_tiny_total_importance_still_weights_the_mean() -> None:
    """σ² is the importance-weighted variance about the importance-weighted mean, whatever
    the importance's total (a Fisher estimate sums to far below 1): importance that favours
    one side gives the same result at any scale."""
    g = torch.Generator().manual_seed(9)
    x = torch.cat(
        [torch.randn(2000, generator=g) * 0.2 - 1.0, torch.randn(2000, generator=g) * 0.2 + 1.0]
    )
    imp = torch.where(x > 0, 1.0, 1e-3)
    results = [ecsq_quantize(x, 32, 0.05, weights=imp * scale) for scale in (1.0, 1e-9)]
    assert results[0].k > 4
    assert torch.equal(results[0].labels, results[1].labels)
    assert torch.equal(results[0].centroids, results[1].centroids)
