"""How often one seed peels, at each hash count's default ratio (cells per key).

A Bloomier filter is built by peeling the hypergraph of its keys' cells; when peeling fails the
builder tries the next seed, up to ``max_attempts`` (16 by default) times. Peeling succeeds
with high probability only above a threshold ratio (``deepzip.config.PEELING_THRESHOLD``), so
each hash count ``k`` has its own default ratio (``deepzip.config.BLOOMIER_RATIO``), chosen
just above it. This script checks those defaults: for every ``k`` from 2 to 8 and layers of
50 to 100,000 kept weights it builds filters with one seed each (``max_attempts=1``, seeds
0, 1, 2, ...) over random keys and counts the seeds that fail. From the worst failure rate
``p`` over the sizes it gives ``p**16``, the estimated chance that the builder gives up (where
no seed failed, ``p`` is the rule of three's 95% upper bound, 3 / trials, and the table says
"≤").

For ``k = 2`` a random graph is a forest (peels) only with probability about
``sqrt(1 - (2 / ratio)**2)``, which the table shows beside the measurement; ``k = 2`` leans on
retried seeds, and ``k = 3`` (the default) needs the fewest cells.

    python benchmarks/bloomier_peeling.py [--trials 100]

Writes benchmarks/results/bloomier_peeling.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from deepzip._atomic import atomic_write_text
from deepzip.coding.bloomier import build_filter, cell_count
from deepzip.config import BLOOMIER_RATIO, PEELING_THRESHOLD
from deepzip.errors import BloomierBuildError
from deepzip.report import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (50, 300, 2_000, 15_000, 100_000)
MAX_ATTEMPTS = 16  # build_filter's and WeightlessConfig's default


def failures(hashes: int, n_keys: int, trials: int) -> int:
    """Seeds (0 .. trials - 1) for which one attempt fails to peel ``n_keys`` random keys."""
    rng = np.random.default_rng(n_keys)
    n_positions = 8 * n_keys  # a layer with 1 weight in 8 kept
    keys = np.sort(rng.choice(n_positions, size=n_keys, replace=False))
    values = rng.integers(0, 4, size=n_keys)
    failed = 0
    for seed in range(trials):
        try:
            build_filter(
                keys, values, n_positions=n_positions, num_values=4, cell_bits=3,
                hashes=hashes, seed=seed, max_attempts=1,
            )  # fmt: skip
        except BloomierBuildError:
            failed += 1
    return failed


def run(trials: int) -> list[dict[str, Any]]:
    rows = []
    for hashes in sorted(PEELING_THRESHOLD):
        ratio = BLOOMIER_RATIO[hashes]
        start = time.perf_counter()
        by_size = {}
        for n in SIZES:
            t = trials if n <= 15_000 else max(1, trials // 4)
            by_size[str(n)] = {"trials": t, "failed": failures(hashes, n, t)}
        worst = max(v["failed"] / v["trials"] for v in by_size.values())
        # No failure seen: the rule of three's 95% upper bound on the rate instead.
        bound = worst if worst else 3 / min(v["trials"] for v in by_size.values())
        rows.append(
            {
                "hashes": hashes,
                "threshold": PEELING_THRESHOLD[hashes],
                "ratio": ratio,
                "cells_per_key_at_15000": cell_count(15_000, hashes=hashes) / 15_000,
                "failures": by_size,
                "worst_failure_rate": worst,
                "give_up_estimate": bound**MAX_ATTEMPTS,
                "give_up_is_upper_bound": not worst,
                "forest_probability": (math.sqrt(1 - (2 / ratio) ** 2) if hashes == 2 else None),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        cells = [f"{v['failed']}/{v['trials']}" for v in r["failures"].values()]
        theory = "" if r["forest_probability"] is None else f"{1 - r['forest_probability']:.2f}"
        body.append(
            [
                str(r["hashes"]),
                f"{r['threshold']}",
                f"{r['ratio']}",
                f"{r['cells_per_key_at_15000']:.3f}",
                *cells,
                theory,
                ("≤ " if r["give_up_is_upper_bound"] else "") + f"{r['give_up_estimate']:.1e}",
            ]
        )
    headers = [
        "k", "threshold", "default ratio", "cells/key (n = 15,000)",
        *(f"failed, n = {n:,}" for n in SIZES),
        "theory (k = 2)", f"all {MAX_ATTEMPTS} seeds fail",
    ]  # fmt: skip
    return markdown_table(headers, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="seeds per size (a quarter "
                        "of them at 100,000 keys)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.trials < 4:
        parser.error(f"--trials must be at least 4, got {args.trials}")
    rows = run(args.trials)
    out = {
        "benchmark": "bloomier_peeling",
        "trials": args.trials,
        "sizes": list(SIZES),
        "max_attempts": MAX_ATTEMPTS,
        "machine": platform.machine(),
        "rows": rows,
    }
    path = RESULTS / "bloomier_peeling.json"
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    sys.stdout.write(_markdown(rows) + "\n")
    sys.stdout.write(f"→ {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
