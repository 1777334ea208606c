"""Deep Compression's relative sparse index (Han et al. 2016, Fig. 2).

A pruned tensor is flattened in C order and stored as a list of *entries* in position order:
each entry has a *gap* (a ``width``-bit unsigned integer) and a *value* (a symbol).

**Gap convention.** An entry's gap is the number of positions skipped since the previous
entry, so entry ``j`` sits at position ``p[j] = p[j-1] + gap[j] + 1`` with ``p[-1] = -1``; in
closed form ``p = cumsum(gap + 1) - 1``. The first entry's gap is therefore its own position,
and two adjacent kept weights have gap 0. Positions after the last entry are pruned.

**Fillers.** A gap holds at most ``G = 2**width - 1``. When ``d`` pruned positions precede a
kept weight and ``d > G``, the writer inserts ``f = floor(d / 2**width)`` filler entries first,
each with gap ``G`` and the value ``filler`` (it stands on a pruned position, a "filler zero");
the kept weight's entry then has gap ``d - f * 2**width``. Fillers are counted in both streams
(gaps and values). The caller reserves the filler symbol: with ``k`` clusters the values use
symbols ``0..k-1`` and ``filler = k`` (an alphabet of ``k + 1``).

The decoder drops every entry whose value is ``filler``; it accepts fillers anywhere (even
where a gap would have fit), so the only requirements on a stored index are that every gap fits
in ``width`` bits, every value is at most ``filler``, and the last entry lies inside the tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from deepzip.coding.streams import estimated_size
from deepzip.config import CoderName, check_coder
from deepzip.errors import ConfigError, CorruptFileError, InvalidTensorError

__all__ = [
    "MAX_WIDTH",
    "MIN_WIDTH",
    "RelativeIndex",
    "decode_relative",
    "encode_relative",
    "filler_count",
    "rank_widths",
    "width_candidates",
]

MIN_WIDTH = 1
MAX_WIDTH = 16
_MAX_FILLER = (1 << 16) - 1


@dataclass(frozen=True)
class RelativeIndex:
    """A relative index (module docstring).

    Attributes:
        gaps: uint8 (``width <= 8``) or uint16 gaps, each ``< 2**width``.
        values: one symbol per entry, for kept weights and fillers alike (uint8 when the
            filler symbol is at most 255, else uint16).
        width: bits per gap, ``1..16``.
    """

    gaps: np.ndarray
    values: np.ndarray
    width: int

    @property
    def entries(self) -> int:
        """Number of entries, fillers included."""
        return int(self.gaps.size)


def _check_width(width: int, exc: type[Exception], what: str) -> None:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)):
        raise exc(f"{what}: index width must be an integer, got {width!r}")
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        raise exc(f"{what}: index width must be in [{MIN_WIDTH}, {MAX_WIDTH}], got {width}")


def _check_filler(filler: int, exc: type[Exception], what: str) -> None:
    if isinstance(filler, bool) or not isinstance(filler, (int, np.integer)):
        raise exc(f"{what}: filler must be an integer, got {filler!r}")
    if not 0 <= filler <= _MAX_FILLER:
        raise exc(f"{what}: filler symbol must be in [0, {_MAX_FILLER}], got {filler}")


# Mask elements per block of _skipped_blocks: the int64 work arrays of a block take 32 MiB each
# whatever the tensor's size (a whole 8192 x 8192 layer's took 512 MiB each).
_BLOCK = 1 << 22


def _skipped_blocks(mask: np.ndarray) -> Iterator[np.ndarray]:
    """The number of pruned positions before each kept one (C order), as int64 arrays, one
    block of the mask at a time; joined, the blocks are ``diff(flatnonzero(mask), prepend=-1)
    - 1``. Blocks without a kept position yield nothing."""
    flat = mask.reshape(-1)
    last = -1  # the previous kept position
    for start in range(0, flat.size, _BLOCK):
        positions = np.flatnonzero(flat[start : start + _BLOCK])
        if positions.size == 0:
            continue
        positions += start
        skipped = np.diff(positions, prepend=last)
        skipped -= 1
        last = int(positions[-1])
        yield skipped


def filler_count(mask: np.ndarray, width: int) -> int:
    """How many filler entries :func:`encode_relative` will insert for ``mask``."""
    _check_width(width, ConfigError, "relative index")
    m = np.asarray(mask, dtype=bool)
    return sum(int(np.sum(skipped >> width)) for skipped in _skipped_blocks(m))


# Runs of pruned positions shorter than this are counted in a table; the longer (rare) ones
# are sorted.
_SHORT_RUN = 1 << 16


def _run_histogram(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The distinct lengths of the runs of pruned positions before each kept position
    (ascending, int64), how often each occurs, and the number of kept positions: what
    ``np.unique(skipped, return_counts=True)`` gives, in memory bounded by a block."""
    short = np.zeros(_SHORT_RUN, dtype=np.int64)
    long_runs: list[np.ndarray] = []
    kept = 0
    for skipped in _skipped_blocks(mask):
        kept += skipped.size
        is_long = skipped >= _SHORT_RUN
        if is_long.any():
            long_runs.append(skipped[is_long])
            skipped = skipped[~is_long]
        short += np.bincount(skipped, minlength=_SHORT_RUN)
    runs = np.flatnonzero(short)
    counts = short[runs]
    if long_runs:
        long_values, long_counts = np.unique(np.concatenate(long_runs), return_counts=True)
        runs = np.concatenate([runs, long_values])
        counts = np.concatenate([counts, long_counts])
    return runs, counts, kept


_SHORTLIST = 4  # widths whose size rank_widths estimates in full (ANS's model included)
ANS_SLACK = 8
"""Bytes by which ``estimated_size`` may misjudge an index's two streams under ANS (4 each)."""


def _ranked(
    mask: np.ndarray, value_counts: np.ndarray | None, value_bits: int, coder: CoderName
) -> list[tuple[int, float]]:
    """(width, estimated bytes) for every width, best first (see :func:`rank_widths`)."""
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise InvalidTensorError(f"relative index: mask must be boolean, got {m.dtype}")
    check_coder(coder)
    # the distinct runs of pruned positions and how often each occurs: one pass over the
    # tensor, then every width works on these few numbers
    runs, run_counts, kept = _run_histogram(m)
    counts = None if value_counts is None else np.asarray(value_counts, dtype=np.int64)
    streams: dict[int, tuple[np.ndarray, np.ndarray | None, int]] = {}
    for width in range(MIN_WIDTH, MAX_WIDTH + 1):
        fillers = int(np.dot(runs >> width, run_counts))
        gap_counts = np.bincount(
            runs & ((1 << width) - 1), weights=run_counts, minlength=1 << width
        ).astype(np.int64)
        gap_counts[-1] += fillers
        values = None if counts is None else np.append(counts, fillers)
        raw_values = 0 if values is not None else ((kept + fillers) * value_bits + 7) // 8
        streams[width] = (gap_counts, values, raw_values)

    def size(width: int, estimate: Callable[[np.ndarray], float]) -> float:
        gap_counts, values, raw_values = streams[width]
        return estimate(gap_counts) + (raw_values if values is None else estimate(values))

    quick = sorted(
        (size(w, lambda c: estimated_size(c, coder=coder, quick=True)), w) for w in streams
    )
    exact = sorted(
        (size(w, lambda c: estimated_size(c, coder=coder)), w) for _, w in quick[:_SHORTLIST]
    )
    return [(w, est) for est, w in exact + quick[_SHORTLIST:]]


def rank_widths(
    mask: np.ndarray,
    value_counts: np.ndarray | None = None,
    *,
    value_bits: int = 0,
    coder: CoderName = "auto",
) -> list[int]:
    """Every gap width, ``1..16``, smallest estimated index first (ties: the narrower).

    The estimate is the size of both streams of :func:`encode_relative` at each width, from
    their histograms without building or coding the index: a width ``w`` gives each kept
    weight that follows ``d`` pruned positions ``d >> w`` fillers (gap ``2**w - 1``, value the
    filler) and the gap ``d mod 2**w``. All widths are ranked first by the quick
    ``deepzip.coding.streams.estimated_size``; the best four of those are then ranked by the
    full one (ANS's model and quantised weights included) and come first.

    Args:
        mask: bool array (flattened in C order); ``True`` = kept.
        value_counts: how many kept weights have each value symbol ``0..k-1`` (the filler is
            symbol ``k``); ``None`` when the values are stored raw.
        value_bits: bits of each stored raw value, when ``value_counts`` is ``None`` (a
            filler costs a value too).
        coder: the coder of the streams, as for ``encode_symbols``.

    Raises:
        InvalidTensorError: ``mask`` is not boolean.
        ConfigError: a bad ``coder``.
    """
    return [w for w, _ in _ranked(mask, value_counts, value_bits, coder)]


def width_candidates(
    mask: np.ndarray,
    value_counts: np.ndarray | None = None,
    *,
    value_bits: int = 0,
    coder: CoderName = "auto",
) -> list[int]:
    """The gap widths worth encoding to find the smallest index: the best of
    :func:`rank_widths`, and the second when ANS may code the streams and its estimate is
    within :data:`ANS_SLACK` bytes (ANS's estimate can be off by that much; Huffman's and
    raw sizes are exact). Same arguments as :func:`rank_widths`."""
    ranked = _ranked(mask, value_counts, value_bits, coder)
    (best, size), (second, size2) = ranked[0], ranked[1]
    if coder in ("auto", "ans") and size2 - size <= ANS_SLACK:
        return [best, second]
    return [best]


def encode_relative(
    mask: np.ndarray, values: np.ndarray, width: int, *, filler: int
) -> RelativeIndex:
    """Build the relative index of the kept positions of ``mask``.

    Args:
        mask: bool array of any shape (flattened in C order); ``True`` = kept.
        values: the symbols of the kept positions in C order (one per ``True``), each in
            ``[0, filler)``.
        width: bits per gap, ``1..16`` (paper: 5 for fully connected layers, 8 for conv).
        filler: the reserved filler symbol (the alphabet's extra symbol ``k``).

    Returns:
        The index; ``entries == mask.sum() + filler_count(mask, width)``.

    Raises:
        ConfigError: bad ``width`` or ``filler``.
        InvalidTensorError: ``mask`` is not boolean, or ``values`` has the wrong length, is not
            integer, or holds a symbol outside ``[0, filler)``.
    """
    _check_width(width, ConfigError, "relative index")
    _check_filler(filler, ConfigError, "relative index")
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise InvalidTensorError(f"relative index: mask must be boolean, got {m.dtype}")
    vals = np.asarray(values).reshape(-1)
    if vals.dtype.kind not in "ui":
        raise InvalidTensorError(f"relative index: values must be integers, got {vals.dtype}")
    n = int(np.count_nonzero(m))
    if vals.size != n:
        raise InvalidTensorError(f"relative index: {vals.size} values for {n} kept positions")
    if n and (int(vals.min()) < 0 or int(vals.max()) >= filler):
        raise InvalidTensorError(
            f"relative index: values must be in [0, {filler}) (filler {filler}), got range "
            f"[{int(vals.min())}, {int(vals.max())}]"
        )
    gap_dtype = np.uint8 if width <= 8 else np.uint16
    val_dtype = np.uint8 if filler <= 255 else np.uint16
    gap_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    done = 0  # kept weights encoded so far
    # a block of kept weights at a time: the entries of each are those of its weights, in order
    for skipped in _skipped_blocks(m):  # pruned positions before each kept one
        block_vals = vals[done : done + skipped.size]
        done += skipped.size
        fillers = skipped >> width  # floor(d / 2**width)
        n_fillers = int(fillers.sum())
        if n_fillers == 0:  # every gap fits: one entry per kept weight
            gap_parts.append(skipped.astype(gap_dtype))
            value_parts.append(block_vals.astype(val_dtype))
            continue
        slot = np.cumsum(fillers)  # entry index of each kept weight in the block
        slot += np.arange(skipped.size, dtype=np.int64)
        total = skipped.size + n_fillers
        gaps = np.full(total, (1 << width) - 1, dtype=gap_dtype)
        skipped -= fillers << width
        gaps[slot] = skipped.astype(gap_dtype)
        out_values = np.full(total, filler, dtype=val_dtype)
        out_values[slot] = block_vals.astype(val_dtype)
        gap_parts.append(gaps)
        value_parts.append(out_values)
    return RelativeIndex(
        gaps=_joined(gap_parts, gap_dtype), values=_joined(value_parts, val_dtype), width=int(width)
    )


def _joined(parts: list[np.ndarray], dtype: type[np.unsignedinteger]) -> np.ndarray:
    """The blocks' entries as one array (the block itself when there is one)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def decode_relative(
    index: RelativeIndex, numel: int, *, filler: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and values of the kept weights of a (hostile) relative index.

    Args:
        index: gaps, values and width, e.g. decoded from a file.
        numel: the tensor's number of elements.
        filler: the filler symbol.
        what: names the index in error messages (e.g. ``"tensor 'fc1.weight' index"``).

    Returns:
        ``(positions, values)``: int64 flat C-order positions, strictly increasing and below
        ``numel``, and the values of those positions (fillers dropped).

    Raises:
        CorruptFileError: a bad width, mismatched lengths, a gap that does not fit, a value
            above ``filler``, or an entry past the end of the tensor.
    """
    _check_width(index.width, CorruptFileError, what)
    _check_filler(filler, CorruptFileError, what)
    if numel < 0:
        raise CorruptFileError(f"{what}: negative element count {numel}")
    gaps = np.asarray(index.gaps).reshape(-1)
    vals = np.asarray(index.values).reshape(-1)
    if gaps.dtype.kind not in "ui" or vals.dtype.kind not in "ui":
        raise CorruptFileError(f"{what}: gaps and values must be integers")
    if gaps.size != vals.size:
        raise CorruptFileError(f"{what}: {gaps.size} gaps but {vals.size} values")
    if gaps.size > numel:
        raise CorruptFileError(f"{what}: {gaps.size} entries for a tensor of {numel} elements")
    if gaps.size == 0:
        return np.zeros(0, dtype=np.int64), vals
    if int(gaps.min()) < 0:  # (signed streams only: a file's are unsigned)
        raise CorruptFileError(f"{what}: negative gap {int(gaps.min())}")
    if int(gaps.max()) >= 1 << index.width:
        raise CorruptFileError(f"{what}: gap {int(gaps.max())} does not fit in {index.width} bits")
    if int(vals.min()) < 0:
        raise CorruptFileError(f"{what}: negative index value {int(vals.min())}")
    if int(vals.max()) > filler:
        raise CorruptFileError(
            f"{what}: index value {int(vals.max())} is above the filler symbol {filler}"
        )
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if int(positions[-1]) >= numel:
        raise CorruptFileError(
            f"{what}: index reaches position {int(positions[-1])}, the tensor has {numel} elements"
        )
    keep = vals != filler
    return positions[keep], vals[keep]
