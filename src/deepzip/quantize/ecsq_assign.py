"""ECSQ's assignment step without the whole weight × cluster cost matrix.

Each round of :func:`~deepzip.quantize.scalar.ecsq_quantize` moves every weight ``x`` (with
scaled importance ``h``) to the cluster ``j`` of least cost ``h·(x − c_j)² + λ·r_j`` (``r_j =
−log2 p_j``), the lowest such ``j`` on a tie, and keeps it where it is when its own cluster
costs no more. Evaluating all ``k`` clusters for every weight is O(n·k) per round.

:class:`SortedBlocks` sorts the weights once (by importance band, then by value) and cuts them
into blocks of consecutive weights. Over a block, whose values lie in ``[a, b]`` and whose
importances in ``[h_lo, h_hi]``, cluster ``j`` costs at least ``h_lo·dist(c_j, [a, b])² +
λ·r_j`` and the cheapest cluster at most ``min_j h_hi·maxdist(c_j, [a, b])² + λ·r_j``; a
cluster whose lower bound exceeds that upper bound (by a relative margin of 1e-9, far above
float64 rounding) can never be the least computed cost of any weight in the block, nor tie
with it. Only the other clusters (usually one to three) are evaluated, with the same float64
expression in the same cluster order, so the labels are bit for bit those of the full matrix.

The margin argument: every term is >= 0 (``h >= 0``, ``r_j >= 0`` since ``p_j <= 1``), so
each computed cost is within a few units in the last place of its exact value, relative to
itself; the bounds are computed the same way. A block whose upper bound is not finite (or
near overflow) evaluates every cluster.

A small layer (``n·k`` up to :data:`SMALL`) is one block in its own order, every cluster
evaluated: sorting and bounding would cost more than they save.
"""

from __future__ import annotations

import torch

__all__ = ["SortedBlocks"]

_MARGIN = 1e-9
"""Relative slack on the bounds, far above the few ulps of float64 rounding in the costs."""

_TINY = 1e-300
"""Absolute slack on the bounds, for costs that underflow."""

_HUGE = 1e300
"""An upper bound at or above this (or not finite) evaluates every cluster in the block."""

SMALL = 1 << 20
"""Most weights × clusters evaluated whole, without sorting or bounds."""

_MIN_BLOCK = 512
"""Fewest weights in a block."""

_MAX_BLOCKS = 1 << 15
"""Most blocks (a larger layer has larger blocks), which bounds the candidate table."""

_LOOP = 4
"""Most candidates evaluated one cluster at a time; more go to one cost matrix and argmin."""

_COST_ELEMENTS = 1 << 22
"""Most entries of a cost matrix held at once."""

_CHUNK = 1 << 20
"""Most weights evaluated at once (each takes a few float64 temporaries)."""


class SortedBlocks:
    """The weights of one ECSQ run, sorted and cut into blocks (see the module doc).

    Args:
        x: the values, float64, 1-D.
        h: their scaled importance, float64, >= 0, same shape and device.
        k: the most clusters there will be.
        banded: True when ``h`` varies (importance was given): weights are grouped into
            bands of importance within a factor of 4 before sorting by value, so that a
            block's ``h_lo`` and ``h_hi`` stay close. False when every ``h`` is the same:
            only ``h[0]`` is read.
    """

    def __init__(self, x: torch.Tensor, h: torch.Tensor, k: int, *, banded: bool) -> None:
        n = x.numel()
        self.n = n
        self.whole = n * k <= SMALL
        if self.whole:  # one block, in the weights' own order
            self.block, order = n, torch.arange(n, device=x.device)
        else:
            self.block = max(_MIN_BLOCK, -(-n // _MAX_BLOCKS))
            order = torch.argsort(x, stable=True)
            if banded:
                # band: exponent of h in steps of 4; zero importance is a band of its own
                band = torch.frexp(h).exponent.div(2, rounding_mode="floor")
                band = torch.where(h > 0, band, band.min() - 1)
                order = order[torch.argsort(band[order], stable=True)]
        self.order = order
        self.shape = (-(-n // self.block), self.block)
        index = self._padded(order)
        self.xs = x[index].view(self.shape)
        # (one importance for all: a broadcast view, no copy)
        self.hs = h[index].view(self.shape) if banded else h[:1].view(1, 1).expand(self.shape)
        del index
        # (without bands, sorted values: each block's first and last are its range)
        self.lo, self.hi = self.xs[:, 0], self.xs[:, -1]
        if banded or self.whole:
            self.lo, self.hi = self.xs.amin(1), self.xs.amax(1)
        self.h_lo, self.h_hi = self.hs.amin(1), self.hs.amax(1)

    def _padded(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` (n,) padded to whole blocks by repeating its last element (whose rows are
        dropped again by :meth:`unsort`)."""
        pad = self.shape[0] * self.shape[1] - self.n
        return torch.cat([v, v[-1:].expand(pad)]) if pad else v

    def candidates(self, centre: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """(blocks, k) bool: the clusters that can be a block's least cost (module doc)."""
        if self.whole:
            return torch.ones((1, centre.numel()), dtype=torch.bool, device=centre.device)
        c = centre[None, :]
        lo, hi = self.lo[:, None], self.hi[:, None]
        near = torch.maximum((lo - c).clamp(min=0), (c - hi).clamp(min=0))
        far = torch.maximum((lo - c).abs(), (c - hi).abs())
        lower = self.h_lo[:, None] * near**2 + lr[None, :]
        upper = (self.h_hi[:, None] * far**2 + lr[None, :]).amin(1, keepdim=True)
        cand = lower <= upper * (1 + _MARGIN) + _TINY
        return cand | ~(upper < _HUGE)

    def sort(self, label: torch.Tensor) -> torch.Tensor:
        """``label`` (original order) in block order, (blocks, block)."""
        return label[self._padded(self.order)].view(self.shape)

    def unsort(self, sorted_label: torch.Tensor) -> torch.Tensor:
        """Block-order labels back in the original order, (n,)."""
        if self.whole:
            return sorted_label.flatten()
        out = torch.empty(self.n, dtype=sorted_label.dtype, device=sorted_label.device)
        out[self.order] = sorted_label.flatten()[: self.n]
        return out

    def assign(self, label: torch.Tensor, centre: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """One assignment round: each weight's new cluster, in block order.

        ``label`` is each weight's current cluster in block order (:meth:`sort`), ``centre``
        the cluster centres and ``lr`` their ``λ·r_j`` (float64, on the weights' device).
        """
        new = torch.empty_like(label)
        cand = self.candidates(centre, lr)
        count = cand.sum(1)
        by_count = torch.argsort(count, stable=True)
        sizes, runs = torch.unique_consecutive(count[by_count], return_counts=True)
        chunk = max(1, _CHUNK // self.block)  # (blocks at a time: bounded temporaries)
        start = 0
        for size, run in zip(sizes.tolist(), runs.tolist(), strict=True):
            # each block's candidate clusters, in increasing order (row-major nonzero)
            group = by_count[start : start + run]
            pick = torch.nonzero(cand[group])[:, 1].view(run, size)
            start += run
            for first in range(0, run, chunk):
                blocks, cols = group[first : first + chunk], pick[first : first + chunk]
                x, h = self.xs[blocks], self.hs[blocks]
                least = _least_by_column if size <= _LOOP else _least_by_matrix
                best, best_cost = least(x, h, cols, centre, lr)
                # a weight whose own cluster costs no more stays there (only those not
                # already in their best cluster need their own cost)
                own = label[blocks]
                moved = torch.nonzero(own != best, as_tuple=True)
                mine = own[moved]
                stay = _cost(x[moved], h[moved], centre[mine], lr[mine]) <= best_cost[moved]
                best[moved] = torch.where(stay, mine, best[moved])
                new[blocks] = best.to(new.dtype)
        return new


def _cost(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """``h·(x − c)² + λ·r``, in the float64 operations and order of the full cost matrix."""
    cost = h * (x - c) ** 2
    cost += lr
    return cost


def _least_by_column(
    x: torch.Tensor, h: torch.Tensor, pick: torch.Tensor, centre: torch.Tensor, lr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each weight's first cluster of least cost among its block's ``pick`` (blocks, size),
    and that cost: one candidate at a time, each compared with the best so far."""
    best = pick[:, :1].expand(x.shape).contiguous()
    best_cost = _cost(x, h, centre[pick[:, :1]], lr[pick[:, :1]])
    for j in range(1, pick.shape[1]):
        cost = _cost(x, h, centre[pick[:, j : j + 1]], lr[pick[:, j : j + 1]])
        lower = cost < best_cost  # (strictly: the first of equal costs stays, as in argmin)
        best = torch.where(lower, pick[:, j : j + 1], best)
        best_cost = torch.where(lower, cost, best_cost)
    return best, best_cost


def _least_by_matrix(
    x: torch.Tensor, h: torch.Tensor, pick: torch.Tensor, centre: torch.Tensor, lr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`_least_by_column` computes, with one (blocks, block, size) cost matrix
    and argmin (the first least), a few blocks at a time."""
    best, best_cost = [], []
    step = max(1, _COST_ELEMENTS // (x.shape[1] * pick.shape[1]))
    for first in range(0, x.shape[0], step):
        rows = slice(first, first + step)
        cols = pick[rows]
        cost = _cost(x[rows, :, None], h[rows, :, None], centre[cols][:, None], lr[cols][:, None])
        at = torch.argmin(cost, dim=2)
        best.append(cols.gather(1, at))
        best_cost.append(cost.gather(2, at[:, :, None]).squeeze(2))
    return torch.cat(best), torch.cat(best_cost)
