"""Runtime speed and weight memory: deepzip's SparseLinear against dense ``torch.nn.Linear``.

The layers are AlexNet's fully connected shapes at the densities of the Deep Compression paper
(Han et al. 2016, table 4): fc6 9216→4096 at 9%, fc7 4096→4096 at 9%, fc8 4096→1000 at 25%.
Each weight is drawn at random (seeded), pruned by magnitude with ``deepzip.prune_`` and
quantized to 5 bits (32 shared values) with ``deepzip.quantize_``; the dense baseline is an
``nn.Linear`` holding exactly the decoded weights, and the outputs are checked against it.

For every layer and batch size, the dense layer, deepzip's runtime layer and (unless
``--no-peer``) ``torch.sparse.mm`` on a float32 CSR copy of the same weights (the MKL sparse
BLAS path the paper's CPU figure used) run interleaved: each repetition runs all of them once,
in rotating order, after warm-up, under ``torch.inference_mode()``, and the medians are
reported with their ratios. The machine these run on is shared and noisy; ratios taken within
one run are what to compare. ``--cold`` also times every call after evicting the caches
(a 64 MiB buffer is rewritten first), which is what a layer sees inside a network whose
weights do not all fit in the last-level cache.

deepzip's default (``backend="auto"``) multiplies a single input vector with its compiled gather
kernel, which reads only the compact arrays, and hands batches to ``torch.sparse.mm`` on a
float32 CSR copy with int32 indices built once (MKL was 2-3× faster than deepzip's compiled
batch kernel from batch 8); the copy is counted in ``deepzip_bytes`` from the first batch on.
The compiled batch kernel on the compact arrays (``backend="numba"``) is timed too
(``compact_ms``; its memory is ``compact_bytes``).

Weight memory counts every array: dense is ``out × in × 4`` bytes; deepzip counts row and
group pointers, group codes and lengths, the padded column indices and the codebook (the bias,
the same in both, is left out).

``--sweep`` adds the crossover measurements behind the automatic policy
(``deepzip.runtime.RuntimePolicy``): a 4096×4096 and a 2048×2048 linear layer and two
convolutions (64→64 3×3 on 16×16, LeNet-5's conv2 on 12×12) over a range of densities and
batch sizes, without the peer and without ``--cold``, each point timed with
``max(5, --repeats // 3)`` interleaved repetitions after ``--warmup`` (CPU only).

    python benchmarks/runtime.py                  # the three AlexNet layers, batch 1, 8, 64
    python benchmarks/runtime.py --cold --sweep   # what benchmarks/results/runtime.json holds

Each row, of the AlexNet table and of the sweep alike, is the median over ``--runs`` whole
measurements (5 by default; the layers are rebuilt each time, which moves their memory): times
are medians of the runs' times, speedups medians of the runs' own ratios. The per-run values
are in the JSON under ``runs`` in every row; the sweep's own settings under ``sweep_settings``.

Writes benchmarks/results/runtime.json (``--out`` to change) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import torch
from torch import nn

import deepzip as dz
from deepzip._atomic import atomic_write_text
from deepzip.quantize.shared import SharedTensor
from deepzip.report import markdown_table
from deepzip.runtime import SparseConv, SparseLinear, build_shared_csr
from deepzip.runtime.timing import CacheEvictor, interleaved_medians, median_ms

RESULTS = Path(__file__).resolve().parent / "results"

ALEXNET_FC = (
    ("fc6", 9216, 4096, 0.09),
    ("fc7", 4096, 4096, 0.09),
    ("fc8", 4096, 1000, 0.25),
)


def compressed(module: nn.Module, density: float, bits: int, seed: int) -> SharedTensor:
    """Seeded random weights, magnitude-pruned to ``density`` and quantized to ``bits``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        module.weight.normal_(0.0, 0.05)  # type: ignore[operator]
    holder = nn.Sequential(module)  # the layer as a submodule, as in a real network
    dz.prune_(holder, dz.PruneConfig(sparsity=1.0 - density))
    dz.quantize_(holder, dz.QuantizeConfig(bits=bits))
    return dz.export_shared(holder)["0.weight"]


def dense_copy(module: nn.Module, shared: SharedTensor) -> nn.Module:
    """The module with plain dense weights equal to the decoded shared weights."""
    dz.strip_(module)
    with torch.no_grad():
        module.weight.copy_(shared.dense())  # type: ignore[operator]
    return module.eval()


def torch_csr_linear(
    shared: SharedTensor, bias: torch.Tensor, device: torch.device
) -> Callable[[torch.Tensor], Any]:
    """``torch.sparse`` peer: float32 CSR values (12 bytes per weight) and ``addmm``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        csr = shared.dense().to(device).to_sparse_csr()
    b = bias.to(device).unsqueeze(1)
    return lambda x: torch.sparse.addmm(b, csr, x.t()).t()


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn``, waiting for the device to finish (CUDA runs asynchronously)."""
    if device.type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def measure(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, cold: bool
) -> dict[str, float]:
    """Median ms per candidate (and ``<name>_cold`` medians with ``cold``)."""
    names = list(fns)
    hot = interleaved_medians([fns[n] for n in names], repeats=repeats, warmup=warmup)
    out = {n: median_ms(t) for n, t in zip(names, hot, strict=True)}
    if cold:
        evict = CacheEvictor()
        cold_times = interleaved_medians(
            [fns[n] for n in names], repeats=repeats, warmup=1, before_each=evict
        )
        out |= {f"{n}_cold": median_ms(t) for n, t in zip(names, cold_times, strict=True)}
    return out


def bench_linear(
    name: str,
    n_in: int,
    n_out: int,
    density: float,
    batches: list[int],
    args: argparse.Namespace,
    *,
    peer: bool,
) -> list[dict[str, Any]]:
    """Rows of results for one linear layer at every batch size."""
    layer = nn.Linear(n_in, n_out)
    shared = compressed(layer, density, 5, args.seed)
    bias = layer.bias.detach().clone()
    device = torch.device(args.device)
    dense = dense_copy(layer, shared).to(device)
    arrays = build_shared_csr(shared, name=name)
    sparse = SparseLinear(arrays, bias, name=name).eval().to(device)
    # the compiled batch kernel on the compact arrays (what "auto" hands to MKL for batches)
    compact = SparseLinear(arrays, bias, name=name, backend="numba").eval()
    peer_fn = torch_csr_linear(shared, bias, device) if peer else None
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(args.seed + batch)
        x = torch.randn(batch, n_in, generator=g).to(device)
        with torch.inference_mode():
            expected = dense(x)
            err = float((sparse(x) - expected).abs().max())
            fns: dict[str, Callable[[], object]] = {
                "dense": synced(functools.partial(dense, x), device),
                "deepzip": synced(functools.partial(sparse, x), device),
            }
            if peer_fn is not None:
                fns["torch_csr"] = synced(functools.partial(peer_fn, x), device)
            if batch > 1 and device.type == "cpu":
                fns["compact"] = functools.partial(compact, x)
            t = measure(fns, args.repeats, args.warmup, args.cold and device.type == "cpu")
        used = sparse.weight_nbytes + sparse.cache_nbytes  # the float CSR copy, once built
        row: dict[str, Any] = {
            "layer": name,
            "shape": [n_out, n_in],
            "density": sparse.density,
            "batch": batch,
            "dense_ms": t["dense"],
            "deepzip_ms": t["deepzip"],
            "speedup": t["dense"] / t["deepzip"],
            "dense_bytes": n_out * n_in * 4,
            "deepzip_bytes": used,
            "memory_ratio": n_out * n_in * 4 / used,
            "deepzip_path": "numba gather kernel on the compact arrays"
            if sparse.cache_nbytes == 0
            else "torch.sparse.mm on a float32 CSR copy (built once, counted in deepzip_bytes)",
            "compact_bytes": sparse.weight_nbytes,
            "max_abs_error": err,
            "max_abs_output": float(expected.abs().max()),
        }
        if peer_fn is not None:
            row["torch_csr_ms"] = t["torch_csr"]
        if "compact" in t:
            row["compact_ms"] = t["compact"]
        if args.cold and device.type == "cpu":
            row["dense_cold_ms"] = t["dense_cold"]
            row["deepzip_cold_ms"] = t["deepzip_cold"]
            row["speedup_cold"] = t["dense_cold"] / t["deepzip_cold"]
        rows.append(row)
        print(
            f"  {name} batch {batch}: dense {row['dense_ms']:.3f} ms, deepzip "
            f"{row['deepzip_ms']:.3f} ms ({row['speedup']:.2f}×)",
            file=sys.stderr,
        )
    return rows


def bench_conv(
    name: str,
    channels: tuple[int, int],
    kernel: int,
    size: int,
    density: float,
    batches: list[int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Rows of results for one convolution (8-bit shared weights) at every batch size."""
    conv = nn.Conv2d(channels[0], channels[1], kernel, padding=kernel // 2)
    shared = compressed(conv, density, 8, args.seed)
    sparse = SparseConv.from_conv(conv, shared, name=name).eval()
    dense = dense_copy(conv, shared)
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(args.seed + batch)
        x = torch.randn(batch, channels[0], size, size, generator=g)
        with torch.inference_mode():
            err = float((sparse(x) - dense(x)).abs().max())
            t = measure(
                {"dense": functools.partial(dense, x), "deepzip": functools.partial(sparse, x)},
                args.repeats,
                args.warmup,
                cold=False,
            )
        rows.append(
            {
                "layer": name,
                "kind": "conv2d",
                "shape": list(conv.weight.shape),
                "input": [batch, channels[0], size, size],
                "density": sparse.density,
                "batch": batch,
                "dense_ms": t["dense"],
                "deepzip_ms": t["deepzip"],
                "speedup": t["dense"] / t["deepzip"],
                "dense_bytes": conv.weight.numel() * 4,
                "deepzip_bytes": sparse.weight_nbytes,
                "max_abs_error": err,
            }
        )
    return rows


def sweep_namespace(args: argparse.Namespace) -> argparse.Namespace:
    """The sweep's settings: fewer repetitions per point than the main table, no cold runs."""
    return argparse.Namespace(**{**vars(args), "repeats": max(5, args.repeats // 3), "cold": False})


def sweep(args: argparse.Namespace) -> list[list[dict[str, Any]]]:
    """Crossover measurements behind the automatic policy: ``args.runs`` whole measurements
    of every point, one list of rows per run (merge them with :func:`median_rows`)."""
    sweep_args = sweep_namespace(args)
    runs = []
    for run in range(args.runs):
        print(f"sweep run {run + 1}/{args.runs}", file=sys.stderr)
        runs.append(sweep_once(sweep_args))
    return runs


def sweep_once(sweep_args: argparse.Namespace) -> list[dict[str, Any]]:
    """One measurement of every sweep point, with the sweep's settings."""
    out: list[dict[str, Any]] = []
    for n in (4096, 2048):  # 64 MiB dense (outside the cache) and 16 MiB (inside a 32 MiB L3)
        for density in (0.03, 0.06, 0.09, 0.15, 0.25):
            print(f"sweep linear {n}×{n} at {density:.0%}", file=sys.stderr)
            for row in bench_linear(
                f"linear{n}", n, n, density, [1, 8, 64], sweep_args, peer=False
            ):
                row["kind"] = "linear"
                out.append(row)
    for name, channels, kernel, size in (
        ("conv64x64k3", (64, 64), 3, 16),
        ("lenet5-conv2", (20, 50), 5, 12),
    ):
        for density in (0.01, 0.03, 0.06, 0.12):
            print(f"sweep {name} at {density:.0%}", file=sys.stderr)
            out += bench_conv(name, channels, kernel, size, density, [1, 8, 64], sweep_args)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch (and kernel) threads")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument(
        "--runs", type=int, default=5, help="whole measurements; each row reports their median"
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold", action="store_true", help="also time with evicted caches")
    parser.add_argument("--no-peer", action="store_true", help="skip the torch.sparse peer")
    parser.add_argument("--sweep", action="store_true", help="add the policy crossover sweep")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to time the GPU path")
    parser.add_argument("--out", default=str(RESULTS / "runtime.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    batches = [int(b) for b in args.batches.split(",")]
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    runs = []
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", file=sys.stderr)
        rows = []
        for name, n_in, n_out, density in ALEXNET_FC:
            rows += bench_linear(name, n_in, n_out, density, batches, args, peer=not args.no_peer)
        runs.append(rows)
    rows = median_rows(runs)
    run_sweep = args.sweep and args.device == "cpu"
    sweep_rows = median_rows(sweep(args)) if run_sweep else []
    sweep_args = sweep_namespace(args)
    result = {
        "benchmark": "runtime",
        "description": "AlexNet fc layers (Han et al. 2016 densities), 5-bit shared weights: "
        "deepzip SparseLinear vs dense torch.nn.Linear, interleaved medians",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "kernel_threads": numba.get_num_threads(),
        "repeats": args.repeats,
        "runs": args.runs,
        "warmup": args.warmup,
        "cold": args.cold,
        "seed": args.seed,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "numba": numba.__version__,
            "python": platform.python_version(),
        },
        "seconds": time.perf_counter() - start,
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "results": rows,
        "stack": stack_rows(rows),
        "sweep": sweep_rows,
        "sweep_settings": {
            "runs": args.runs,
            "repeats": sweep_args.repeats,
            "warmup": sweep_args.warmup,
            "cold": False,
            "peer": False,
        }
        if run_sweep
        else None,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(render(result))
    return 0


_TIMES = (
    "dense_ms",
    "deepzip_ms",
    "torch_csr_ms",
    "compact_ms",
    "dense_cold_ms",
    "deepzip_cold_ms",
)
_RATIOS = ("speedup", "speedup_cold")


def median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per layer and batch: the median over the runs of every time and of every
    speedup (each speedup is a ratio taken within one run); the per-run values are kept."""
    merged = []
    for same in zip(*runs, strict=True):
        row = dict(same[0])
        for key in (*_TIMES, *_RATIOS):
            if key in row:
                row[key] = statistics.median(r[key] for r in same)
        row["runs"] = [{k: r[k] for k in (*_TIMES, *_RATIOS) if k in r} for r in same]
        merged.append(row)
    return merged


def stack_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The three layers together, per batch: summed times and bytes; the speedup is the
    median over the runs of each run's summed dense time over its summed deepzip time."""
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        same = [r for r in rows if r["batch"] == batch]
        per_run = [
            sum(r["runs"][i]["dense_ms"] for r in same)
            / sum(r["runs"][i]["deepzip_ms"] for r in same)
            for i in range(len(same[0]["runs"]))
        ]
        dense_bytes = sum(r["dense_bytes"] for r in same)
        deepzip_bytes = sum(r["deepzip_bytes"] for r in same)
        out.append(
            {
                "layers": [r["layer"] for r in same],
                "batch": batch,
                "dense_ms": sum(r["dense_ms"] for r in same),
                "deepzip_ms": sum(r["deepzip_ms"] for r in same),
                "speedup": statistics.median(per_run),
                "dense_bytes": dense_bytes,
                "deepzip_bytes": deepzip_bytes,
                "memory_ratio": dense_bytes / deepzip_bytes,
            }
        )
    return out


def _ms(v: float) -> str:
    return f"{v:.3f}"


def render(result: dict[str, Any]) -> str:
    """Markdown tables of a result file."""
    rows = result["results"]
    cold = any("dense_cold_ms" in r for r in rows)
    peer = any("torch_csr_ms" in r for r in rows)
    compact = any("compact_ms" in r for r in rows)
    headers = ["layer", "shape", "density", "batch", "dense ms", "deepzip ms", "speedup"]
    if compact:
        headers.append("compact kernel ms")
    if peer:
        headers.append("torch.sparse ms")
    if cold:
        headers += ["dense ms (cold)", "deepzip ms (cold)", "speedup (cold)"]
    headers += ["dense bytes", "deepzip bytes", "memory"]
    body = []
    for r in rows:
        line = [
            r["layer"],
            f"{r['shape'][1]}→{r['shape'][0]}",
            f"{100 * r['density']:.1f}%",
            str(r["batch"]),
            _ms(r["dense_ms"]),
            _ms(r["deepzip_ms"]),
            f"{r['speedup']:.2f}×",
        ]
        if compact:
            line.append(_ms(r["compact_ms"]) if "compact_ms" in r else "=")
        if peer:
            line.append(_ms(r["torch_csr_ms"]))
        if cold:
            line += [
                _ms(r["dense_cold_ms"]),
                _ms(r["deepzip_cold_ms"]),
                f"{r['speedup_cold']:.2f}×",
            ]
        line += [
            f"{r['dense_bytes']:,}",
            f"{r['deepzip_bytes']:,}",
            f"1/{r['dense_bytes'] / r['deepzip_bytes']:.1f}",
        ]
        body.append(line)
    load = result.get("load_average", {})
    text = (
        f"{result.get('device', 'cpu')}, torch threads = {result['torch_threads']}, kernel "
        f"threads = {result['kernel_threads']}, median over {result.get('runs', 1)} runs of the "
        f"median of {result['repeats']} interleaved repetitions; machine load average "
        f"{load.get('before', float('nan')):.1f} → "
        f"{load.get('after', float('nan')):.1f} on {result['machine']['cpu_count']} cores\n\n"
    )
    text += markdown_table(headers, body)
    if result.get("stack"):
        text += "\nThe three layers together (summed medians; speedup: median of the runs'):\n\n"
        text += markdown_table(
            ["batch", "dense ms", "deepzip ms", "speedup", "memory"],
            [
                [
                    str(r["batch"]),
                    _ms(r["dense_ms"]),
                    _ms(r["deepzip_ms"]),
                    f"{r['speedup']:.2f}×",
                    f"1/{r['memory_ratio']:.1f}",
                ]
                for r in result["stack"]
            ],
        )
    if result.get("sweep"):
        sweep_runs = (result.get("sweep_settings") or {}).get("runs", 1)
        text += (
            f"\nPolicy sweep (speedup of deepzip over dense, median of {sweep_runs} run(s); "
            "> 1 is faster):\n\n"
        )
        table: dict[tuple[str, float], dict[int, float]] = {}
        for r in result["sweep"]:
            table.setdefault((r["layer"], round(r["density"], 2)), {})[r["batch"]] = r["speedup"]
        batches = sorted({r["batch"] for r in result["sweep"]})
        text += markdown_table(
            ["layer", "density"] + [f"batch {b}" for b in batches],
            [
                [layer, f"{100 * d:.1f}%"] + [f"{s.get(b, float('nan')):.2f}×" for b in batches]
                for (layer, d), s in table.items()
            ],
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
