"""Session 32: the relative index is built a block of the mask at a time (bounded memory on
large layers). Blocks must not change a single entry: compared with the whole-array
construction (the module docstring's rule, written out here), with blocks made tiny so that
runs of pruned positions and fillers cross block boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from deepzip.coding import sparse_index
from deepzip.coding.sparse_index import (
    encode_relative,
    filler_count,
    rank_widths,
)


def _whole(mask: np.ndarray, values: np.ndarray, width: int, filler: int) -> tuple[list, list]:
    """Entries of the relative index, one kept weight at a time (module docstring)."""
    gaps: list[int] = []
    out: list[int] = []
    last = -1
    for position, value in zip(np.flatnonzero(mask), values, strict=True):
        d = int(position) - last - 1
        for _ in range(d >> width):
            gaps.append((1 << width) - 1)
            out.append(filler)
        gaps.append(d - ((d >> width) << width))
        out.append(int(value))
        last = int(position)
    return gaps, out


def _masks(rng: np.random.Generator) -> list[np.ndarray]:
    out = [rng.random(200) < p for p in (0.0, 0.02, 0.3, 0.9, 1.0)]  # empty, sparse, dense, full
    runs = np.ones(300, dtype=bool)
    runs[5:150] = False  # one run of 145 (fillers at every width below 8)
    runs[151:152] = False
    runs[-40:] = False  # pruned at the end: no entry
    out.append(runs)
    out.append(rng.random((6, 7, 5)) < 0.2)  # any shape, C order
    return out


@pytest.mark.parametrize("block", [1, 3, 8, 64, 1 << 22])
def test_blocks_give_the_whole_arrays_entries(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparse_index, "_BLOCK", block)
    rng = np.random.default_rng(block)
    for mask in _masks(rng):
        kept = int(mask.sum())
        for filler in (3, 255, 256, 300):  # uint8 values up to filler 255
            values = rng.integers(0, filler, kept)
            for width in (1, 2, 5, 8, 16):
                index = encode_relative(mask, values, width, filler=filler)
                gaps, out = _whole(mask, values, width, filler)
                assert index.gaps.tolist() == gaps
                assert index.values.tolist() == out
                assert index.gaps.dtype == (np.uint8 if width <= 8 else np.uint16)
                assert index.values.dtype == (np.uint8 if filler <= 255 else np.uint16)
                assert filler_count(mask, width) == len(gaps) - kept


@pytest.mark.parametrize("block", [1, 5, 1 << 22])
def test_the_run_histogram_is_np_unique_of_the_runs_for_any_block(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    sparse = rng.random(5000) < 0.1
    long_runs = np.zeros(200_000, dtype=bool)  # runs past the short-run table (2**16)
    long_runs[[3, 70_000, 70_001, 140_002, 199_999]] = True
    edge = np.zeros(140_000, dtype=bool)  # runs of exactly 2**16 - 1 and 2**16
    edge[[0, 65_536, 131_073]] = True
    masks = [sparse, long_runs, edge, np.zeros(10, dtype=bool), np.ones(10, dtype=bool)]
    ranked = {}
    for i, m in enumerate(masks):
        ranked[i] = rank_widths(m, np.array([3, 1, int(m.sum()) - 4]) if m.sum() > 4 else None)
    monkeypatch.setattr(sparse_index, "_BLOCK", block)
    for i, m in enumerate(masks):
        skipped = np.diff(np.flatnonzero(m), prepend=-1) - 1
        runs, counts = np.unique(skipped, return_counts=True)
        got_runs, got_counts, kept = sparse_index._run_histogram(m)
        assert got_runs.tolist() == runs.tolist()
        assert got_counts.tolist() == counts.tolist()
        assert got_runs.dtype == np.int64
        assert got_counts.dtype == np.int64
        assert kept == int(m.sum())
        counts4 = np.array([3, 1, int(m.sum()) - 4]) if m.sum() > 4 else None
        assert rank_widths(m, counts4) == ranked[i]
