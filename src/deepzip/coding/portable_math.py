"""A base-2 logarithm and a sum of products that give the same bits on every machine.

The writer decides between coding choices by comparing code-length estimates (the ANS
precision, the coder of a stream, the sparse index's gap width), so those estimates must not
depend on the CPU. ``numpy.log2`` does: on CPUs with AVX-512 numpy takes a vectorised path
whose results differ in the last bits from the other paths, and a near-tie between two
estimates could then be decided differently on two machines (different file bytes for the
same weights). Here only :func:`numpy.frexp` (exact), IEEE-754 additions, multiplications and
divisions (each correctly rounded, hence the same on every machine, vectorised or not) and
:func:`math.fsum` (the correctly rounded sum, independent of the order) are used.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["log2", "sum_of_products"]

_SQRT_HALF = math.sqrt(0.5)  # correctly rounded by IEEE-754, the same everywhere
_LOG2_E = 1.4426950408889634  # 1 / ln 2, the double nearest to it
# ln m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1)/(m + 1), |s| <= 0.1716 for m in
# [sqrt(1/2), sqrt(2)): s^2 <= 0.0295, and the terms after s^25/25 are below 1e-19 of the sum
_ATANH_TERMS = tuple(1.0 / (2 * k + 1) for k in range(13))


def log2(x: np.ndarray) -> np.ndarray:
    """``log2`` of positive finite values, elementwise, as float64; within a few units in the
    last place of the exact value, and the same bits on every machine.

    Raises:
        ValueError: a value that is not positive and finite.
    """
    v = np.asarray(x, dtype=np.float64)
    if v.size and not bool(np.all(np.isfinite(v) & (v > 0))):
        raise ValueError("log2 takes positive finite values")
    m, e = np.frexp(v)  # v = m * 2**e, m in [1/2, 1)
    low = m < _SQRT_HALF
    m = np.where(low, 2.0 * m, m)  # now in [sqrt(1/2), sqrt(2)): exact
    e = e - low
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    poly = np.full_like(z, _ATANH_TERMS[-1])
    for term in reversed(_ATANH_TERMS[:-1]):
        poly = poly * z + term
    out: np.ndarray = e.astype(np.float64) + (2.0 * s * poly) * _LOG2_E
    return out


def sum_of_products(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` with each product rounded once and the sum correctly rounded (so the same
    on every machine, unlike ``numpy.sum``/``numpy.dot``, whose order can depend on the build)."""
    products = np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)
    return math.fsum(products.reshape(-1).tolist())
