"""The LeNet checkpoints that several benchmarks start from, and how to get them.

``benchmarks/results/cache`` holds the dense and pruned LeNet-300-100 and LeNet-5 of the
pruning benchmark's seed-0 CPU run. The committed results of the trained-quantization,
post-training, gap-width, coding, Weightless and incremental benchmarks started from the ones
made at commit 5e9a4df, before the data-order fix; ``scripts/rebuild_benchmark_cache.sh``
rebuilds exactly those. ``benchmarks/prune_lenet.py --write-cache`` writes checkpoints trained
with today's data order instead, from which those benchmarks give other figures.
"""

from __future__ import annotations

from pathlib import Path

MISSING_HINT = (
    "run scripts/rebuild_benchmark_cache.sh first (the checkpoints of the committed results; "
    "benchmarks/prune_lenet.py --write-cache writes ones trained with today's data order)"
)
"""What to tell the user when a cached checkpoint is missing."""


def require_cached(path: Path) -> Path:
    """``path`` if the file is there; otherwise stop the benchmark, saying how to rebuild it."""
    if not path.is_file():
        raise SystemExit(f"{path} is missing: {MISSING_HINT}")
    return path
