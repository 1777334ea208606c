"""Near-optimal entropy coding with asymmetric numeral systems (the ``constriction`` package).

The model is a table of integer weights, one per used symbol, that sum to exactly
``2**precision`` (``1 <= precision <= 24``); the file stores these integers, so encoder and
decoder build the same model on every machine. The used symbols, in increasing order, get
ranks ``0..m-1``, and ranks are coded with constriction's stack ``AnsCoder`` (32-bit words,
64-bit state, 24-bit model precision) and a ``Categorical`` model whose weights are the stored
integers times ``2**(24 - precision)``.

Building that model from integers is exact: ``Categorical(p, perfect=False)`` gives symbol
``r`` the weight ``floor(C[r+1] * s) - floor(C[r] * s) + 1`` with ``C`` the running sum of
``p`` and ``s = (2**24 - m) / sum(p)``. Passing ``p[r] = weight[r] - 1`` makes ``s == 1`` and
every ``C`` an integer below ``2**24`` (exact in float32 and float64), so the model's weights
are the given integers, bit for bit.

Symbols are pushed in reverse (``encode_reverse``) so that decoding pops them in order; the
payload is ``get_compressed()`` as little-endian uint32 words. After decoding every symbol the
coder must be empty. A one-symbol model (``precision == 0``, weight 1) codes nothing: the
payload is empty.
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from deepzip.coding.huffman import output_dtype
from deepzip.coding.portable_math import log2, sum_of_products
from deepzip.errors import CorruptFileError

__all__ = [
    "CONSTRICTION_PRECISION",
    "MAX_PRECISION",
    "check_payload_size",
    "choose_precision",
    "decode",
    "encode",
    "estimated_bits",
    "quantize_counts",
]

CONSTRICTION_PRECISION = 24
"""The fixed-point precision of constriction's default ``AnsCoder`` models."""

MAX_PRECISION = CONSTRICTION_PRECISION
"""The largest ``precision`` a stored model may have."""

_CHUNK = 1 << 20  # symbols converted to int32 ranks at a time
_MAX_SAFE_TOTAL = 1 << 38  # counts * 2**24 stays below 2**63


def quantize_counts(counts: np.ndarray, precision: int) -> np.ndarray:
    """Integer weights summing to ``2**precision``, proportional to ``counts``.

    Every symbol with a non-zero count gets a weight of at least 1; unused symbols get 0.
    Deterministic integer arithmetic: floor of ``count * 2**precision / total``, then the
    leftover units go to the largest remainders (ties: lower symbol), or, when raising small
    weights to 1 overshot, units are taken back one at a time from the symbol where that
    costs least, ``count / (weight - 1/2)`` compared as exact fractions (ties: lower symbol).
    Counts that sum to ``2**38`` or more are first scaled down (so that ``count * 2**24``
    stays below ``2**63``): each becomes ``ceil(count / 2**s)`` with
    ``s = bit_length(total // 2**38)``, and the rule applies to those.

    Args:
        counts: non-negative integer counts (1-D), at least one non-zero.
        precision: ``0..MAX_PRECISION``; ``2**precision`` must be at least the number of used
            symbols, and ``precision == 0`` only for a single used symbol.

    Returns:
        int64 weights, same length as ``counts``.

    Raises:
        ValueError: bad counts or a precision that cannot hold the used symbols.
    """
    c = np.asarray(counts).astype(np.int64)
    if c.ndim != 1 or c.size == 0 or int(c.min()) < 0 or not c.any():
        raise ValueError("counts must be a 1-D non-negative array with a non-zero entry")
    used = np.flatnonzero(c)
    m = used.size
    if not 0 <= precision <= MAX_PRECISION or m > (1 << precision) or (m > 1 and precision == 0):
        raise ValueError(f"precision {precision} cannot hold {m} used symbols")
    total_weight = 1 << precision
    cu = c[used]
    total = int(cu.sum())
    if total >= _MAX_SAFE_TOTAL:  # scale the counts down (ceil keeps them non-zero)
        shift = (total // _MAX_SAFE_TOTAL).bit_length()
        cu = (cu + ((1 << shift) - 1)) >> shift
        total = int(cu.sum())
    scaled = cu * total_weight
    w = scaled // total
    rem = scaled - w * total
    w = np.maximum(w, 1)
    diff = total_weight - int(w.sum())
    if diff > 0:
        # diff <= number of symbols whose floor was not raised, so one pass suffices
        order = np.lexsort((used, -rem))
        w[order[:diff]] += 1
    if diff < 0:
        w = _take_back(cu, w, -diff)
    out = np.zeros(c.size, dtype=np.int64)
    out[used] = w
    return out


def _bits(x: float) -> int:
    """The IEEE-754 bit pattern of a positive double, as an integer (monotone in ``x``)."""
    return int(struct.unpack("<q", struct.pack("<d", x))[0])


def _float(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", bits))[0])


def _units_below(c2: np.ndarray, w: np.ndarray, x: float) -> np.ndarray:
    """Per symbol, how many of its take-back steps have a float key below ``x``.

    Symbol ``i`` at weight ``w`` can give back ``w - 1`` units; its ``u``-th one (1-based)
    costs ``2c / (2w + 1 - 2u)``, increasing with ``u``. The count is taken exactly on the
    correctly rounded float keys: a closed-form estimate, then corrected by one step at a
    time where the division ``c2 / x`` rounded the wrong way.
    """
    cap = w - 1
    bound = np.minimum(c2 / x, float(1 << 40))  # keys below x  <=>  denominator above this
    d0 = np.floor(bound).astype(np.int64) + 1
    d0 += d0 % 2 == 0  # the smallest odd denominator above the bound
    u: np.ndarray = np.clip((2 * w - 1 - np.maximum(d0, 3)) // 2 + 1, 0, cap)
    while True:
        up = (u < cap) & (c2 / (2 * w - 1 - 2 * u) < x)
        down = (u > 0) & (c2 / (2 * w + 1 - 2 * u) >= x)
        if not (up.any() or down.any()):
            return u
        u = u + up - down


def _take_back(cu: np.ndarray, w: np.ndarray, units: int) -> np.ndarray:
    """Take ``units`` weight units back, one at a time where it costs least.

    The cost of the next unit of a symbol with count ``c`` and weight ``w > 1`` is
    ``c * log2(w / (w - 1))``, about ``c / (w - 1/2)``: the units taken are the ``units``
    smallest keys ``2c / (2w - 1)`` over all symbols and steps, compared as exact fractions
    (ties: lower symbol), which keeps the choice identical on every machine. A bisection
    over float thresholds takes every step whose rounded key is below ``lo`` (rounding is
    monotone, so those precede all others exactly); the few steps left, keys rounded into
    ``[lo, hi)``, go through a heap of exact fractions.
    """
    c2 = 2.0 * cu  # exact: cu < 2**38
    cap = w - 1
    movable = cap > 0
    first = c2[movable] / (2 * w[movable] - 1)
    last = c2[movable] / 3.0
    lo = float(first.min())  # no key is below it
    hi = float(np.nextafter(last.max(), np.inf))  # every key is below it
    below_lo = np.zeros_like(w)
    below_hi = cap
    while int(below_lo.sum()) < units and _bits(hi) - _bits(lo) > 1:
        # bisect on the bit patterns of positive doubles (monotone in the value)
        mid = _float((_bits(lo) + _bits(hi)) // 2)
        below_mid = _units_below(c2, w, mid)
        taken = int(below_mid.sum())
        if taken <= units:
            lo, below_lo = mid, below_mid
        if taken >= units:
            hi, below_hi = mid, below_mid
    w = w - below_lo
    left = units - int(below_lo.sum())
    if left:
        heap = [
            (Fraction(2 * int(cu[i]), 2 * int(w[i]) - 1), int(i))
            for i in np.flatnonzero(below_hi > below_lo)
        ]
        heapq.heapify(heap)
        for _ in range(left):
            _, i = heapq.heappop(heap)
            w[i] -= 1
            if w[i] > 1:
                heapq.heappush(heap, (Fraction(2 * int(cu[i]), 2 * int(w[i]) - 1), i))
    return w


def estimated_bits(counts: np.ndarray, weights: np.ndarray, precision: int) -> float:
    """The ideal code length of the data under the model, ``sum c * (precision - log2 w)``
    (infinite when a counted symbol has no weight).

    Computed with :mod:`deepzip.coding.portable_math`, so that :func:`choose_precision`, which
    compares these, chooses the same precision on every machine.
    """
    c = np.asarray(counts, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    nz = c > 0
    if bool(np.any(w[nz] <= 0)):
        return math.inf
    return sum_of_products(c[nz], precision - log2(w[nz]))


def choose_precision(
    counts: np.ndarray, model_bits: Callable[[np.ndarray], int] | None = None
) -> tuple[int, np.ndarray]:
    """The precision that minimises the estimated payload plus the model size.

    Args:
        counts: the symbol counts (at least one non-zero).
        model_bits: the stored model's size in bits for given weights (optional; without it
            every weight is assumed to cost ``precision`` bits).

    Returns:
        ``(precision, weights)``: 0 and weight 1 for a single used symbol, else the best
        precision of ``ceil(log2 m)..MAX_PRECISION`` (ties: the lower one) and its
        :func:`quantize_counts` weights.
    """
    c = np.asarray(counts)
    m = int(np.count_nonzero(c))
    if m <= 1:
        return 0, quantize_counts(c, 0)
    candidates = []
    for p in range(max(1, (m - 1).bit_length()), MAX_PRECISION + 1):
        w = quantize_counts(c, p)
        model = model_bits(w) if model_bits is not None else p * m
        candidates.append((estimated_bits(c, w, p) + model, p, w))
    _, best, weights = min(candidates, key=lambda t: (t[0], t[1]))
    return best, weights


def _model(weights_used: np.ndarray, precision: int) -> object:
    """The constriction model with exactly these integer weights (module docstring)."""
    import constriction

    scaled = weights_used.astype(np.int64) << (CONSTRICTION_PRECISION - precision)
    return constriction.stream.model.Categorical((scaled - 1).astype(np.float64), perfect=False)


def encode(symbols: np.ndarray, weights: np.ndarray, precision: int) -> bytes:
    """ANS-code ``symbols`` with the model ``weights`` (from :func:`quantize_counts`).

    Every symbol must have a non-zero weight. Returns the payload (little-endian uint32
    words; empty for a one-symbol model).
    """
    import constriction

    sym = np.asarray(symbols).reshape(-1)
    w = np.asarray(weights, dtype=np.int64)
    used = np.flatnonzero(w)
    if used.size <= 1 or sym.size == 0:
        return b""
    rank = np.full(w.size, -1, dtype=np.int32)
    rank[used] = np.arange(used.size, dtype=np.int32)
    model = _model(w[used], precision)
    coder = constriction.stream.stack.AnsCoder()
    for end in range(sym.size, 0, -_CHUNK):  # last chunk first: the stack pops in order
        ranks = rank[sym[max(0, end - _CHUNK) : end]]
        if ranks.size and int(ranks.min()) < 0:
            raise ValueError("a symbol has no weight in the ANS model")
        coder.encode_reverse(ranks, model)
    words = coder.get_compressed()
    return np.asarray(words, dtype="<u4").tobytes()


def check_payload_size(
    nbytes: int, weights: np.ndarray, precision: int, count: int, *, what: str
) -> None:
    """Reject a payload size that cannot hold ``count`` symbols under the model.

    A one-symbol model and an empty stream have no payload; otherwise the payload is whole
    32-bit words. The payload gives no lower bound on ``count``: the stack coder starts empty,
    and pushing the first used symbol (rank 0, whose interval starts at 0) on an empty coder
    leaves it empty, so a stream's trailing run of that symbol costs nothing (``[1, 2, 0]``
    and ``[1, 2, 0, 0, ..., 0]`` have the same payload). The caller's count cap bounds what
    decoding allocates.

    Raises:
        CorruptFileError: naming ``what`` and the sizes.
    """
    w = np.asarray(weights, dtype=np.int64)
    used = np.flatnonzero(w)
    if used.size == 1 or count == 0:
        if nbytes:
            kind = "a one-symbol" if used.size == 1 else "an empty"
            raise CorruptFileError(f"{what}: {kind} ANS stream must have no payload")
        return
    if nbytes % 4:
        raise CorruptFileError(f"{what}: ANS payload of {nbytes} bytes is not whole 32-bit words")


def decode(
    payload: bytes | memoryview,
    weights: np.ndarray,
    precision: int,
    count: int,
    *,
    dtype: type[np.unsignedinteger] | None = None,
    what: str = "ANS stream",
) -> np.ndarray:
    """Decode ``count`` symbols coded by :func:`encode` with the same ``weights``.

    Args:
        payload: the coded words.
        weights: one weight per symbol of the alphabet.
        precision: the weights sum to ``2**precision``.
        count: how many symbols to decode.
        dtype: the integer dtype of the result; it must hold every symbol of the alphabet
            (``len(weights) - 1``). ``None``: uint8 for alphabets of up to 256 symbols, else
            uint16 (larger alphabets need an explicit, wider dtype).
        what: names the stream in error messages.

    Raises:
        ConfigError: a ``dtype`` that cannot hold the alphabet's largest symbol.
        CorruptFileError: the payload is not a whole number of words (or not empty where
            it must be), rejected by constriction, or not fully consumed.
    """
    import constriction

    w = np.asarray(weights, dtype=np.int64)
    out_dtype = output_dtype(dtype, w.size)
    used = np.flatnonzero(w)
    check_payload_size(len(payload), w, precision, count, what=what)
    out = np.empty(count, dtype=out_dtype)
    if used.size == 1:
        out.fill(used[0])
        return out
    if count == 0:
        return out
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    model = _model(w[used], precision)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        for start in range(0, count, _CHUNK):
            n = min(_CHUNK, count - start)
            ranks = np.asarray(coder.decode(model, n))
            out[start : start + n] = used[ranks]
        empty = bool(coder.is_empty())
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # constriction raises ValueError, or pyo3's PanicException
        raise CorruptFileError(f"{what}: invalid ANS payload ({exc})") from exc
    if not empty:
        raise CorruptFileError(f"{what}: ANS payload has data left after {count} symbols")
    return out
