"""The machine-independent log2 and sum of products behind the writer's code-length estimates."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from deepzip.coding import ans, streams
from deepzip.coding.portable_math import log2, sum_of_products


def _ulps(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(a - ref) / np.spacing(np.maximum(np.abs(ref), 1e-300))))


def test_log2_is_within_a_few_ulps_of_the_correctly_rounded_value() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            np.arange(1, 70_000, dtype=np.float64),
            rng.integers(1, 2**58, size=20_000).astype(np.float64),
            rng.random(20_000) + 1e-300,
            np.exp2(rng.uniform(-1070, 1020, 20_000)),
            np.array([5e-324, 1.5e-323, 2.2250738585072014e-308, 1.7976931348623157e308]),
        ]
    )
    out = log2(values)
    # math.log2 (the C library's) is within an ulp of the exact value
    assert _ulps(out, np.array([math.log2(v) for v in values])) <= 4


def test_log2_of_a_power_of_two_is_exact() -> None:
    k = np.arange(-1074, 1024)
    assert np.array_equal(log2(np.ldexp(1.0, k)), k.astype(np.float64))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_log2_refuses_values_without_a_finite_logarithm(bad: float) -> None:
    with pytest.raises(ValueError, match="positive finite"):
        log2(np.array([1.0, bad]))


def test_sum_of_products_is_correctly_rounded_whatever_the_order() -> None:
    a = np.array([1e16, 1.0, -1e16, 3.0])
    b = np.ones(4)
    assert float(np.sum(a * b)) != 4.0  # numpy's sum loses the 1.0 here
    assert sum_of_products(a, b) == 4.0
    assert sum_of_products(a[::-1], b) == 4.0
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=5000) * 1e8, rng.normal(size=5000)
    exact = sum(Fraction(float(p)) for p in x * y)
    assert sum_of_products(x, y) == float(exact)


def test_the_code_length_estimates_do_not_use_numpys_log2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """np.log2's last bits depend on the CPU (an AVX-512 path); the estimates the writer
    compares must not go through it, or a near-tie could be decided per machine."""
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 5000, size=300)
    symbols = rng.integers(0, 40, size=2000)

    def decisions() -> tuple[Any, ...]:
        return (
            ans.choose_precision(counts),
            streams.estimated_size(counts),
            streams.estimated_size(counts, quick=True),
            streams.entropy_bits(symbols, 40),
            streams.encode_symbols(symbols, 40, coder="ans"),
        )

    expected = decisions()

    def no_log2(*args: object, **kwargs: object) -> None:
        raise AssertionError("np.log2 was called")

    monkeypatch.setattr(np, "log2", no_log2)
    got = decisions()
    assert got[0][0] == expected[0][0]
    assert np.array_equal(got[0][1], expected[0][1])
    assert got[1:] == expected[1:]


def test_estimated_bits_is_the_ideal_code_length() -> None:
    counts = np.array([5, 0, 3, 8])
    weights = np.array([4, 0, 4, 8])
    ref = sum(c * (4 - math.log2(w)) for c, w in zip(counts, weights, strict=True) if c)
    assert ans.estimated_bits(counts, weights, 4) == pytest.approx(ref, rel=1e-15)
    # a counted symbol without weight cannot be coded
    assert ans.estimated_bits(np.array([1, 2]), np.array([0, 16]), 4) == math.inf
