"""Session 33: the README's ECSQ speed figures are those of ecsq_speed.json."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ecsq_speed_prose_is_ecsq_speed_json() -> None:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    d = json.loads((ROOT / "benchmarks/results/ecsq_speed.json").read_text())
    settings = d["settings"]
    ratios = [s["this_over_against"] for s in settings]
    first = next(s for s in settings if (s["k"], s["lambda"], s["importance"]) == (32, 0.02, False))
    expected = [
        f"On a {'million' if d['n'] == 1_000_000 else d['n']} Laplace-distributed weights",
        f"a whole run takes {min(ratios):.2f}× to {max(ratios):.2f}× the time of "
        f"{d['against_commit'][:7]} in the same run",
        f"({first['this']['median_seconds']:.2f} s against "
        f"{first['against']['median_seconds']:.2f} s at k = 32, λ = 0.02 without importance; "
        f"medians of {d['runs']} interleaved runs, eight settings",
    ]
    for phrase in expected:
        assert phrase in text, phrase
    assert len(settings) == 8
    assert all(s["identical"] for s in settings)
    assert all(len(s["this"]["sha256"]) == 1 for s in settings)  # each run the same result


def test_one_benchmark_run_is_this_trees_ecsq() -> None:
    """benchmarks/ecsq_speed.py's subprocess run: this tree's deepzip, and its result digest
    is that of ecsq_quantize on the same seeded data here."""
    import hashlib

    import torch

    from benchmark_module import load_benchmark
    from deepzip.quantize.scalar import ecsq_quantize

    bench = load_benchmark("ecsq_speed", "bench_ecsq_speed")
    got = bench.run_once(bench.HERE_SRC, 3000, 16, 0.05, True)
    assert got["deepzip"].startswith(str(ROOT / "src"))
    g = torch.Generator().manual_seed(0)
    u = torch.rand(3000, generator=g, dtype=torch.float64) - 0.5
    x = (-0.02 * torch.sign(u) * torch.log1p(-2 * u.abs())).to(torch.float32)
    r = ecsq_quantize(x, 16, 0.05, weights=torch.rand(3000, generator=g) ** 4)
    digest = hashlib.sha256()
    digest.update(r.centroids.numpy().tobytes())
    digest.update(r.labels.numpy().tobytes())
    digest.update(repr((r.iterations, r.converged, r.sse)).encode())
    assert got["sha256"] == digest.hexdigest()
    assert (got["levels"], got["iterations"]) == (r.k, r.iterations)
