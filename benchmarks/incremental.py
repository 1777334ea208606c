"""Incremental quantization (SLQ, MLQ, INQ) vs plain k-means + centroid fine-tuning.

LeNet-5 and a small residual CNN (deepzip's TinyResNet) on Fashion-MNIST, every layer at 5, 4
and 3 bits and ternary, quantized from the dense model by four methods:

* ``slq``: SLQ (Xu et al. 2018), clusters frozen at 50/75/87.5/100% of the levels, the
  highest quantization loss first (``freeze_order="high_loss"``, the default; Xu et al. freeze
  the lowest first, which loses more on validation here: the last, worst cluster is then
  snapped with nothing left to compensate); ternary layers freeze single weights, the largest
  rounding error to ``{-a, 0, +a}`` first;
* ``mlq``: MLQ, the layers in two groups (input half first), each through width steps at
  50/75/100%, the later group training in float meanwhile; ``a`` learned at the end;
* ``inq``: INQ (Zhou et al. 2017), powers of two, 50/75/87.5/100% of the weights frozen by
  magnitude; "ternary" is INQ at 2 bits ``{-2**n1, 0, +2**n1}``;
* ``kmeans``: k-means (linear init, ``2**bits`` levels; 3 levels for "ternary"), then the
  centroids and the float parameters fine-tuned (the Deep Compression baseline).

Every method gets the SAME training budget: 1,280 Adam steps of batch 128 (163,840 samples,
about 3 epochs; ``--seeds 1 --batches 2560 --out benchmarks/results/incremental_2560.json``
doubles it for one seed) over the training split in the same seeded order, and the same
learning-rate grid: each method and level runs once at lr 1e-4 and once at 3e-3, and the run
with the better validation accuracy is reported (fine-tuning at 5 bits wants a small step,
ternary a large one; a first look on the validation split found 1e-4 best for SLQ and MLQ at 5
bits and 3e-3 best for MLQ ternary). ``--batches`` and ``--lrs`` change them.
The incremental methods split it evenly over their retraining steps (INQ over the three steps
that leave weights free: after its 100% step only biases could train); k-means spends it all on
the centroids. Sizes are real ``.dzip`` files (``deepzip.format.save``, coder "auto"), decoded
back and checked against the model. Test accuracy on the 10,000 test images.

The dense LeNet-5 comes from ``benchmarks/results/cache/lenet-5-dense.safetensors`` when
``benchmarks/prune_lenet.py`` has left it there, otherwise it is trained here (and cached under
``incremental-lenet-5-dense.safetensors``); the residual CNN is always trained here (cached
under ``incremental-tiny-resnet-dense.safetensors``). ``scripts/rebuild_benchmark_cache.sh``
restores both checkpoints the committed results started from. Every figure depends on
``--threads``, the dense training included: torch splits its float sums by thread count, and
the committed runs used 2.

    python benchmarks/incremental.py --threads 2  # full run (about 2 hours on 2 CPU cores)
    python benchmarks/incremental.py --quick    # smoke run (a few minutes)

Every method and level runs over 3 data orders (and torch seeds; ``--seeds N`` changes it,
seed 0 is the order above); acc, val_acc and bytes are the medians (for an even count, the
mean of the two middle runs), each run is kept under ``runs``, and each SLQ/MLQ/INQ run is
compared with k-means of the same seed on the same test images (``paired``: the accuracy
difference, its 95% interval and the McNemar p; the same on the validation split under
``paired.<comparison>[seed].val``), because a 10,000-image test set cannot resolve
differences of a few tenths of a point.

The 3-seed run left the residual CNN's 3-bit comparison with k-means undecided (a 0.01-point
tie), so it was followed up with 5 seeds at that level (seeds 0-2 repeat the main run):

    python benchmarks/incremental.py --threads 2 --levels 3 --seeds 5 \
        --out benchmarks/results/incremental_3bit_5seeds.json

Writes benchmarks/results/incremental.json (or incremental_quick.json) and prints a Markdown
table. The full run takes about 90 minutes on 2 cores; it can be run one model at a time, the
parts then combined into the file a single run gives (each model's results are computed on
their own):

    python benchmarks/incremental.py --threads 2 --models lenet-5 --out lenet5.json
    python benchmarks/incremental.py --threads 2 --models tiny-resnet --out tiny.json
    python benchmarks/incremental.py --combine lenet5.json tiny.json \
        --out benchmarks/results/incremental.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepzip._atomic import atomic_write_text
from deepzip.config import (
    INQConfig,
    MLQConfig,
    QuantizeConfig,
    SLQConfig,
    TrainConfig,
    builtin_recipe,
)
from deepzip.datasets import DataSplits, ImageDataset, TensorLoader, load_dataset
from deepzip.format import load_checkpoint, load_model, plain_state_dict, save, save_checkpoint
from deepzip.pipeline import train_dense
from deepzip.quantize import quantize_, strip_
from deepzip.quantize.incremental import inq_, mlq_, slq_, step_count
from deepzip.quantize.kmeans import kmeans_1d
from deepzip.quantize.shared import SharedTensor, attach_shared
from deepzip.report import markdown_table
from deepzip.targets import select_targets
from deepzip.train import predict_logits, seed_everything
from deepzip.zoo import create_model

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "cache"

MODELS: dict[str, dict[str, Any]] = {"lenet-5": {}, "tiny-resnet": {"width": 8}}
LEVELS: tuple[int | str, ...] = (5, 4, 3, "ternary")
METHODS = ("slq", "mlq", "inq", "kmeans")
LABELS = {"slq": "SLQ", "mlq": "MLQ", "inq": "INQ", "kmeans": "k-means + fine-tuning"}

SLQ_STEPS = (0.5, 0.75, 0.875, 1.0)
MLQ_STEPS = (0.5, 0.75, 1.0)
MLQ_GROUPS = 2
INQ_STEPS = (0.5, 0.75, 0.875, 1.0)


@dataclass(frozen=True)
class Budget:
    """The retraining budget every method gets: ``batches`` Adam steps of ``batch_size``."""

    batches: int
    batch_size: int
    lr: float
    schedule: str = "constant"
    lrs: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "batch_size": self.batch_size,
            "samples": self.batches * self.batch_size,
            "optimizer": "adam",
            "lrs": list(self.lrs or (self.lr,)),
            "lr_selection": "each method and level runs once per learning rate; the run with "
            "the best validation accuracy is reported (details.<key>.lr)",
            "schedule": self.schedule
            + (" (annealed to 0 within each retraining step)" if self.schedule == "cosine" else ""),
            "weight_decay": 0.0,
            "data": "the training split in a fixed seeded order (a new seeded order for each "
            "further pass when the budget exceeds one epoch), the same for every method",
        }


def _allocate(total: int, n_steps: int, final_share: float | None) -> list[int]:
    """``final_share`` of the budget after the last step, the rest evenly over the others
    (``None``: every step the same)."""
    if final_share is None or n_steps == 1:
        return _split(total, [1] * n_steps)
    final = round(total * final_share)
    return [*_split(total - final, [1] * (n_steps - 1)), final]


def _split(total: int, weights: list[int]) -> list[int]:
    """``total`` batches over steps in proportion to ``weights`` (remainder to the last)."""
    live = sum(weights)
    out = [total * w // live for w in weights]
    last = max(i for i, w in enumerate(weights) if w)
    out[last] += total - sum(out)
    return out


class Retrainer:
    """Trains on consecutive batches of the seeded order, as many per step as allocated."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, budget: Budget
    ) -> None:
        self.images, self.labels, self.order, self.budget = images, labels, order, budget
        self.per_step: list[int] = []
        self.cursor = 0

    def start(self, per_step: list[int]) -> None:
        if sum(per_step) != self.budget.batches:
            raise ValueError(f"allocation {per_step} does not sum to {self.budget.batches}")
        self.per_step, self.cursor = per_step, 0

    def __call__(self, model: nn.Module, step: int) -> None:
        n = self.per_step[step]
        params = [p for p in model.parameters() if p.requires_grad]
        if n == 0 or not params:
            return
        opt = torch.optim.Adam(params, lr=self.budget.lr)
        sched = None
        if self.budget.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n)
        model.train()
        bs = self.budget.batch_size
        for _ in range(n):
            lo = self.cursor * bs
            idx = self.order[lo : lo + bs]
            x, y = self.images[idx], self.labels[idx]
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
            opt.step()
            if sched is not None:
                sched.step()
            self.cursor += 1

    @property
    def used(self) -> int:
        return self.cursor


def _ternary_kmeans_(model: nn.Module) -> None:
    """Plain 3-level k-means on every default target (``QuantizeConfig`` takes powers of 2)."""
    for t in select_targets(model).targets:
        w = t.tensor.detach()
        mask = w != 0
        result = kmeans_1d(w[mask].to(torch.float32), 3, init="linear", max_iter=1000)
        indices = torch.zeros(w.shape, dtype=torch.uint8)
        indices[mask] = result.labels.to(torch.uint8)
        attach_shared(t.module, t.param_name, SharedTensor(result.centroids, indices, mask))


def run_method(
    method: str, level: int | str, model: nn.Module, retrainer: Retrainer, final_share: float | None
) -> dict[str, Any]:
    """Quantize ``model`` in place with one method at one level; returns details."""
    bits_or_ternary: Any = level
    total = retrainer.budget.batches
    steps: list[dict[str, object]] = []
    if method == "kmeans":
        if level == "ternary":
            _ternary_kmeans_(model)
        else:
            quantize_(model, QuantizeConfig(bits=int(level), max_iter=1000))
        retrainer.start([total])
        retrainer(model, 0)
    elif method == "inq":
        inq_cfg = INQConfig(bits=2 if level == "ternary" else int(level), steps=INQ_STEPS)
        n = step_count(model, inq_cfg)
        retrainer.start(_split(total, [1] * (n - 1) + [0]))
        _, records = inq_(model, inq_cfg, retrainer)
        steps = [r.to_dict() for r in records]
    else:
        if method == "slq":
            slq_cfg = SLQConfig(bits=bits_or_ternary, steps=SLQ_STEPS, max_iter=1000)
            retrainer.start(_allocate(total, step_count(model, slq_cfg), final_share))
            _, records = slq_(model, slq_cfg, retrainer)
        else:
            mlq_cfg = MLQConfig(
                bits=bits_or_ternary, steps=MLQ_STEPS, groups=MLQ_GROUPS, max_iter=1000
            )
            retrainer.start(_allocate(total, step_count(model, mlq_cfg), final_share))
            _, records = mlq_(model, mlq_cfg, retrainer)
        steps = [r.to_dict() for r in records]
    if retrainer.used != total:
        raise RuntimeError(f"{method}: used {retrainer.used} batches, budget {total}")
    return {"steps": steps, "per_step_batches": retrainer.per_step}


def _correct(model: nn.Module, ds: ImageDataset) -> torch.Tensor:
    """Per-sample correctness (bool, in dataset order): accuracy and paired comparisons."""
    logits = predict_logits(model, TensorLoader(ds.images, ds.labels, 1000))
    return logits.argmax(dim=1) == ds.labels


def _share(correct: torch.Tensor) -> float:
    """Accuracy from per-sample correctness (the same float as ``evaluate``'s)."""
    return int(correct.sum()) / correct.numel()


def _accuracy(model: nn.Module, ds: ImageDataset) -> float:
    return _share(_correct(model, ds))


def paired(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Paired comparison of two classifiers on the same samples (per-sample correctness).

    ``a_only``/``b_only`` count the samples only one of them gets right; ``diff`` is the
    accuracy difference a - b, ``ci95`` its normal-approximation 95% interval for paired
    proportions, and ``p`` the exact two-sided McNemar (sign) test on the discordant pairs.
    """
    if a.shape != b.shape or a.dtype != torch.bool or b.dtype != torch.bool:
        raise ValueError(f"paired: need two bool tensors of one shape, got {a.shape}, {b.shape}")
    n = a.numel()
    a_only = int((a & ~b).sum())
    b_only = int((b & ~a).sum())
    diff = (a_only - b_only) / n
    se = math.sqrt(max(a_only + b_only - (a_only - b_only) ** 2 / n, 0.0)) / n
    m = a_only + b_only
    tail = sum(math.comb(m, k) for k in range(min(a_only, b_only) + 1))
    p = min(1.0, 2 * tail / 2**m) if m else 1.0
    return {
        "a_only": a_only,
        "b_only": b_only,
        "diff": diff,
        "ci95": [diff - 1.96 * se, diff + 1.96 * se],
        "p": p,
    }


def _dzip_bytes(model: nn.Module, name: str, kwargs: dict[str, Any], tmp: Path) -> tuple[int, int]:
    """Save as .dzip, decode into a fresh model and check every tensor is identical.

    Returns the file's bytes and the model's float32 size as the library counts it (an
    integer buffer such as BatchNorm's ``num_batches_tracked`` at its own element size)."""
    path = tmp / "model.dzip"
    report = save(model, path)
    fresh = create_model(name, **kwargs)
    load_model(fresh, path, strict=True)
    expected = plain_state_dict(model)
    for key, value in fresh.state_dict().items():
        if not torch.equal(value, expected[key]):
            raise RuntimeError(f"{name}: {key} differs after the .dzip round trip")
    return int(report.file_bytes), int(report.float32_bytes)


def _dense(
    name: str, kwargs: dict[str, Any], data: DataSplits, epochs: int
) -> tuple[nn.Module, str]:
    shared_cache = CACHE / f"{name}-dense.safetensors"
    own_cache = CACHE / f"incremental-{name}-dense.safetensors"
    model = create_model(name, **kwargs)  # on the CPU, where this whole benchmark runs
    if name == "lenet-5" and shared_cache.is_file():
        load_checkpoint(model, shared_cache)
        return model, f"{shared_cache.name} (benchmarks/prune_lenet.py)"
    if own_cache.is_file():
        load_checkpoint(model, own_cache)
        return model, f"{own_cache.name} (trained by this benchmark, {epochs} epochs)"
    if name == "lenet-5":
        job = builtin_recipe("lenet-5")
        assert job.train is not None
        cfg = replace(job.train, epochs=epochs)
    else:
        cfg = TrainConfig(epochs=epochs, lr=0.05, optimizer="sgd", weight_decay=5e-4)
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    # on the CPU like everything else here (the retraining batches and the .dzip round trip's
    # fresh model are CPU tensors), whether or not CUDA is present
    train_dense(model, data, cfg, device=torch.device("cpu"))
    CACHE.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, own_cache)
    return model, f"{own_cache.name} (trained by this benchmark: {cfg.to_dict()})"


def _median(values: list[int] | list[float]) -> int | float:
    """``statistics.median`` (the mean of the two middle values for an even count), kept an
    ``int`` when the values are ints and the median is whole (byte counts)."""
    m = statistics.median(values)
    if all(isinstance(v, int) for v in values) and float(m).is_integer():
        return int(m)
    return m


def _key(method: str, level: int | str) -> str:
    return f"{method}_{level}"


def run_model(
    name: str,
    data: DataSplits,
    budget: Budget,
    levels: tuple[int | str, ...],
    methods: tuple[str, ...],
    dense_epochs: int,
    final_share: float | None,
    log: Callable[[str], None],
    seeds: int = 1,
) -> dict[str, Any]:
    kwargs = MODELS[name]
    dense, source = _dense(name, kwargs, data, dense_epochs)
    dense_state = {k: v.clone() for k, v in dense.state_dict().items()}
    retrainers = [_retrainer(data, budget, seed) for seed in range(seeds)]
    out: dict[str, Any] = {
        "dense_source": source,
        "dense_acc": _accuracy(dense, data.test),
        "dense_val_acc": _accuracy(dense, data.val),
        "acc": {},
        "val_acc": {},
        "bytes": {},
        "details": {},
        "paired": {},
    }
    correct: dict[tuple[str, int, str], torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["dense_bytes"], out["float32_bytes"] = _dzip_bytes(dense, name, kwargs, Path(tmp))
        log(f"{name}: dense test {100 * out['dense_acc']:.2f}% ({source})")
        for level in levels:
            for method in methods:
                key = _key(method, level)
                runs: list[dict[str, Any]] = []
                for seed, retrainer in enumerate(retrainers):
                    model, details, val = _best_lr(
                        name, dense_state, data, method, level, retrainer, seed, final_share
                    )
                    test = _correct(model, data.test)
                    correct[key, seed, "test"], correct[key, seed, "val"] = test, val
                    run = {
                        "seed": seed,
                        "lr": details["lr"],
                        "val_acc": _share(val),
                        "acc": _share(test),
                        "bytes": _dzip_bytes(model, name, kwargs, Path(tmp))[0],
                    }
                    runs.append(run)
                    if seed == 0:
                        out["details"][key] = details
                    log(
                        f"{name} {key} seed {seed}: lr {run['lr']:g} (validation), "
                        f"test {100 * run['acc']:.2f}%, {run['bytes']} bytes"
                    )
                    strip_(model)
                for field in ("acc", "val_acc", "bytes"):
                    out[field][key] = _median([r[field] for r in runs])
                if seeds > 1:
                    out.setdefault("runs", {})[key] = runs
            base = _key("kmeans", level)
            for method in methods:
                key = _key(method, level)
                if method != "kmeans" and base in out["acc"]:
                    out["paired"][f"{key}_vs_{base}"] = [
                        {
                            "seed": seed,
                            **paired(correct[key, seed, "test"], correct[base, seed, "test"]),
                            "val": paired(correct[key, seed, "val"], correct[base, seed, "val"]),
                        }
                        for seed in range(seeds)
                    ]
    return out


def _best_lr(
    name: str,
    dense_state: dict[str, torch.Tensor],
    data: DataSplits,
    method: str,
    level: int | str,
    retrainer: Retrainer,
    seed: int,
    final_share: float | None,
) -> tuple[nn.Module, dict[str, Any], torch.Tensor]:
    """Run one method and level from the dense model at every learning rate of the budget's
    grid; the model, details and per-sample validation correctness of the best run on
    validation."""
    budget = retrainer.budget
    tried: dict[str, Any] = {}
    best: tuple[float, torch.Tensor, float, nn.Module, dict[str, Any]] | None = None
    for lr in budget.lrs or (budget.lr,):
        retrainer.budget = replace(budget, lr=lr)
        model = create_model(name, **MODELS[name])
        model.load_state_dict(dense_state)
        seed_everything(seed)
        t0 = time.perf_counter()
        details = run_method(method, level, model, retrainer, final_share)
        details["seconds"] = time.perf_counter() - t0
        correct = _correct(model, data.val)
        val = _share(correct)
        tried[f"{lr:g}"] = {"val_acc": val, "seconds": details["seconds"]}
        if best is None or val > best[0]:
            best = (val, correct, lr, model, details)
    retrainer.budget = budget
    assert best is not None
    _, correct, lr, model, details = best
    details["lr"] = lr
    details["lrs_tried"] = tried
    return model, details, correct


def _retrainer(data: DataSplits, budget: Budget, seed: int) -> Retrainer:
    """The retraining data order of one seed (seed 0: the order of single-seed runs)."""
    g = torch.Generator().manual_seed(1234 + seed)
    n = budget.batches * budget.batch_size
    passes = -(-n // len(data.train))
    pick = torch.cat([torch.randperm(len(data.train), generator=g) for _ in range(passes)])[:n]
    return Retrainer(data.train.images, data.train.labels, pick, budget)


def _targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked against the numbers (``None`` when not measured)."""
    out: dict[str, Any] = {}
    for name, r in results.items():
        acc, dense = r["acc"], r["dense_acc"]
        checks: dict[str, Any] = {}
        if "slq_5" in acc:
            checks["slq_5_within_0.1_of_dense"] = acc["slq_5"] >= dense - 0.001
        if name == "lenet-5" and "mlq_ternary" in acc:
            checks["mlq_ternary_within_1.5_of_dense"] = acc["mlq_ternary"] >= dense - 0.015
        for level in ("3", "ternary"):
            for method in ("slq", "mlq"):
                a, b = acc.get(f"{method}_{level}"), acc.get(f"kmeans_{level}")
                if a is not None and b is not None:
                    checks[f"{method}_{level}_beats_kmeans"] = a > b
        out[name] = checks
    return out


# what must agree between result files for their models to be combined into one
_COMBINED_KEYS = (
    "benchmark", "dataset", "quick", "budget", "seeds", "schedules", "torch", "threads", "machine"
)  # fmt: skip


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results file from runs of disjoint ``--models`` with the same settings.

    Each model's results are computed on their own (the same data, budget and seeds whatever
    else runs in the process), so runs made one model at a time (``--models lenet-5``, then
    ``--models tiny-resnet``) give the file a single run would; ``seconds`` is their sum and
    ``command`` lists each run's.

    Raises:
        ValueError: fewer than two parts, a setting that differs between them (named), or a
            model in two of them.
    """
    if len(parts) < 2:
        raise ValueError(f"combine needs at least two result files, got {len(parts)}")
    first = parts[0]
    for part in parts[1:]:
        for key in _COMBINED_KEYS:
            if part.get(key) != first.get(key):
                raise ValueError(
                    f"cannot combine: {key!r} differs ({first.get(key)!r} vs {part.get(key)!r})"
                )
    models: dict[str, Any] = {}
    model_args: dict[str, Any] = {}
    for part in parts:
        for name, result in part["models"].items():
            if name in models:
                raise ValueError(f"cannot combine: model {name!r} is in two result files")
            models[name] = result
            model_args[name] = part["model_args"][name]
    out = {key: first[key] for key in _COMBINED_KEYS}
    out.update(
        command=" + ".join(part["command"] for part in parts),
        model_args=model_args,
        seconds=sum(part["seconds"] for part in parts),
        targets=_targets(models),
        models=models,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budget, 3 bits and ternary")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--levels", default=None, help="e.g. 5,4,3,ternary")
    parser.add_argument("--batches", type=int, default=None, help="retraining budget (batches)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--lrs",
        default="1e-4,3e-3",
        help="learning rates tried for every method and level; the best on validation is kept",
    )
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument(
        "--final-share",
        type=float,
        default=None,
        help="SLQ/MLQ: share of the budget after the last step (default: all steps equal)",
    )
    parser.add_argument("--dense-epochs", type=int, default=4)
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="repeat every method and level with this many data orders (and torch seeds); "
        "acc, val_acc and bytes are then the medians, each run is under runs "
        "(default 3, --quick 1)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--out", default=None, help="result file (default: results/incremental.json)"
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="FILE",
        default=None,
        help="write one results file (--out) from the result files of runs of other "
        "--models with the same settings, and print its table; nothing is run",
    )
    args = parser.parse_args(argv)
    if args.combine is not None:
        if args.out is None:
            parser.error("--combine needs --out")
        parts = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.combine]
        try:
            combined = combine(parts)
        except ValueError as exc:
            parser.error(str(exc))
        atomic_write_text(Path(args.out), json.dumps(combined, indent=2) + "\n")
        print(table(combined))
        print(f"results → {args.out}")
        return 0
    torch.set_num_threads(args.threads)
    levels: tuple[int | str, ...]
    if args.levels:
        levels = tuple(v if v == "ternary" else int(v) for v in args.levels.split(","))
    else:
        levels = (3, "ternary") if args.quick else LEVELS
    batches = args.batches or (24 if args.quick else 1280)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1:
        parser.error(f"--seeds must be at least 1, got {seeds}")
    lrs = tuple(float(v) for v in args.lrs.split(","))
    budget = Budget(batches, args.batch_size, lrs[0], args.schedule, lrs)
    data = load_dataset("fashion-mnist", args.data_dir, val_size=5000, seed=0)
    methods = tuple(args.methods.split(","))
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        results[name] = run_model(
            name,
            data,
            budget,
            levels,
            methods,
            args.dense_epochs,
            args.final_share,
            lambda msg: print(msg, file=sys.stderr, flush=True),
            seeds,
        )
    out = {
        "benchmark": "incremental",
        "dataset": "fashion-mnist",
        "quick": args.quick,
        "command": "python benchmarks/incremental.py " + " ".join(argv or sys.argv[1:]),
        "budget": budget.to_dict(),
        "seeds": seeds,
        "schedules": {
            "slq": {"steps": list(SLQ_STEPS), "rank": "sse", "freeze_order": "high_loss"},
            "mlq": {
                "steps": list(MLQ_STEPS),
                "groups": MLQ_GROUPS,
                "order": "forward",
                "freeze_order": "high_loss",
            },
            "inq": {"steps": list(INQ_STEPS)},
            "final_share": args.final_share,
            "kmeans": {"init": "linear", "finetune": "centroids and float parameters"},
        },
        "model_args": {k: MODELS[k] for k in results},
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "seconds": time.perf_counter() - t0,
        "targets": _targets(results),
        "models": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = (
        Path(args.out)
        if args.out
        else RESULTS / ("incremental_quick.json" if args.quick else "incremental.json")
    )
    atomic_write_text(dest, json.dumps(out, indent=2) + "\n")
    print(table(out))
    print(f"results → {dest}")
    return 0


def table(out: dict[str, Any]) -> str:
    """The Markdown table of a results file."""
    rows: list[list[str]] = []
    for name, r in out["models"].items():
        dense = r["dense_acc"]
        rows.append(
            [
                name,
                "dense (float32)",
                "32",
                "",
                f"{100 * dense:.2f}%",
                "",
                f"{r['dense_bytes']:,}",
                "",
            ]
        )
        keys = list(r["acc"])
        for key in keys:
            method, level = key.split("_", 1)
            acc = r["acc"][key]
            b = r["bytes"][key]
            rows.append(
                [
                    name,
                    LABELS[method],
                    level,
                    "/".join(f"{run['lr']:g}" for run in r["runs"][key])
                    if key in r.get("runs", {})
                    else str(r["details"][key].get("lr", "")),
                    f"{100 * acc:.2f}%",
                    f"{100 * (acc - dense):+.2f}",
                    f"{b:,}",
                    f"{r['float32_bytes'] / b:.1f}×",
                ]
            )
    main_table = markdown_table(
        [
            "model",
            "method",
            "bits",
            "lr (validation; per seed)",
            "test acc",
            "Δ vs dense",
            ".dzip bytes",
            "vs float32",
        ],
        rows,
    )
    pairs: list[list[str]] = []
    for name, r in out["models"].items():
        for comparison, per_seed in r.get("paired", {}).items():
            for s in per_seed:
                lo, hi = s["ci95"]
                pairs.append(
                    [
                        name,
                        comparison.replace("_vs_", " vs "),
                        str(s["seed"]),
                        f"{100 * s['diff']:+.2f}",
                        f"[{100 * lo:+.2f}, {100 * hi:+.2f}]",
                        f"{s['a_only']} / {s['b_only']}",
                        f"{s['p']:.3f}",
                    ]
                )
    if not pairs:
        return main_table
    return (
        main_table.rstrip("\n")
        + "\n\nPaired on the test images (same seed): accuracy difference in points, its 95% "
        "interval, the images only one of the two gets right, and the exact McNemar p.\n\n"
        + markdown_table(
            ["model", "comparison", "seed", "diff", "95% interval", "only A / only B", "p"],
            pairs,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
