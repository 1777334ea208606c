"""Relative sparse index: the gap convention, fillers, every shape and width, hostile input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip.coding.sparse_index import (
    RelativeIndex,
    decode_relative,
    encode_relative,
    filler_count,
    rank_widths,
    width_candidates,
)
from deepzip.coding.streams import encode_symbols
from deepzip.errors import ConfigError, CorruptFileError, InvalidTensorError


def reference_entries(mask: np.ndarray, values: np.ndarray, width: int, filler: int) -> list:
    """The paper's procedure, one position at a time (independent of deepzip)."""
    limit = (1 << width) - 1
    entries = []
    pending = []  # fillers are written only when a kept weight follows
    run = 0
    it = iter(values.tolist())
    for kept in mask.reshape(-1).tolist():
        if kept:
            entries += [*pending, (run, next(it))]
            pending, run = [], 0
        elif run == limit:  # this pruned position becomes a filler entry
            pending.append((limit, filler))
            run = 0
        else:
            run += 1
    return entries


def test_worked_example() -> None:
    # kept at positions 1 and 9, width 2 (gaps up to 3): 7 pruned positions in between need
    # one filler (at position 5, gap 3), then the kept entry has gap 3.
    mask = np.zeros(10, dtype=bool)
    mask[[1, 9]] = True
    index = encode_relative(mask, np.array([4, 6]), 2, filler=8)
    assert index.gaps.tolist() == [1, 3, 3]
    assert index.values.tolist() == [4, 8, 6]
    assert index.gaps.dtype == np.uint8
    assert index.values.dtype == np.uint8
    positions, values = decode_relative(index, 10, filler=8, what="w")
    assert positions.tolist() == [1, 9]
    assert values.tolist() == [4, 6]


def test_gap_boundaries() -> None:
    for width in (1, 3, 5):
        g = 1 << width
        for skipped, fillers in ((g - 1, 0), (g, 1), (2 * g - 1, 1), (2 * g, 2), (6 * g - 1, 5)):
            mask = np.zeros(skipped + 1, dtype=bool)
            mask[-1] = True
            index = encode_relative(mask, np.array([0]), width, filler=1)
            assert index.entries == fillers + 1
            assert filler_count(mask, width) == fillers
            assert index.gaps.tolist() == [g - 1] * fillers + [skipped - fillers * g]
            assert decode_relative(index, mask.size, filler=1, what="b")[0].tolist() == [skipped]


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    ndim = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    density = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 0.95, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random(shape) < density


@settings(max_examples=150, deadline=None)
@given(mask=masks(), width=st.integers(1, 16), k=st.sampled_from([1, 2, 32, 256, 300]))
def test_round_trip_matches_the_reference(mask: np.ndarray, width: int, k: int) -> None:
    rng = np.random.default_rng(mask.size)
    values = rng.integers(0, k, int(mask.sum()))
    index = encode_relative(mask, values, width, filler=k)
    expect = reference_entries(mask, values, width, k)
    assert list(zip(index.gaps.tolist(), index.values.tolist(), strict=True)) == expect
    assert index.entries == mask.sum() + filler_count(mask, width)
    assert int(index.gaps.max(initial=0)) < 1 << width
    assert index.values.dtype == (np.uint8 if k <= 255 else np.uint16)
    positions, vals = decode_relative(index, mask.size, filler=k, what="t")
    assert np.array_equal(positions, np.flatnonzero(mask))
    assert np.array_equal(vals, values)
    dense = np.zeros(mask.size, dtype=np.int64)
    dense[positions] = vals + 1
    assert np.array_equal(dense.reshape(mask.shape) > 0, mask)


def test_long_sparse_gaps_and_edge_masks() -> None:
    mask = np.zeros(100_000, dtype=bool)
    mask[[0, 99_999]] = True
    index = encode_relative(mask, np.array([1, 2]), 4, filler=3)
    assert index.entries == 2 + 99_998 // 16
    assert decode_relative(index, mask.size, filler=3, what="x")[0].tolist() == [0, 99_999]
    for m in (np.zeros((0, 4), dtype=bool), np.zeros((3, 3), dtype=bool)):
        idx = encode_relative(m, np.zeros(0, dtype=np.uint8), 5, filler=2)
        assert idx.entries == 0
        pos, vals = decode_relative(idx, m.size, filler=2, what="x")
        assert pos.size == 0
        assert vals.size == 0
    full = np.ones((4, 5), dtype=bool)
    idx = encode_relative(full, np.arange(20) % 4, 1, filler=4)
    assert idx.gaps.tolist() == [0] * 20


def test_encode_rejects_bad_input() -> None:
    mask = np.array([True, False, True])
    with pytest.raises(ConfigError, match="width"):
        encode_relative(mask, np.array([0, 1]), 0, filler=2)
    with pytest.raises(ConfigError, match="width"):
        encode_relative(mask, np.array([0, 1]), 17, filler=2)
    with pytest.raises(ConfigError, match="filler"):
        encode_relative(mask, np.array([0, 1]), 4, filler=70000)
    with pytest.raises(InvalidTensorError, match="boolean"):
        encode_relative(mask.astype(int), np.array([0, 1]), 4, filler=2)
    with pytest.raises(InvalidTensorError, match="3 values for 2"):
        encode_relative(mask, np.array([0, 1, 1]), 4, filler=2)
    with pytest.raises(InvalidTensorError, match="filler 2"):
        encode_relative(mask, np.array([0, 2]), 4, filler=2)
    with pytest.raises(InvalidTensorError, match="integers"):
        encode_relative(mask, np.array([0.0, 1.0]), 4, filler=2)


@pytest.mark.parametrize(
    ("gaps", "values", "width", "numel", "message"),
    [
        ([0, 1], [0, 1], 0, 10, "width"),
        ([0, 1], [0, 1], 17, 10, "width"),
        ([0, 1], [0], 4, 10, "2 gaps but 1 values"),
        ([0, 16], [0, 1], 4, 100, "does not fit in 4 bits"),
        ([0, 1], [0, 5], 4, 10, "above the filler"),
        ([5, 5], [0, 1], 4, 11, "reaches position 11"),
        ([0, 0, 0], [0, 0, 0], 4, 2, "3 entries for a tensor of 2"),
    ],
)
def test_decode_rejects_hostile_indices(
    gaps: list[int], values: list[int], width: int, numel: int, message: str
) -> None:
    index = RelativeIndex(np.array(gaps, np.uint16), np.array(values, np.uint16), width)
    with pytest.raises(CorruptFileError, match=message):
        decode_relative(index, numel, filler=3, what="tensor 'fc1.weight' index")


def _index_bytes(mask: np.ndarray, values: np.ndarray, k: int, width: int, coder: str) -> int:
    index = encode_relative(mask, values, width, filler=k)
    gaps = encode_symbols(index.gaps, 1 << width, coder=coder)  # type: ignore[arg-type]
    vals = encode_symbols(index.values, k + 1, coder=coder)  # type: ignore[arg-type]
    return gaps.nbytes + vals.nbytes


@pytest.mark.parametrize("coder", ["auto", "huffman", "ans", "raw"])
@pytest.mark.parametrize(
    ("n", "density", "k", "clustered"),
    [
        (200_000, 0.001, 16, False),  # very sparse: wide gaps, and width 1 is all fillers
        (20_000, 0.001, 4, False),
        (50, 0.05, 32, False),  # short streams: the symbol tables matter
        (2_000, 0.01, 256, False),
        (50_000, 0.07, 4, False),  # a pruned fully connected layer
        (30_000, 0.3, 16, True),  # runs of kept weights
        (5_000, 0.9, 2, False),
    ],
)
def test_rank_widths_puts_the_smallest_index_first(
    n: int, density: float, k: int, clustered: bool, coder: str
) -> None:
    rng = np.random.default_rng(n + k)
    if clustered:
        mask = np.zeros(n, dtype=bool)
        for start in rng.integers(0, n, size=int(n * density / 10)):
            mask[start : start + 10] = True
    else:
        mask = rng.random(n) < density
    values = rng.integers(0, k, size=int(mask.sum()))
    counts = np.bincount(values, minlength=k)
    ranked = rank_widths(mask, counts, coder=coder)  # type: ignore[arg-type]
    assert sorted(ranked) == list(range(1, 17))
    candidates = width_candidates(mask, counts, coder=coder)  # type: ignore[arg-type]
    assert candidates == ranked[: len(candidates)]
    assert len(candidates) == 1 or coder in ("auto", "ans")
    sizes = {w: _index_bytes(mask, values, k, w, coder) for w in range(1, 17)}
    chosen = min(sizes[w] for w in candidates)
    if coder in ("huffman", "raw"):  # their sizes are estimated exactly
        assert chosen == min(sizes.values()), (ranked, sizes)
    else:  # ANS's estimate can be 4 bytes off per stream; only tiny indexes come that close
        assert chosen <= min(sizes.values()) + 8, (ranked, sizes)
        if mask.sum() > 1000:
            assert chosen == min(sizes.values()), (ranked, sizes)


def test_rank_widths_with_raw_values_counts_the_fillers() -> None:
    mask = np.zeros(100_000, dtype=bool)
    mask[::1000] = True  # gaps of 999: one filler per kept weight below 10 bits
    ranked = rank_widths(mask, value_bits=32)
    assert ranked[0] == 10  # the narrowest width that needs no filler (each costs 32 bits)
    assert width_candidates(mask, value_bits=32, coder="huffman") == [10]
    with pytest.raises(InvalidTensorError, match="mask must be boolean"):
        rank_widths(mask.astype(np.uint8))
