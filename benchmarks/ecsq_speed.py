"""ECSQ speed on one large layer, against another deepzip (e.g. the previous commit) in one run.

``ecsq_quantize`` runs on ``--n`` float32 weights drawn from a Laplace distribution (scale
0.02, seeded), for each setting: k = 32 and 256 starting bins, λ = 0.02 and 0.1, without
importance and with a seeded skewed importance (uniform⁴). Each run is a fresh subprocess that
imports deepzip from one source tree, times one whole ``ecsq_quantize`` call (up to its
default 100 rounds), and prints the time and a SHA-256 of the result (centroids, labels,
rounds, SSE). With ``--against SRC`` every setting also runs with that source tree, the two
interleaved run by run (which goes first alternates), and the table gives the median time of
each and their ratio, and whether the results are identical.

    python benchmarks/ecsq_speed.py --against ../old/src            # 1 M weights, 3 runs
    python benchmarks/ecsq_speed.py --n 4000000 --runs 5 --against ../old/src

Writes benchmarks/results/ecsq_speed.json (``--out`` to change) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from deepzip._atomic import atomic_write_text
from deepzip.report import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
HERE_SRC = Path(__file__).resolve().parent.parent / "src"

# one run: seeded data, one timed ecsq_quantize call, its time and a digest of its result
_RUN = """
import hashlib, json, sys, time
import torch
import deepzip
from deepzip.quantize.scalar import ecsq_quantize
n, k, lam, weighted = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
g = torch.Generator().manual_seed(0)
u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
x = (-0.02 * torch.sign(u) * torch.log1p(-2 * u.abs())).to(torch.float32)
w = torch.rand(n, generator=g) ** 4 if weighted else None
t0 = time.perf_counter()
r = ecsq_quantize(x, k, lam, weights=w)
seconds = time.perf_counter() - t0
digest = hashlib.sha256()
digest.update(r.centroids.numpy().tobytes())
digest.update(r.labels.numpy().tobytes())
digest.update(repr((r.iterations, r.converged, r.sse)).encode())
print(json.dumps({"seconds": seconds, "sha256": digest.hexdigest(), "levels": r.k,
                  "iterations": r.iterations, "converged": r.converged,
                  "deepzip": deepzip.__file__}))
"""


def run_once(src: Path, n: int, k: int, lam: float, weighted: bool) -> dict[str, Any]:
    """One subprocess run of ``ecsq_quantize`` with ``src`` first on the import path."""
    env = dict(os.environ, PYTHONPATH=str(src))
    args = [str(n), str(k), repr(lam), "1" if weighted else "0"]
    out = subprocess.run(
        [sys.executable, "-c", _RUN, *args], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"ECSQ run with {src} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout)
    if not str(result["deepzip"]).startswith(str(src.resolve())):
        raise SystemExit(f"{src}: deepzip was imported from {result['deepzip']} instead")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="weights in the layer")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per setting and tree")
    parser.add_argument("--against", type=Path, default=None, help="another deepzip's src/")
    parser.add_argument("--out", type=Path, default=RESULTS / "ecsq_speed.json")
    args = parser.parse_args()
    sources = [("this", HERE_SRC)]
    if args.against is not None:
        sources.append(("against", args.against.resolve()))
    settings = [(k, lam, weighted) for k in (32, 256) for lam in (0.02, 0.1) for weighted in (0, 1)]
    records = []
    for k, lam, weighted in settings:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sources}
        for i in range(args.runs):
            # alternate which tree goes first, so that neither always runs on a cooler machine
            for name, src in sources if i % 2 == 0 else sources[::-1]:
                runs[name].append(run_once(src, args.n, k, lam, bool(weighted)))
        record: dict[str, Any] = {"k": k, "lambda": lam, "importance": bool(weighted)}
        for name, got in runs.items():
            record[name] = {
                "median_seconds": statistics.median(r["seconds"] for r in got),
                "seconds": [r["seconds"] for r in got],
                "sha256": sorted({r["sha256"] for r in got}),
                "levels": got[0]["levels"],
                "iterations": got[0]["iterations"],
                "converged": got[0]["converged"],
            }
        if args.against is not None:
            record["this_over_against"] = (
                record["this"]["median_seconds"] / record["against"]["median_seconds"]
            )
            record["identical"] = record["this"]["sha256"] == record["against"]["sha256"]
        records.append(record)
    against_head = None
    if args.against is not None:
        git = ["git", "-C", str(args.against), "rev-parse", "HEAD"]
        against_head = subprocess.run(git, capture_output=True, text=True).stdout.strip() or None
    payload = {
        "n": args.n,
        "runs": args.runs,
        "against": None if args.against is None else str(args.against),
        "against_commit": against_head,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "settings": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=1) + "\n")
    header = ["k", "λ", "importance", "rounds", "levels", "this (s)"]
    if args.against is not None:
        header += ["against (s)", "ratio", "identical"]
    rows = []
    for r in records:
        row = [str(r["k"]), str(r["lambda"]), "yes" if r["importance"] else "no"]
        row += [str(r["this"]["iterations"]), str(r["this"]["levels"])]
        row += [f"{r['this']['median_seconds']:.2f}"]
        if args.against is not None:
            row += [
                f"{r['against']['median_seconds']:.2f}",
                f"{r['this_over_against']:.2f}x",
                "yes" if r["identical"] else "NO",
            ]
        rows.append(row)
    print(f"ECSQ on {args.n:,} weights, medians of {args.runs} runs\n")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
