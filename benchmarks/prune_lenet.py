"""Iterative magnitude pruning with retraining on LeNet-300-100 and LeNet-5 (Fashion-MNIST).

For each model: train a dense baseline, then prune iteratively with retraining to at most 8% of
the weights (LeNet-5's conv1 kept at 66% as in the paper), and report test accuracy of both in
the same run. The recipes are the ones shipped in deepzip/recipes/; their per-layer targets and
retraining settings were chosen on the validation split, never the test set.

    python benchmarks/prune_lenet.py            # full run (about 25 min on 2 CPU cores)
    python benchmarks/prune_lenet.py --quick    # smoke run (a couple of minutes)

Writes benchmarks/results/prune_lenet.json (or prune_lenet_quick.json) and prints a Markdown
table beside the paper's pruning-only figures (MNIST).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from deepzip._atomic import atomic_write_text
from deepzip.config import ScheduleConfig, builtin_recipe
from deepzip.datasets import DataSplits, load_dataset
from deepzip.format import apply_checkpoint, read_checkpoint, save_checkpoint
from deepzip.pipeline import accuracy_fn, make_loaders, prune_with_retraining, train_dense
from deepzip.report import markdown_table
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
    name: str, data: DataSplits, *, quick: bool, seed: int, reuse_dense: bool = False
) -> dict[str, object]:
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
    }
    t0 = time.perf_counter()
    reused = reuse_dense and _cached_dense(model, dense_path, meta)
    if not reused:
        train_dense(model, data, dense_cfg)
        save_checkpoint(model, dense_path, metadata=meta)
    t_dense = time.perf_counter() - t0
    dense_acc = accuracy_fn(make_loaders(data, 1000).test)(model)
    t0 = time.perf_counter()
    outcome = prune_with_retraining(model, data, job, seed=seed)
    t_prune = time.perf_counter() - t0
    save_checkpoint(model, CACHE / f"{name}-pruned{suffix}.safetensors", metadata=meta)
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
        "seconds": {"dense": t_dense, "prune_retrain": t_prune},
        "paper_mnist": PAPER[name],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on a data slice")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reuse-dense",
        action="store_true",
        help="start from the cached dense baseline when it was trained with the same settings "
        "(same recipe and seed); the JSON records it",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_dataset("fashion-mnist", args.data_dir, val_size=5000, seed=args.seed)
    if args.quick:
        data = _subsample(data, 8000)
    results: dict[str, object] = {}
    rows = []
    for name in args.models.split(","):
        r = run_model(name, data, quick=args.quick, seed=args.seed, reuse_dense=args.reuse_dense)
        results[name] = r
        paper = PAPER[name]
        rows.append(
            [
                name,
                f"{100 * r['dense_acc']:.2f}%",  # type: ignore[operator]
                f"{100 * r['pruned_acc']:.2f}%",  # type: ignore[operator]
                f"{r['delta_points']:+.2f}",
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
        "seed": args.seed,
        "torch": torch.__version__,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
        },
        "models": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / ("prune_lenet_quick.json" if args.quick else "prune_lenet.json")
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
