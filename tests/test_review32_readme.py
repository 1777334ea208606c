"""Session 32: the README's figures for one large layer are those of big_layer.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_big_layer_prose_is_big_layer_json() -> None:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    d = json.loads((ROOT / "benchmarks/results/big_layer.json").read_text())["big_layer"]
    mib = 2**20
    n = math.isqrt(d["parameters"])
    assert d["parameters"] == n * n + n  # one n x n layer and its bias
    against = d["against"]
    expected = [
        f"a single {n} × {n} float32 layer ({d['checkpoint_bytes'] / mib:.0f} MiB;",
        f"compresses at a peak RSS of {d['compress']['peak_rss_bytes'] / mib:.0f} MiB, "
        f"{d['compress']['peak_over_checkpoint']:.2f}× its size "
        f"({d['import_peak_rss_bytes'] / mib:.0f} MiB of it is Python with deepzip imported)",
        f"needed {against['compress']['peak_rss_bytes'] / mib:.0f} MiB "
        f"({against['compress']['peak_rss_bytes'] / d['checkpoint_bytes']:.2f}×) in the same run",
        f"takes {against['this_over_against']['compress_wall_seconds']:.2f}× the time "
        f"(medians of {len(d['compress']['runs'])} interleaved runs; decompressing is unchanged "
        f"at {d['decompress']['peak_over_checkpoint']:.2f}×)",
    ]
    for phrase in expected:
        assert phrase in text, phrase
    assert against["same_bytes_as_this"] is True
    assert f"where {against['commit'][:7]} needed" in text
    assert "byte-identical" in text
    assert d["compressed_tensors_equal_quantized"] == 1
    assert d["raw_tensors_exact"] == 1
