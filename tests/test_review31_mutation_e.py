"""Mutation-testing gaps in ``deepzip.coding.ans``, ``streams`` and ``huffman`` (review 31, e).

Each test kills a mutant that the existing tests let survive. Expected values come from the
documented rules, derived by hand or with an independent exact computation (the
one-unit-at-a-time rule of :func:`deepzip.coding.ans.quantize_counts` in exact integers and
``Fraction``), never from the code under test.
"""

from __future__ import annotations

import heapq
from fractions import Fraction

import numpy as np
import pytest

from deepzip.coding import ans
from deepzip.errors import CorruptFileError


def _rule(counts: list[int], precision: int) -> list[int]:
    """quantize_counts's documented rule on (already scaled) counts, in exact arithmetic."""
    used = [i for i, v in enumerate(counts) if v]
    c = [counts[i] for i in used]
    units, total = 1 << precision, sum(c)
    w = [max(1, v * units // total) for v in c]
    rem = [v * units - (v * units // total) * total for v in c]
    diff = units - sum(w)
    for i in sorted(range(len(c)), key=lambda i: (-rem[i], i))[: max(diff, 0)]:
        w[i] += 1
    heap = [(Fraction(2 * c[i], 2 * w[i] - 1), i) for i in range(len(c)) if w[i] > 1]
    heapq.heapify(heap)
    for _ in range(max(-diff, 0)):
        _, i = heapq.heappop(heap)
        w[i] -= 1
        if w[i] > 1:
            heapq.heappush(heap, (Fraction(2 * c[i], 2 * w[i] - 1), i))
    out = [0] * len(counts)
    for i, v in zip(used, w, strict=True):
        out[i] = v
    return out


# ----------------------------------------------------------------------------- ans


@pytest.mark.parametrize(
    "counts",
    [np.array([[1, 2], [3, 4]]), np.array([], dtype=np.int64), np.array([3, -1, 2]), np.zeros(4)],
    ids=["2-D", "empty", "negative", "all-zero"],
)
def test_quantize_counts_refuses_bad_counts(counts: np.ndarray) -> None:
    with pytest.raises(ValueError, match="counts must be a 1-D non-negative array"):
        ans.quantize_counts(counts, 8)


@pytest.mark.parametrize("precision", [-1, 25])
def test_quantize_counts_refuses_a_precision_outside_0_to_24(precision: int) -> None:
    with pytest.raises(ValueError, match=f"precision {precision} cannot hold 1 used symbols"):
        ans.quantize_counts(np.array([5]), precision)


# Counts [b, b + 1, rest] with b near 0.3 * total: at precision 3 the shares floor to 2, 2, 3
# and the one leftover unit goes to the larger remainder, symbol 1's (b + 1 > b): [2, 3, 3].
# Totals of 2**38 or more are first scaled down by 2**shift, rounding up, with
# shift = bit_length(total) - 38 (the comment in quantize_counts). When b and b + 1 scale to
# the same value their remainders tie and the unit goes to the lower symbol: [3, 2, 3]; they
# do unless b is a multiple of 2**shift. Choosing b modulo 2**shift pins the shift exactly.
@pytest.mark.parametrize(
    ("total", "modulus", "residue", "expected"),
    [
        ((1 << 38) - 1, 2, 1, [2, 3, 3]),  # below the threshold: not scaled
        (1 << 38, 2, 1, [3, 2, 3]),  # shift 1: b odd ties
        ((1 << 39) - 1, 2, 1, [3, 2, 3]),  # still shift 1
        ((1 << 39) + 7, 4, 2, [3, 2, 3]),  # shift 2: b = 2 mod 4 ties (shift 1 would not)
        ((1 << 39) + 7, 8, 4, [2, 3, 3]),  # shift 2: b = 0 mod 4 does not (shift 3 would)
        ((1 << 45) + 3, 1 << 8, 1 << 7, [3, 2, 3]),  # shift 8 (shift 7 would not tie)
        ((1 << 45) + 3, 1 << 8, 0, [2, 3, 3]),  # shift 8 (shift 9 would tie)
    ],
)
def test_quantize_counts_scales_totals_of_2_to_the_38_and_more(
    total: int, modulus: int, residue: int, expected: list[int]
) -> None:
    b = (3 * total // 10) // modulus * modulus + residue
    counts = [b, b + 1, total - 2 * b - 1]
    shift = max(0, total.bit_length() - 38)
    one = (1 << shift) - 1
    assert _rule([(v + one) >> shift for v in counts], 3) == expected  # the reference agrees
    assert ans.quantize_counts(np.array(counts, dtype=np.int64), 3).tolist() == expected


def test_quantize_counts_scaling_rounds_each_count_up_by_less_than_one_unit() -> None:
    """Odd counts summing to [2**38, 2**39) halve to (c + 1) / 2 exactly; one more unit each
    moves a unit between symbols 1 and 2 at precision 24 (found by search with ``_rule``)."""
    counts = [66_663_956_727, 24_068_500_527, 206_404_713_369]
    expected = [3_764_038, 1_358_976, 11_654_202]
    assert _rule([(v + 1) // 2 for v in counts], 24) == expected
    assert _rule([(v + 1) // 2 + 1 for v in counts], 24) != expected  # the case discriminates
    assert ans.quantize_counts(np.array(counts), 24).tolist() == expected


def test_quantize_counts_precision_must_hold_every_used_symbol() -> None:
    assert ans.quantize_counts(np.array([1, 1, 0, 1, 1]), 2).tolist() == [1, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="precision 1 cannot hold 3 used symbols"):
        ans.quantize_counts(np.array([1, 1, 1]), 1)
    with pytest.raises(ValueError, match="precision 0 cannot hold 2 used symbols"):
        ans.quantize_counts(np.array([4, 0, 4]), 0)


@pytest.mark.parametrize(
    ("counts", "precision", "expected"),
    [
        # by hand: floors 0 0 0 0 11 11 8, the small ones raised to 1 (sum 34); the two units
        # taken back all cost 2c / (2w - 1) = 42000/21 = 30000/15 = 2000, an exact three-way
        # tie that goes to the lower symbols, 4 and 5
        ([7, 7, 14, 9, 21000, 21000, 15000], 5, [1, 1, 1, 1, 10, 10, 8]),
        # found by search, expected values from _rule (exact one-unit-at-a-time)
        ([7, 15000, 15, 35, 21000, 15000, 21], 6, [1, 17, 1, 1, 25, 18, 1]),
        ([5, 21, 1, 1, 2000, 7, 70, 3, 21000, 3000, 70], 6, [1, 1, 1, 1, 4, 1, 1, 1, 45, 7, 1]),
    ],
)
def test_quantize_counts_takes_back_exact_ties_by_the_exact_rule(
    counts: list[int], precision: int, expected: list[int]
) -> None:
    """Keys that tie as floats reach the exact-fraction heap of ``_take_back``."""
    assert _rule(counts, precision) == expected
    assert ans.quantize_counts(np.array(counts), precision).tolist() == expected


def test_choose_precision_tries_the_smallest_precision_that_holds_the_symbols() -> None:
    """By hand: equal counts are coded exactly by equal weights at every precision, so the
    payload estimate is the same and the smallest model (``precision * m`` bits) wins."""
    p, w = ans.choose_precision(np.array([5, 5]))
    assert (p, w.tolist()) == (1, [1, 1])
    p, w = ans.choose_precision(np.array([3, 0, 3, 3, 3]))
    assert (p, w.tolist()) == (2, [1, 0, 1, 1, 1])
    p, w = ans.choose_precision(np.array([2, 2, 2, 2, 2]))  # 5 symbols need precision 3
    assert p == 3
    assert int(w.sum()) == 8


def test_choose_precision_can_choose_24() -> None:
    """By hand: for counts [10**9, 1] the estimate is about 10**9 * log2(e) / 2**p bits for
    the frequent symbol, p for the rare one and 2p of model, 158 at p = 24 against 241 at
    p = 23: the cost falls all the way to the largest precision."""
    p, w = ans.choose_precision(np.array([10**9, 1]))
    assert (p, w.tolist()) == (24, [(1 << 24) - 1, 1])


def test_encode_codes_a_single_symbol_stream() -> None:
    """By the writer in docs/format.md section 7: from state 0, symbol 1 of weights [1, 1] at
    precision 1 (W = 2**23, c = 2**23) leaves state 2**23, pushed as one word."""
    w = np.array([1, 1])
    payload = ans.encode(np.array([1], dtype=np.uint8), w, 1)
    assert payload == (1 << 23).to_bytes(4, "little")
    assert ans.decode(payload, w, 1, 1).tolist() == [1]


def test_encode_refuses_a_symbol_without_weight() -> None:
    with pytest.raises(ValueError, match="a symbol has no weight in the ANS model"):
        ans.encode(np.array([0, 2, 0], dtype=np.uint8), np.array([1, 1, 0]), 1)


def test_decode_of_one_symbol_checks_the_payload() -> None:
    w = np.array([1, 1])
    with pytest.raises(CorruptFileError, match="invalid ANS payload"):
        ans.decode(b"\x00\x00\x00\x00", w, 1, 1)  # the top word must not be 0
    two = ans.encode(np.array([1, 1], dtype=np.uint8), w, 1)
    with pytest.raises(CorruptFileError, match="data left after 1 symbols"):
        ans.decode(two, w, 1, 1)


def test_payload_size_errors_name_the_kind_of_stream() -> None:
    one = np.array([0, 1])
    with pytest.raises(CorruptFileError, match="x: a one-symbol ANS stream must have no payload"):
        ans.check_payload_size(4, one, 0, 3, what="x")
    with pytest.raises(CorruptFileError, match="x: an empty ANS stream must have no payload"):
        ans.check_payload_size(4, np.array([1, 1]), 1, 0, what="x")
