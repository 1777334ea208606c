"""Iterative magnitude pruning with retraining on LeNet-300-100 and LeNet-5 (Fashion-MNIST).

For each model: train a dense baseline, then prune iteratively with retraining to at most 8% of
the weights (LeNet-5's conv1 kept at 66% as in the paper), and report test accuracy of both in
the same run. The recipes are the ones shipped in deepzip/recipes/; their per-layer targets and
retraining settings were chosen on the validation split, never the test set.

    python benchmarks/prune_lenet.py            # one seed (about 9 min on 2 CPU cores)
    python benchmarks/prune_lenet.py --quick    # smoke run (a couple of minutes)
    python benchmarks/prune_lenet.py --seeds 5 --jobs 2 --device cpu  # the committed results

``--seeds N`` repeats each model with training seeds ``--seed``, ..., ``--seed`` + N - 1 and
reports the run with the median accuracy drop, every run summarised under ``runs``; ``--jobs``
runs the seeds in parallel worker processes. On a GPU one LeNet-5 seed takes about 2 minutes
(16 cores, 5 workers), on 2 CPU cores about 8.

The train/validation split does not follow the training seed: it is drawn with
``--split-seed`` (0 by default), the split the recipes were chosen on and the one the other
benchmarks load beside the checkpoints this one caches. The JSON records it (``split_seed``),
and so does the metadata of the cached checkpoints (``deepzip.split_seed``), which are written
only for the default split (and the first training seed), and only with ``--write-cache`` (or
``--quick``, whose checkpoints have names of their own): the committed results of the later
benchmarks started from the checkpoints of this benchmark at commit 5e9a4df, before the
data-order fix, which ``scripts/rebuild_benchmark_cache.sh`` rebuilds, and a run of this one
would replace them with others.

Everything runs on ``--device`` (the CPU by default); the JSON's ``device`` is that device.

Writes benchmarks/results/prune_lenet.json (or prune_lenet_quick.json) and prints a Markdown
table beside the paper's pruning-only figures (MNIST).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from deepzip._atomic import atomic_write_text
from deepzip.config import ScheduleConfig, builtin_recipe
from deepzip.datasets import DataSplits, load_dataset
from deepzip.format import apply_checkpoint, read_checkpoint, save_checkpoint
from deepzip.pipeline import accuracy_fn, make_loaders, prune_with_retraining, train_dense
from deepzip.report import markdown_table
from deepzip.train import resolve_device
from deepzip.zoo import create_model

RESULTS = Path(__file__).resolve().parent / "results"
# Dense and pruned checkpoints for the later stages' benchmarks (not committed: see .gitignore).
CACHE = RESULTS / "cache"

# The paper's pruning-only results on MNIST (Han et al. 2015 / 2016, Table 1 of "Learning both
# Weights and Connections"): percentage of weights kept per layer and overall.
PAPER = {
    "lenet-300-100": {
        "kept": {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26},
        "overall": 0.08,
        "err_before": 1.64,
        "err_after": 1.59,
        "ratio": 12,
    },
    "lenet-5": {
        "kept": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19},
        "overall": 0.08,
        "err_before": 0.80,
        "err_after": 0.77,
        "ratio": 12,
    },
}

# The recipes shipped in deepzip/recipes/ (their comments say how the targets were chosen).
MODELS = ("lenet-300-100", "lenet-5")
# The train/validation split the recipes were chosen on, and the one the benchmarks that read
# the cached checkpoints load (load_dataset(..., seed=0)).
SPLIT_SEED = 0


def _subsample(data: DataSplits, n_train: int) -> DataSplits:
    return DataSplits(data.train.subset(torch.arange(n_train)), data.val, data.test)


def _cached_dense(model: torch.nn.Module, path: Path, meta: dict[str, str]) -> bool:
    """Load the dense baseline from ``path`` if it was trained with the same settings."""
    if not path.exists():
        return False
    ckpt = read_checkpoint(path)
    if any(ckpt.metadata.get(k) != v for k, v in meta.items()):
        return False
    apply_checkpoint(model, ckpt)
    return True


def run_model(
    name: str,
    data: DataSplits,
    *,
    quick: bool,
    seed: int,
    split_seed: int = SPLIT_SEED,
    reuse_dense: bool = False,
    device: torch.device | None = None,
    cache: bool = True,
) -> dict[str, object]:
    """One model and training seed on ``data`` (drawn with ``split_seed``), on ``device``
    (``None``: the CPU)."""
    device = device if device is not None else torch.device("cpu")
    job = builtin_recipe(name)
    assert job.train is not None
    dense_cfg = replace(job.train, seed=seed)
    if quick:
        dense_cfg = replace(dense_cfg, epochs=1)
        job = replace(
            job,
            retrain=replace(job.retrain, epochs=1, final_epochs=0),
            schedule=ScheduleConfig(kind="steps", steps=(0.6, 1.0)),
        )
    torch.manual_seed(seed)
    model = create_model(name)
    suffix = "-quick" if quick else ""
    dense_path = CACHE / f"{name}-dense{suffix}.safetensors"
    meta = {
        "deepzip.model": name,
        "deepzip.dataset": "fashion-mnist",
        "deepzip.dense_train": json.dumps(dense_cfg.to_dict(), sort_keys=True),
        "deepzip.split_seed": str(split_seed),
    }
    t0 = time.perf_counter()
    reused = reuse_dense and _cached_dense(model, dense_path, meta)
    model.to(device)
    if not reused:
        train_dense(model, data, dense_cfg, device=device)
        if cache:
            save_checkpoint(model.cpu(), dense_path, metadata=meta)
            model.to(device)
    t_dense = time.perf_counter() - t0
    dense_acc = accuracy_fn(make_loaders(data, 1000).test, device)(model)
    t0 = time.perf_counter()
    outcome = prune_with_retraining(model, data, job, seed=seed, device=device)
    t_prune = time.perf_counter() - t0
    if cache:
        save_checkpoint(model.cpu(), CACHE / f"{name}-pruned{suffix}.safetensors", metadata=meta)
    kept = {r.name.removesuffix(".weight"): r.kept_fraction for r in outcome.report.layers}
    return {
        "dense_acc": dense_acc,
        "pruned_acc": outcome.test_acc_after,
        "kept_fraction": outcome.report.kept_fraction,
        "kept": kept,
        "weights": outcome.report.weights,
        "weights_kept": outcome.report.kept,
        "delta_points": 100 * (outcome.test_acc_after - dense_acc),
        "val_acc_dense": outcome.val_acc_before,
        "val_acc_pruned": outcome.val_acc_after,
        "steps": [s.to_dict() for s in outcome.steps],
        "dense_train": dense_cfg.to_dict(),
        "job": job.to_dict(),
        "dense_reused_from_cache": reused,
        "seed": seed,
        "split_seed": split_seed,
        "device": str(device),
        "seconds": {"dense": t_dense, "prune_retrain": t_prune},
        "paper_mnist": PAPER[name],
    }


class _Job(NamedTuple):
    """One model and training seed, as handed to a worker process."""

    name: str
    data_dir: str | None
    split_seed: int
    first_seed: int
    quick: bool
    seed: int
    reuse_dense: bool
    write_cache: bool


def _job_kwargs(job: _Job, device: torch.device) -> dict[str, Any]:
    """run_model's keywords for one seed; only the first seed's checkpoints, on the default
    split, go to the cache that the later benchmarks read (they load split seed 0), and only
    when asked (``--write-cache``) or for a smoke run (``--quick``)."""
    first = job.seed == job.first_seed and job.split_seed == SPLIT_SEED
    return {
        "quick": job.quick,
        "seed": job.seed,
        "split_seed": job.split_seed,
        "reuse_dense": job.reuse_dense,
        "device": device,
        # --quick runs cache under their own names, which the real runs never read
        "cache": (job.write_cache or job.quick) and first,
    }


def _run_in_worker(job: _Job, device: torch.device, threads: int) -> dict[str, object]:
    """One seed in a worker process (``--jobs``): loads the same data split itself."""
    torch.set_num_threads(threads)
    data = load_dataset("fashion-mnist", job.data_dir, val_size=5000, seed=job.split_seed)
    if job.quick:
        data = _subsample(data, 8000)
    run = run_model(job.name, data, **_job_kwargs(job, device))
    run["threads"] = threads
    return run


def _median_run(runs: list[dict[str, object]]) -> dict[str, object]:
    """The run with the median accuracy drop (the lower middle one for an even count), with
    a summary of every run under ``runs`` when there are several."""
    if len(runs) == 1:
        return runs[0]
    order = sorted(range(len(runs)), key=lambda i: float(runs[i]["delta_points"]))  # type: ignore[arg-type]
    median = dict(runs[order[(len(runs) - 1) // 2]])
    median["reported"] = "the run with the median delta_points over the seeds under runs"
    median["runs"] = [
        {
            k: run[k]
            for k in (
                "seed",
                "dense_acc",
                "pruned_acc",
                "delta_points",
                "val_acc_dense",
                "val_acc_pruned",
                "kept_fraction",
            )
        }
        for run in runs
    ]
    return median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on a data slice")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0, help="the first training seed")
    parser.add_argument(
        "--split-seed",
        type=int,
        default=SPLIT_SEED,
        help="seed of the train/validation split, independent of the training seeds "
        f"(default {SPLIT_SEED}: the split the recipes were chosen on; checkpoints are cached "
        "only for it)",
    )
    parser.add_argument(
        "--reuse-dense",
        action="store_true",
        help="start from the cached dense baseline when it was trained with the same settings "
        "(same recipe, seed and split); the JSON records it",
    )
    parser.add_argument(
        "--write-cache",
        action="store_true",
        help="write the first seed's checkpoints to the cache the later benchmarks start from, "
        "replacing what is there (scripts/rebuild_benchmark_cache.sh rebuilds the ones the "
        "committed results used)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeat each model with training seeds seed, seed+1, ... (same data split); the "
        "run with the median accuracy drop is reported and every run is kept under runs",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run the seeds in this many worker processes (the CPU cores are shared out)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    parser.add_argument("--out", default=None, help="result file (default: results/...)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    device = resolve_device(args.device or "cpu")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_dataset("fashion-mnist", args.data_dir, val_size=5000, seed=args.split_seed)
    if args.quick:
        data = _subsample(data, 8000)
    results: dict[str, object] = {}
    rows = []
    for name in args.models.split(","):
        jobs = [
            _Job(
                name=name,
                data_dir=args.data_dir,
                split_seed=args.split_seed,
                first_seed=args.seed,
                quick=args.quick,
                seed=args.seed + i,
                reuse_dense=args.reuse_dense and i == 0,
                write_cache=args.write_cache,
            )
            for i in range(args.seeds)
        ]
        if args.jobs == 1:
            runs = [run_model(job.name, data, **_job_kwargs(job, device)) for job in jobs]
        else:
            threads = max(1, (os.cpu_count() or 1) // args.jobs)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
                runs = list(
                    pool.map(_run_in_worker, jobs, [device] * len(jobs), [threads] * len(jobs))
                )
        r = _median_run(runs)
        results[name] = r
        paper = PAPER[name]
        rows.append(
            [
                name,
                f"{100 * r['dense_acc']:.2f}%",  # type: ignore[operator]
                f"{100 * r['pruned_acc']:.2f}%",  # type: ignore[operator]
                f"{r['delta_points']:+.2f}"
                + (
                    " (per seed: "
                    + ", ".join(f"{run['delta_points']:+.2f}" for run in r["runs"])  # type: ignore[attr-defined]
                    + ")"
                    if "runs" in r
                    else ""
                ),
                ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["kept"].items()),  # type: ignore[attr-defined]
                f"{100 * r['kept_fraction']:.2f}%",  # type: ignore[operator]
                f"{1 / r['kept_fraction']:.1f}×",  # type: ignore[operator]
                f"{100 * paper['overall']:.0f}% kept, {paper['ratio']}× "  # type: ignore[operator]
                f"(err {paper['err_before']}% → {paper['err_after']}%)",
            ]
        )
    out = {
        "benchmark": "prune_lenet",
        "dataset": "fashion-mnist",
        "quick": args.quick,
        "command": "python benchmarks/prune_lenet.py " + " ".join(argv or sys.argv[1:]),
        "seed": args.seed,
        "seeds": args.seeds,
        "split_seed": args.split_seed,
        "device": str(device),
        "torch": torch.__version__,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
        },
        "models": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = (
        Path(args.out)
        if args.out
        else RESULTS / ("prune_lenet_quick.json" if args.quick else "prune_lenet.json")
    )
    atomic_write_text(dest, json.dumps(out, indent=2) + "\n")
    headers = [
        "model",
        "dense acc",
        "pruned acc",
        "Δ points",
        "kept per layer",
        "kept overall",
        "weights ↓",
        "paper (MNIST)",
    ]
    print(markdown_table(headers, rows))
    print(f"results → {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
