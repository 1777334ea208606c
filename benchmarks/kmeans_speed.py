"""1-D k-means speed and quality: deepzip's sorted-Lloyd against scikit-learn's Lloyd.

The data stand in for one large trained layer: float32 weights drawn from a Laplace
distribution (scale 0.02, seeded). For each k, both methods start from the same initial
centroids (deepzip's ``linear`` init: k points evenly over [min, max], rounded to float32) and
run Lloyd's algorithm with ``tol=0`` (stop only when the assignment stops changing), each up to
its own default iteration cap: deepzip's ``kmeans_1d`` 1000 (after its one sort an iteration
costs O(k log n)), scikit-learn's ``KMeans(n_init=1, init=<same centroids>, algorithm="lloyd",
tol=0)`` 300 (an iteration costs O(n·k)). Whether each stopped at a fixed point or at its cap
is recorded (``deepzip_converged``, ``sklearn_converged``, and both iteration counts).

Timing protocol, per k: one untimed warm-up of each (deepzip: a whole run; scikit-learn: a
1-iteration fit on the same data, which loads its code and starts its thread pool without
spending minutes), then ``--runs`` rounds, each timing one whole deepzip run and one whole
scikit-learn run back to back, the order alternating from round to round so that neither
always runs first on a shared machine. Reported: the median wall-clock time of each over the
rounds and their ratio; every time, the warm-ups and the run counts are in the JSON under
``runs``. Both use every core (torch and scikit-learn's OpenMP threads).

Quality, per k (every SSE computed here the same way, in float64, from a method's labels and
centroids):

* deepzip's SSE at its own stop and scikit-learn's at its own stop: two different iteration
  counts;
* deepzip's SSE when it is stopped at scikit-learn's iteration count
  (``deepzip_sse_at_sklearn_iterations``). This is NOT the same trajectory as scikit-learn's:
  the two implementations treat empty clusters differently (deepzip splits the live cluster
  whose split lowers the SSE most; scikit-learn moves each empty centre onto one of the
  samples farthest from their centres) and round differently (deepzip's centroid updates come
  from float64 prefix sums; scikit-learn accumulates in float32, the data's dtype). Which of
  the two makes the difference is not measured here. The committed run
  (``benchmarks/results/kmeans_speed.json``: 10 million values, written under an earlier
  protocol: deepzip 3 timed runs after a warm-up, scikit-learn one run without warm-up, not
  interleaved) shows how far apart they end up after 300 iterations: SSE 33.29 (deepzip)
  against 33.25 (scikit-learn) at k = 32, but 1.453 against 2.583 at k = 256. Both stopped at
  their caps there, for both k (deepzip after 1000 iterations, ``deepzip_converged`` false;
  scikit-learn after 300), so none of these SSEs is a converged Lloyd solution;
* the exact optimum from the ``kmeans1d`` package (O(n·k)) when n·k is at most
  ``--optimal-max-nk``, else null; and, always, the optimum and deepzip's SSE on a seeded
  subsample of ``--subsample`` values (``kmeans1d``, or deepzip's own ``optimal_kmeans_1d``
  on at most 20 000 values when ``kmeans1d`` is not installed).

    python benchmarks/kmeans_speed.py                 # 10 million weights, k = 32 and 256
    python benchmarks/kmeans_speed.py --n 1000000     # quicker

At 10 million values scikit-learn (about 1 s per iteration at k = 256 on 2 cores, so about 5
minutes per run) and ``kmeans1d`` (O(n·k), k = 32 only by default: about 2 minutes) take most
of the run: with the default 3 rounds expect about 20 minutes.

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

# benchmarks/ is this script's directory, so its sibling is importable
from _peers import require_peers
from deepzip._atomic import atomic_write_text
from deepzip.quantize import initial_centroids, kmeans_1d, optimal_kmeans_1d
from deepzip.quantize.kmeans import DEFAULT_MAX_ITER
from deepzip.report import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"


def laplace_weights(n: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    """``n`` float32 values from Laplace(0, scale), by inverse CDF from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(torch.float32)


def sse(x64: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared errors in float64 (the one formula used for every method)."""
    err = x64 - np.asarray(centroids, dtype=np.float64)[np.asarray(labels, dtype=np.int64)]
    return float(np.dot(err, err))


def sklearn_kmeans(k: int, init: np.ndarray, max_iter: int) -> Any:
    """scikit-learn's Lloyd from the given centroids, ``tol=0``, one initialisation."""
    from sklearn.cluster import KMeans

    return KMeans(
        n_clusters=k,
        n_init=1,
        init=init.reshape(-1, 1),
        algorithm="lloyd",
        max_iter=max_iter,
        tol=0.0,
    )


def time_interleaved(
    x: torch.Tensor,
    k: int,
    init: torch.Tensor,
    *,
    max_iter: int,
    sklearn_max_iter: int | None,
    runs: int,
) -> tuple[dict[str, Any], Any, Any]:
    """Warm up both methods, then ``runs`` rounds of one timed run each, alternating which
    goes first. ``sklearn_max_iter=None`` leaves scikit-learn out.

    Returns:
        (the timings for the JSON, deepzip's last result, scikit-learn's last fitted model).
    """
    x2 = x.numpy().reshape(-1, 1)
    init_np = init.numpy()
    t = time.perf_counter()
    kmeans_1d(x, k, init_centroids=init, max_iter=max_iter)
    timings: dict[str, Any] = {"deepzip_warmup_s": time.perf_counter() - t}
    if sklearn_max_iter is not None:
        t = time.perf_counter()
        sklearn_kmeans(k, init_np, 1).fit(x2)
        timings["sklearn_warmup_s"] = time.perf_counter() - t
        timings["sklearn_warmup"] = "a 1-iteration fit on the same data"
    dz_times: list[float] = []
    sk_times: list[float] = []
    order: list[str] = []
    last: dict[str, Any] = {}

    def run_deepzip() -> None:
        t = time.perf_counter()
        last["deepzip"] = kmeans_1d(x, k, init_centroids=init, max_iter=max_iter)
        dz_times.append(time.perf_counter() - t)

    def run_sklearn() -> None:
        assert sklearn_max_iter is not None
        model = sklearn_kmeans(k, init_np, sklearn_max_iter)
        t = time.perf_counter()
        model.fit(x2)
        sk_times.append(time.perf_counter() - t)
        last["sklearn"] = model

    for i in range(runs):
        steps = [("deepzip", run_deepzip)]
        if sklearn_max_iter is not None:
            steps.append(("sklearn", run_sklearn))
        if i % 2:
            steps.reverse()
        for name, step in steps:
            order.append(name)
            step()
    timings |= {
        "deepzip_s": dz_times,
        "deepzip_count": len(dz_times),
        "sklearn_s": sk_times if sklearn_max_iter is not None else None,
        "sklearn_count": len(sk_times),
        "order": order,
    }
    return timings, last["deepzip"], last.get("sklearn")


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
    x64 = x.numpy().astype(np.float64)
    init = initial_centroids(x, k, init="linear").to(torch.float32)
    timings, dz, model = time_interleaved(
        x,
        k,
        init,
        max_iter=args.max_iter,
        sklearn_max_iter=None if args.no_sklearn else args.sklearn_max_iter,
        runs=args.runs,
    )
    same = kmeans_1d(x, k, init="linear", max_iter=args.max_iter)
    assert torch.equal(same.centroids, dz.centroids), "init_centroids != the linear init"
    dz_sse = sse(x64, dz.centroids.numpy(), dz.labels.numpy())
    row: dict[str, Any] = {
        "n": x.numel(),
        "k": k,
        "max_iter": args.max_iter,
        "sklearn_max_iter": args.sklearn_max_iter,
        "deepzip_s": statistics.median(timings["deepzip_s"]),
        "sklearn_s": None,
        "speedup": None,
        "deepzip_sse": dz_sse,
        "deepzip_reported_sse": dz.sse,
        "sklearn_sse": None,
        "optimal_sse": None,
        "deepzip_iterations": dz.iterations,
        "deepzip_converged": dz.converged,
        "sklearn_iterations": None,
        "sklearn_converged": None,
        "protocol": "one untimed warm-up each, then interleaved rounds (alternating order) of "
        "one timed run each; medians over the rounds",
        "runs": timings,
    }
    if model is not None:
        row["sklearn_s"] = statistics.median(timings["sklearn_s"])
        row["speedup"] = row["sklearn_s"] / row["deepzip_s"]
        row["sklearn_sse"] = sse(x64, model.cluster_centers_.ravel(), model.labels_)
        row["sklearn_iterations"] = int(model.n_iter_)
        # tol=0: scikit-learn stops before its cap only at a fixed point (unchanged labels or
        # centres); a fixed point reached at exactly the last iteration reads as not converged
        row["sklearn_converged"] = int(model.n_iter_) < args.sklearn_max_iter
        # deepzip from the same start, stopped at scikit-learn's iteration count (not the same
        # trajectory: empty clusters and rounding are handled differently; see the docstring)
        at = kmeans_1d(x, k, init_centroids=init, max_iter=int(model.n_iter_))
        row["deepzip_sse_at_sklearn_iterations"] = sse(x64, at.centroids.numpy(), at.labels.numpy())
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
    p.add_argument(
        "--runs",
        type=int,
        default=3,
        help="interleaved rounds, each timing one deepzip and one scikit-learn run (medians)",
    )
    p.add_argument("--no-sklearn", action="store_true")
    p.add_argument("--optimal-max-nk", type=float, default=4e8, help="kmeans1d is O(n·k)")
    p.add_argument("--subsample", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "kmeans_speed.json")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    if not args.no_sklearn:
        require_peers("benchmarks/kmeans_speed.py", "sklearn", otherwise="pass --no-sklearn")

    torch.set_num_threads(os.cpu_count() or 1)
    x = laplace_weights(args.n, args.seed)
    rows = [run_one(args, x, k) for k in args.k]

    table = []
    for r in rows:
        speedup = r["speedup"]
        ratio = None if r["optimal_sse"] is None else r["deepzip_sse"] / r["optimal_sse"]
        sub = r["subsample"]
        table.append(
            [
                f"{r['n']:,}",
                r["k"],
                fmt(r["deepzip_s"], ".3f"),
                fmt(r["sklearn_s"], ".2f"),
                fmt(speedup, ".0f") + ("×" if speedup else ""),
                fmt(r["deepzip_sse"], ".6g"),
                fmt(r["sklearn_sse"], ".6g"),
                fmt(r.get("deepzip_sse_at_sklearn_iterations"), ".6g"),
                fmt(r["optimal_sse"], ".6g"),
                fmt(ratio, ".3f"),
                f"{sub['deepzip_sse'] / sub['optimal_sse']:.3f} (n={sub['n']:,})",
                f"{r['deepzip_iterations']}{'' if r['deepzip_converged'] else ' (cap)'} / "
                + fmt(r["sklearn_iterations"], "d")
                + ("" if r["sklearn_converged"] in (True, None) else " (cap)"),
            ]
        )
    headers = [
        "n",
        "k",
        f"deepzip s (median of {args.runs})",
        f"sklearn s (median of {args.runs})",
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
    print(
        f"Timing: one warm-up each, then {args.runs} interleaved rounds (order alternating). "
        "SSE in float64 from each method's labels and centroids; '(cap)': stopped at the "
        "iteration cap, not at a fixed point."
    )
    info = machine()
    print(f"machine: {info['processor']}, {info['cpu_count']} CPUs, torch {info['torch']}")
    payload = {
        "benchmark": "kmeans_speed",
        "command": "python benchmarks/kmeans_speed.py " + " ".join(argv or sys.argv[1:]),
        "runs": args.runs,
        "machine": info,
        "results": rows,
    }
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
