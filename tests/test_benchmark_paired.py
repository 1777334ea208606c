"""The paired test-set comparison of benchmarks/incremental.py (hand-computed cases)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark_module import load_benchmark

bench = load_benchmark("incremental", "bench_incremental")


def _t(bits: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in bits])


def test_paired_counts_difference_and_sign_test() -> None:
    # a right alone on samples 1, 2; b right alone on sample 3; both right on sample 0.
    r = bench.paired(_t("1110"), _t("1001"))
    assert (r["a_only"], r["b_only"]) == (2, 1)
    assert r["diff"] == pytest.approx(0.25)
    # 3 discordant pairs, min count 1: 2 * (C(3,0) + C(3,1)) / 2**3 = 1.
    assert r["p"] == pytest.approx(1.0)
    # se = sqrt(3 - 1/4) / 4
    half = 1.96 * math.sqrt(2.75) / 4
    assert r["ci95"] == pytest.approx([0.25 - half, 0.25 + half])


def test_paired_one_sided_discordance() -> None:
    # a alone right on 6 of 8, never the other way: p = 2 / 2**6.
    r = bench.paired(_t("11111100"), _t("00000000"))
    assert (r["a_only"], r["b_only"]) == (6, 0)
    assert r["p"] == pytest.approx(2 / 64)
    assert r["diff"] == pytest.approx(0.75)


def test_paired_identical_predictions() -> None:
    r = bench.paired(_t("1010"), _t("1010"))
    assert r == {"a_only": 0, "b_only": 0, "diff": 0.0, "ci95": [0.0, 0.0], "p": 1.0}


def test_paired_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="paired"):
        bench.paired(_t("10"), _t("101"))
