"""1-D k-means speed and quality: deepzip's sorted-Lloyd against scikit-learn's Lloyd.

The data stand in for one large trained layer: float32 weights drawn from a Laplace
distribution (scale 0.02, seeded). For each k, both methods start from the same initial
centroids (deepzip's ``linear`` init: k points evenly over [min, max], rounded to float32) and
run Lloyd's algorithm with ``tol=0``, each with its own default iteration cap: deepzip's
``kmeans_1d`` (1000: after the one sort an iteration costs O(k log n), so it can afford to run
to the fixed point) and scikit-learn's ``KMeans`` (300). Reported per k:

* deepzip's time: the median of ``--repeats`` runs after one warm-up;
* scikit-learn's ``KMeans(n_init=1, init=<same centroids>, algorithm="lloyd", tol=0)`` time:
  ``--sklearn-runs`` runs, but only one when the first takes more than 30 s (the count is in
  the JSON and the table);
* the SSE of both, computed here in the same way (float64, from each method's labels and
  centroids), and deepzip's SSE when it is stopped at scikit-learn's iteration count (the
  same algorithm: the two differ only by float rounding along the way);
* the exact optimum from the ``kmeans1d`` package (O(n·k)) when n·k is at most
  ``--optimal-max-nk``, else null; and, always, the optimum and deepzip's SSE on a seeded
  subsample of ``--subsample`` values (``kmeans1d``, or deepzip's own ``optimal_kmeans_1d``
  on at most 20 000 values when ``kmeans1d`` is not installed).

    python benchmarks/kmeans_speed.py                 # 10 million weights, k = 32 and 256
    python benchmarks/kmeans_speed.py --n 1000000     # quicker

At 10 million values scikit-learn (O(n·k) per iteration: about 1.3 s per iteration at k = 256
here) and ``kmeans1d`` (O(n·k), k = 32 only by default) take most of the run: expect 10 minutes
or more.

Needs scikit-learn (and, for the optimum, ``kmeans1d``). Writes
benchmarks/results/kmeans_speed.json (``--out`` to change) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepzip._atomic import atomic_write_text
from deepzip.quantize import initial_centroids, kmeans_1d, optimal_kmeans_1d
from deepzip.quantize.kmeans import DEFAULT_MAX_ITER
from deepzip.report import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
SLOW_S = 30.0  # measure scikit-learn only once when a run takes longer than this


def laplace_weights(n: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    """``n`` float32 values from Laplace(0, scale), by inverse CDF from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(torch.float32)


def sse(x64: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared errors in float64 (the one formula used for every method)."""
    err = x64 - np.asarray(centroids, dtype=np.float64)[np.asarray(labels, dtype=np.int64)]
    return float(np.dot(err, err))


def time_deepzip(
    x: torch.Tensor, k: int, init: torch.Tensor, max_iter: int, repeats: int
) -> tuple[list[float], float, Any]:
    t = time.perf_counter()
    kmeans_1d(x, k, init_centroids=init, max_iter=max_iter)  # warm-up
    warmup = time.perf_counter() - t
    times = []
    result = None
    for _ in range(repeats):
        t = time.perf_counter()
        result = kmeans_1d(x, k, init_centroids=init, max_iter=max_iter)
        times.append(time.perf_counter() - t)
    return times, warmup, result


def time_sklearn(
    x_np: np.ndarray, k: int, init: np.ndarray, max_iter: int, runs: int
) -> tuple[list[float], Any]:
    from sklearn.cluster import KMeans

    times: list[float] = []
    model = None
    for _ in range(runs):
        model = KMeans(
            n_clusters=k,
            n_init=1,
            init=init.reshape(-1, 1),
            algorithm="lloyd",
            max_iter=max_iter,
            tol=0.0,
        )
        t = time.perf_counter()
        model.fit(x_np.reshape(-1, 1))
        times.append(time.perf_counter() - t)
        if times[-1] > SLOW_S:
            break
    return times, model


def optimum(x64: np.ndarray, k: int) -> tuple[float, float, str]:
    """(optimal SSE, seconds, solver name)."""
    t = time.perf_counter()
    try:
        import kmeans1d
    except ImportError:
        if x64.size > 20_000:
            raise
        r = optimal_kmeans_1d(torch.from_numpy(x64), k)
        return r.sse, time.perf_counter() - t, "deepzip.optimal_kmeans_1d"
    clusters, centroids = kmeans1d.cluster(x64.tolist(), k)
    return (
        sse(x64, np.asarray(centroids), np.asarray(clusters)),
        time.perf_counter() - t,
        ("kmeans1d"),
    )


def have_kmeans1d() -> bool:
    try:
        import kmeans1d  # noqa: F401
    except ImportError:
        return False
    return True


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
    }
    try:
        import sklearn

        info["sklearn"] = sklearn.__version__
    except ImportError:
        info["sklearn"] = None
    try:
        from importlib.metadata import version

        info["kmeans1d"] = version("kmeans1d")
    except Exception:
        info["kmeans1d"] = None
    return info


def run_one(args: argparse.Namespace, x: torch.Tensor, k: int) -> dict[str, Any]:
    x_np = x.numpy()
    x64 = x_np.astype(np.float64)
    init = initial_centroids(x, k, init="linear").to(torch.float32)
    dz_times, warmup, dz = time_deepzip(x, k, init, args.max_iter, args.repeats)
    same = kmeans_1d(x, k, init="linear", max_iter=args.max_iter)
    assert torch.equal(same.centroids, dz.centroids), "init_centroids != the linear init"
    dz_sse = sse(x64, dz.centroids.numpy(), dz.labels.numpy())
    row: dict[str, Any] = {
        "n": x.numel(),
        "k": k,
        "max_iter": args.max_iter,
        "sklearn_max_iter": args.sklearn_max_iter,
        "deepzip_s": statistics.median(dz_times),
        "sklearn_s": None,
        "deepzip_sse": dz_sse,
        "deepzip_reported_sse": dz.sse,
        "sklearn_sse": None,
        "optimal_sse": None,
        "deepzip_iterations": dz.iterations,
        "deepzip_converged": dz.converged,
        "sklearn_iterations": None,
        "runs": {"deepzip_warmup_s": warmup, "deepzip_s": dz_times},
    }
    if not args.no_sklearn:
        sk_times, model = time_sklearn(
            x_np, k, init.numpy(), args.sklearn_max_iter, args.sklearn_runs
        )
        row["sklearn_s"] = statistics.median(sk_times)
        row["sklearn_sse"] = sse(x64, model.cluster_centers_.ravel(), model.labels_)
        row["sklearn_iterations"] = int(model.n_iter_)
        # the same algorithm stopped at scikit-learn's iteration count
        at = kmeans_1d(x, k, init_centroids=init, max_iter=int(model.n_iter_))
        row["deepzip_sse_at_sklearn_iterations"] = sse(x64, at.centroids.numpy(), at.labels.numpy())
        row["runs"]["sklearn_s"] = sk_times
        row["runs"]["sklearn_count"] = len(sk_times)
    if have_kmeans1d() and x.numel() * k <= args.optimal_max_nk:
        row["optimal_sse"], secs, solver = optimum(x64, k)
        row["runs"]["optimal_s"] = secs
        row["optimal_solver"] = solver
    else:
        why = "kmeans1d is not installed" if not have_kmeans1d() else "n·k > --optimal-max-nk"
        row["optimal_note"] = f"full-data optimum skipped: {why}"
    # quality on a subsample, where the exact optimum is always affordable
    m = min(x.numel(), args.subsample if have_kmeans1d() else 20_000)
    pick = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(args.seed + 1))[:m]
    sub = x[pick]
    sub64 = sub.numpy().astype(np.float64)
    r = kmeans_1d(sub, k, init="linear", max_iter=args.max_iter)
    best, secs, solver = optimum(sub64, k)
    row["subsample"] = {
        "n": m,
        "solver": solver,
        "optimal_sse": best,
        "optimal_s": secs,
        "deepzip_sse": sse(sub64, r.centroids.numpy(), r.labels.numpy()),
        "deepzip_iterations": r.iterations,
    }
    return row


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000_000, help="number of weights")
    p.add_argument("--k", type=int, nargs="+", default=[32, 256])
    p.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER, help="deepzip's cap")
    p.add_argument("--sklearn-max-iter", type=int, default=300, help="scikit-learn's cap")
    p.add_argument("--repeats", type=int, default=3, help="timed deepzip runs (median)")
    p.add_argument("--sklearn-runs", type=int, default=3, help="at most; 1 if a run > 30 s")
    p.add_argument("--no-sklearn", action="store_true")
    p.add_argument("--optimal-max-nk", type=float, default=4e8, help="kmeans1d is O(n·k)")
    p.add_argument("--subsample", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "kmeans_speed.json")
    args = p.parse_args(argv)

    torch.set_num_threads(os.cpu_count() or 1)
    x = laplace_weights(args.n, args.seed)
    rows = [run_one(args, x, k) for k in args.k]

    table = []
    for r in rows:
        speedup = None if r["sklearn_s"] is None else r["sklearn_s"] / r["deepzip_s"]
        sk_runs = r["runs"].get("sklearn_count")
        ratio = None if r["optimal_sse"] is None else r["deepzip_sse"] / r["optimal_sse"]
        sub = r["subsample"]
        table.append(
            [
                f"{r['n']:,}",
                r["k"],
                fmt(r["deepzip_s"], ".3f"),
                fmt(r["sklearn_s"], ".2f") + (f" ({sk_runs} run)" if sk_runs == 1 else ""),
                fmt(speedup, ".0f") + ("×" if speedup else ""),
                fmt(r["deepzip_sse"], ".6g"),
                fmt(r["sklearn_sse"], ".6g"),
                fmt(r.get("deepzip_sse_at_sklearn_iterations"), ".6g"),
                fmt(r["optimal_sse"], ".6g"),
                fmt(ratio, ".3f"),
                f"{sub['deepzip_sse'] / sub['optimal_sse']:.3f} (n={sub['n']:,})",
                f"{r['deepzip_iterations']} / {fmt(r['sklearn_iterations'], 'd')}",
            ]
        )
    headers = [
        "n",
        "k",
        "deepzip s",
        "sklearn s",
        "speed-up",
        "deepzip SSE",
        "sklearn SSE",
        "deepzip SSE at sklearn's iterations",
        "optimal SSE",
        "deepzip / optimal",
        "deepzip / optimal (subsample)",
        "iterations dz / sk",
    ]
    print(markdown_table(headers, table))
    info = machine()
    print(f"machine: {info['processor']}, {info['cpu_count']} CPUs, torch {info['torch']}")
    payload = {"benchmark": "kmeans_speed", "machine": info, "results": rows}
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
