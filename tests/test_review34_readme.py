"""Session 34: the README's figures for k-means on one large layer are those of
big_layer_kmeans.json."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_big_layer_kmeans_prose_is_its_json() -> None:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    d = json.loads((ROOT / "benchmarks/results/big_layer_kmeans.json").read_text())["big_layer"]
    mib = 2**20
    assert d["quantizer"] == "kmeans"
    against = d["against"]
    expected = [
        "--layer 8192 --quantizer kmeans --against <older src> --runs 3",
        f"compresses at a peak RSS of {d['compress']['peak_rss_bytes'] / mib:.0f} MiB, "
        f"{d['compress']['peak_over_checkpoint']:.2f}× its size, where "
        f"{against['commit'][:7]} needed {against['compress']['peak_rss_bytes'] / mib:.0f} MiB "
        f"({against['compress']['peak_rss_bytes'] / d['checkpoint_bytes']:.2f}×) in the same run, "
        f"in {against['this_over_against']['compress_wall_seconds']:.2f}× the time (medians of "
        f"{len(d['compress']['runs'])} interleaved runs), to byte-identical files",
    ]
    for phrase in expected:
        assert phrase in text, phrase
    assert d["parameters"] == 8192 * 8192 + 8192
    assert against["same_bytes_as_this"] is True
    assert d["compressed_tensors_equal_quantized"] == 1
    assert against["compressed_tensors_equal_quantized"] == 1
    assert d["raw_tensors_exact"] == 1
