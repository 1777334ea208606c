"""The ``deepzip`` command line: the only place that prints to the terminal or exits.

Every command has ``--help``, shows progress bars on long work, and on error exits non-zero
with one clear line (``deepzip: error: ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn

from deepzip import __version__
from deepzip._atomic import atomic_write_text
from deepzip.config import (
    BitsOverride,
    LayerOverride,
    PruneConfig,
    PruneJob,
    QuantizeConfig,
    RetrainConfig,
    ScheduleConfig,
    TrainConfig,
    builtin_recipe,
    load_prune_job,
)
from deepzip.datasets import DATASETS, DataSplits, download, load_dataset
from deepzip.errors import ConfigError, DeepZipError
from deepzip.format import apply_checkpoint, read_checkpoint, save_checkpoint
from deepzip.pipeline import (
    accuracy_fn,
    make_loaders,
    prune_with_retraining,
    quantize_with_finetuning,
    train_dense,
)
from deepzip.prune import StepRecord, sensitivity_analysis
from deepzip.report import plot_sensitivity, prune_table, quantize_table, steps_table
from deepzip.train import Callback, FitState, evaluate, resolve_device
from deepzip.zoo import create_model, model_names

__all__ = ["main"]

console = Console()
err_console = Console(stderr=True)


class _ProgressCallback(Callback):
    """Training progress bar: one task per epoch, loss and validation accuracy shown."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label
        self.task: Any = None

    def on_epoch_start(self, state: FitState) -> None:
        total = state.batches_per_epoch
        self.task = self.progress.add_task(
            f"{self.label} epoch {state.epoch + 1}/{state.epochs}", total=total
        )

    def on_batch_end(self, state: FitState) -> None:
        self.progress.update(
            self.task,
            advance=1,
            description=(
                f"{self.label} epoch {state.epoch + 1}/{state.epochs} loss {state.epoch_loss:.4f}"
            ),
        )

    def on_epoch_end(self, state: FitState) -> None:
        acc = state.metrics.get("val_accuracy")
        suffix = f" val {100 * acc:.2f}%" if acc is not None else ""
        self.progress.update(
            self.task,
            description=(
                f"{self.label} epoch {state.epoch + 1}/{state.epochs} "
                f"loss {state.epoch_loss:.4f}{suffix}"
            ),
        )


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not enabled,
        transient=False,
    )
    with progress:
        yield progress


# ----------------------------------------------------------------------------- helpers


def _data(args: argparse.Namespace) -> DataSplits:
    return load_dataset(args.dataset, args.data_dir, val_size=args.val_size, seed=args.seed)


def _load_model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, str]:
    """The zoo model named by ``--model`` or the checkpoint's metadata, with its weights."""
    ckpt = read_checkpoint(args.checkpoint)
    name: str | None = args.model or ckpt.metadata.get("deepzip.model")
    if name is None:
        raise ConfigError(
            f"{args.checkpoint}: cannot tell the model architecture; pass --model "
            f"({', '.join(model_names())})"
        )
    model = create_model(name)
    apply_checkpoint(model, ckpt, strict=True, source=args.checkpoint)
    return model.to(device), name


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="fashion-mnist",
        choices=DATASETS,
        help="data set (default: fashion-mnist)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory with the four IDX files (default: auto-discover)",
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="training images held out for validation (default: 5000)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_checkpoint_args(p: argparse.ArgumentParser, *, output_help: str) -> None:
    p.add_argument("checkpoint", help="input checkpoint (.safetensors, .pt, .pth)")
    p.add_argument("-o", "--output", required=True, help=output_help)
    p.add_argument(
        "--model",
        choices=model_names(),
        default=None,
        help="zoo architecture (default: read from the checkpoint)",
    )


def _add_optimizer_args(
    p: argparse.ArgumentParser, *, weight_decay: float, lr: float = 0.02, optimizer: str = "sgd"
) -> None:
    p.add_argument("--lr", type=float, default=lr, help=f"(dense) learning rate (default: {lr})")
    p.add_argument(
        "--optimizer",
        default=optimizer,
        choices=("sgd", "adam", "adamw"),
        help=f"default: {optimizer}",
    )
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--batch-size", type=int, default=128)


def _add_glob_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only layers matching this glob (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="never layers matching this glob (repeatable)",
    )


def _parse_override(text: str) -> LayerOverride:
    pattern, sep, value = text.partition("=")
    if not sep or not pattern:
        raise ConfigError(f"--override expects GLOB=SPARSITY or GLOB=skip, got {text!r}")
    if value == "skip":
        return LayerOverride(pattern, skip=True)
    try:
        return LayerOverride(pattern, sparsity=float(value))
    except ValueError as exc:
        raise ConfigError(f"--override {text!r}: {value!r} is not a number") from exc


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"{flag} expects comma-separated numbers, got {text!r}") from exc


def _prune_job(args: argparse.Namespace) -> PruneJob:
    if args.recipe is not None:
        return load_prune_job(args.recipe)
    if args.sparsity is None and args.quality is None:
        raise ConfigError("give --sparsity, --quality or --recipe")
    prune = PruneConfig(
        sparsity=args.sparsity,
        quality=args.quality,
        scope=args.scope,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        overrides=tuple(_parse_override(o) for o in args.override),
    )
    if args.schedule == "steps":
        schedule = ScheduleConfig(kind="steps", steps=_floats(args.steps, "--steps"))
    else:
        schedule = ScheduleConfig(kind=args.schedule, n_steps=args.n_steps)
    retrain = RetrainConfig(
        epochs=args.retrain_epochs,
        final_epochs=args.final_epochs,
        lr=args.lr,
        lr_scale=args.lr_scale,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
    )
    return PruneJob(prune, schedule, retrain)


def _print_step(record: StepRecord) -> None:
    after = record.accuracy_after_retrain
    acc = f", val {100 * after:.2f}%" if after is not None else ""
    err_console.print(
        f"step {record.step + 1}: kept {100 * record.kept_fraction:.2f}% of weights{acc}"
    )


# ----------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    """``deepzip train``: train a zoo model, write a safetensors checkpoint."""
    device = resolve_device(args.device)
    data = _data(args)
    torch.manual_seed(args.seed)
    model = create_model(args.model).to(device)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    with _progress(not args.no_progress) as progress:
        train_dense(
            model, data, config, device=device, callbacks=[_ProgressCallback(progress, "train")]
        )
    test = evaluate(model, make_loaders(data, 1000).test, device=device)
    save_checkpoint(
        model,
        args.output,
        metadata={
            "deepzip.model": args.model,
            "deepzip.dataset": args.dataset,
            "deepzip.test_accuracy": f"{test.accuracy:.6f}",
        },
    )
    console.print(
        f"{args.model} on {args.dataset}: test accuracy {100 * test.accuracy:.2f}% → {args.output}"
    )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """``deepzip prune``: iterative pruning with retraining; per-layer table."""
    device = resolve_device(args.device)
    job = _prune_job(args)
    model, name = _load_model(args, device)
    data = _data(args)
    with _progress(not args.no_progress) as progress:
        outcome = prune_with_retraining(
            model,
            data,
            job,
            device=device,
            seed=args.seed,
            callbacks=[_ProgressCallback(progress, "retrain")],
            on_step=_print_step,
        )
    save_checkpoint(
        model,
        args.output,
        metadata={
            "deepzip.model": name,
            "deepzip.dataset": args.dataset,
            "deepzip.recipe": json.dumps(job.to_dict(), sort_keys=True),
            "deepzip.test_accuracy": f"{outcome.test_acc_after:.6f}",
        },
    )
    console.print(steps_table(outcome.steps))
    console.print(
        prune_table(
            outcome.report,
            acc_before=outcome.test_acc_before,
            acc_after=outcome.test_acc_after,
            title=f"Pruned {name}",
        )
    )
    for s in outcome.report.skipped:
        console.print(
            f"not pruned: {s.name} ({s.reason})", style="dim", markup=False, soft_wrap=True
        )
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(outcome.to_dict(), indent=2) + "\n")
    console.print(f"pruned checkpoint → {args.output}")
    return 0


def _parse_bits_override(text: str) -> BitsOverride:
    pattern, sep, value = text.partition("=")
    if not sep or not pattern:
        raise ConfigError(f"--override expects GLOB=BITS or GLOB=skip, got {text!r}")
    if value == "skip":
        return BitsOverride(pattern, skip=True)
    try:
        return BitsOverride(pattern, bits=int(value))
    except ValueError as exc:
        raise ConfigError(f"--override {text!r}: {value!r} is not an integer") from exc


def cmd_quantize(args: argparse.Namespace) -> int:
    """``deepzip quantize``: weight sharing, optional centroid fine-tuning; per-layer table."""
    device = resolve_device(args.device)
    config = QuantizeConfig(
        bits=args.bits,
        conv_bits=args.conv_bits,
        fc_bits=args.fc_bits,
        method=args.method,
        init=args.init,
        importance=args.importance,
        ecsq_lambda=args.ecsq_lambda,
        grad=args.grad,
        seed=args.seed,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        overrides=tuple(_parse_bits_override(o) for o in args.override),
    )
    finetune = RetrainConfig(
        epochs=args.finetune_epochs,
        final_epochs=0,
        lr=args.lr,
        lr_scale=args.lr_scale,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
    )
    model, name = _load_model(args, device)
    data = _data(args)
    with _progress(not args.no_progress) as progress:
        outcome = quantize_with_finetuning(
            model,
            data,
            config,
            finetune,
            device=device,
            seed=args.seed,
            callbacks=[_ProgressCallback(progress, "fine-tune")],
        )
    save_checkpoint(
        model,
        args.output,
        metadata={
            "deepzip.model": name,
            "deepzip.dataset": args.dataset,
            "deepzip.quantize": json.dumps(config.to_dict(), sort_keys=True),
            "deepzip.test_accuracy": f"{outcome.acc_finetuned:.6f}",
        },
    )
    console.print(
        quantize_table(
            outcome.report,
            acc_before=outcome.acc_before,
            acc_clustered=outcome.acc_clustered,
            acc_finetuned=outcome.acc_finetuned,
            title=f"Quantized {name} ({config.method})",
        )
    )
    for s in outcome.report.skipped:
        console.print(
            f"not quantized: {s.name} ({s.reason})", style="dim", markup=False, soft_wrap=True
        )
    for layer in outcome.report.layers:
        for note in layer.notes:
            console.print(f"{layer.name}: {note}", markup=False, soft_wrap=True)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(outcome.to_dict(), indent=2) + "\n")
    console.print(f"quantized checkpoint → {args.output}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """``deepzip sensitivity``: per-layer accuracy over a sparsity sweep; JSON and PNG."""
    device = resolve_device(args.device)
    model, _ = _load_model(args, device)
    data = _data(args)
    loaders = make_loaders(data, 1000, seed=args.seed)
    if loaders.val is None:
        raise ConfigError("sensitivity needs a validation split: use --val-size > 0")
    sweep = _floats(args.sparsities, "--sparsities")
    with _progress(not args.no_progress) as progress:
        task = progress.add_task("sensitivity", total=None)

        def on_point(layer: str, sparsity: float, acc: float) -> None:
            progress.update(
                task, advance=1, description=f"{layer} @ {100 * sparsity:.0f}%: {100 * acc:.2f}%"
            )

        result = sensitivity_analysis(
            model,
            accuracy_fn(loaders.val, device),
            sparsities=sweep,
            include=tuple(args.include),
            exclude=tuple(args.exclude),
            on_point=on_point,
        )
    result.save_json(args.output)
    plot_path = args.plot or str(Path(args.output).with_suffix(".png"))
    plot_sensitivity(result, plot_path)
    console.print(f"baseline validation accuracy {100 * result.baseline:.2f}%")
    for layer, sparsity in result.suggest(args.max_drop / 100).items():
        console.print(
            f"  {layer}: prune up to {100 * sparsity:.0f}% within {args.max_drop:g} point(s)"
        )
    console.print(f"sensitivity → {args.output}, plot → {plot_path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``deepzip demo``: LeNet-300-100 on Fashion-MNIST, trained then pruned with retraining."""
    device = resolve_device(args.device)
    out = Path(args.out_dir)
    data = load_dataset("fashion-mnist", args.data_dir, val_size=5000, seed=0)
    job = builtin_recipe("lenet-300-100")
    assert job.train is not None
    train_cfg = job.train
    if args.quick:
        train_cfg = replace(train_cfg, epochs=2)
        job = replace(
            job,
            schedule=ScheduleConfig(kind="steps", steps=(0.6, 1.0)),
            retrain=replace(job.retrain, epochs=1, final_epochs=1),
        )
    torch.manual_seed(train_cfg.seed)
    model = create_model("lenet-300-100").to(device)
    start = time.perf_counter()
    with _progress(not args.no_progress) as progress:
        train_dense(
            model, data, train_cfg, device=device, callbacks=[_ProgressCallback(progress, "train")]
        )
        save_checkpoint(
            model, out / "dense.safetensors", metadata={"deepzip.model": "lenet-300-100"}
        )
        outcome = prune_with_retraining(
            model,
            data,
            job,
            device=device,
            callbacks=[_ProgressCallback(progress, "retrain")],
            on_step=_print_step,
        )
    save_checkpoint(model, out / "pruned.safetensors", metadata={"deepzip.model": "lenet-300-100"})
    console.print(steps_table(outcome.steps))
    console.print(
        prune_table(
            outcome.report,
            acc_before=outcome.test_acc_before,
            acc_after=outcome.test_acc_after,
            title="LeNet-300-100 on Fashion-MNIST, pruned with retraining",
        )
    )
    ratio = 1 / outcome.report.kept_fraction
    console.print(
        f"weights kept: {100 * outcome.report.kept_fraction:.2f}% "
        f"({ratio:.1f}× fewer); took {time.perf_counter() - start:.0f} s; "
        f"checkpoints in {out}/"
    )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``deepzip download``: fetch a data set's IDX files (needs a network)."""
    path = download(args.name, args.root)
    console.print(f"{args.name} → {path}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="deepzip", description="Deep Compression for PyTorch models."
    )
    parser.add_argument("--version", action="version", version=f"deepzip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a zoo model and write a safetensors checkpoint",
        description="Train a zoo model on a data set; write a checkpoint.",
    )
    p.add_argument("model", choices=model_names(), help="zoo model")
    p.add_argument("-o", "--output", required=True, help="output .safetensors checkpoint")
    p.add_argument("--epochs", type=int, default=6)
    _add_optimizer_args(p, weight_decay=5e-4)
    _add_data_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "prune",
        help="prune a checkpoint iteratively with retraining",
        description="Magnitude pruning with iterative retraining. Flags or a "
        "TOML recipe ([prune], [schedule], [retrain]).",
    )
    _add_checkpoint_args(p, output_help="output .safetensors checkpoint")
    p.add_argument("--recipe", default=None, help="TOML recipe; replaces the pruning flags")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sparsity", type=float, default=None, help="fraction removed per layer")
    g.add_argument("--quality", type=float, default=None, help="remove |w| < quality × std(layer)")
    p.add_argument("--scope", default="layer", choices=("layer", "global"))
    _add_glob_args(p)
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="GLOB=SPARSITY|skip",
        help="per-layer sparsity, e.g. --override 'conv1=0.34'",
    )
    p.add_argument("--schedule", default="steps", choices=("steps", "agp", "oneshot"))
    p.add_argument(
        "--steps",
        default="0.5,0.75,0.875,1.0",
        help="progress fractions of the target (schedule=steps)",
    )
    p.add_argument("--n-steps", type=int, default=5, help="steps of the AGP schedule")
    p.add_argument("--retrain-epochs", type=int, default=2, help="epochs after each step")
    p.add_argument("--final-epochs", type=int, default=2, help="extra epochs at the end")
    _add_optimizer_args(p, weight_decay=0.0)
    p.add_argument("--lr-scale", type=float, default=0.1, help="retrain at lr × lr-scale")
    p.add_argument("--json", default=None, help="also write the report as JSON")
    _add_data_args(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "quantize",
        help="weight sharing with trainable codebooks (k-means, uniform, ECSQ)",
        description="Quantize a (pruned) checkpoint by weight sharing and fine-tune the "
        "codebooks. Defaults are the paper's: 8 bits for convolutions, 5 for the rest.",
    )
    _add_checkpoint_args(p, output_help="output .safetensors checkpoint")
    p.add_argument("--bits", type=int, default=None, help="bits for every layer")
    p.add_argument("--conv-bits", type=int, default=8)
    p.add_argument("--fc-bits", type=int, default=5)
    p.add_argument("--override", action="append", default=[], metavar="GLOB=BITS|skip")
    p.add_argument("--method", default="kmeans", choices=("kmeans", "uniform", "ecsq"))
    p.add_argument("--init", default="linear", choices=("linear", "density", "forgy", "kmeans++"))
    p.add_argument(
        "--importance",
        default="none",
        choices=("none", "fisher"),
        help="weight k-means/ECSQ by the Fisher diagonal (Choi et al. 2017)",
    )
    p.add_argument("--ecsq-lambda", type=float, default=0.0, help="ECSQ rate weight")
    p.add_argument(
        "--grad",
        default="sum",
        choices=("sum", "mean"),
        help="centroid gradient: sum (the paper) or mean of member gradients",
    )
    p.add_argument("--finetune-epochs", type=int, default=2)
    # A centroid's gradient is the sum over its (thousands of) members: Adam's step size does
    # not depend on the gradient's scale, plain SGD would need a far smaller learning rate.
    _add_optimizer_args(p, weight_decay=0.0, lr=1e-3, optimizer="adam")
    p.add_argument("--lr-scale", type=float, default=0.1, help="fine-tune at lr × lr-scale")
    _add_glob_args(p)
    p.add_argument("--json", default=None, help="also write the report as JSON")
    _add_data_args(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser(
        "sensitivity",
        help="per-layer pruning sensitivity (JSON + PNG)",
        description="Prune one layer at a time over a sparsity sweep and "
        "record validation accuracy.",
    )
    _add_checkpoint_args(p, output_help="output JSON")
    p.add_argument("--plot", default=None, help="output PNG (default: next to the JSON)")
    p.add_argument("--sparsities", default="0,0.3,0.5,0.6,0.7,0.8,0.85,0.9,0.93,0.95,0.97")
    _add_glob_args(p)
    p.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="accuracy budget (points) for the suggested per-layer sparsity",
    )
    _add_data_args(p)
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser(
        "demo",
        help="the built-in default: LeNet-300-100 on Fashion-MNIST",
        description="Train LeNet-300-100 on Fashion-MNIST, prune it iteratively "
        "with retraining, print the per-layer table.",
    )
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="fewer epochs (smoke run)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("download", help="download MNIST or Fashion-MNIST (needs a network)")
    p.add_argument("name", choices=DATASETS)
    p.add_argument(
        "--root",
        default=None,
        help="directory to write into (default: ~/.cache/deepzip, searched by deepzip)",
    )
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepzip`` command. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except DeepZipError as exc:
        one_line = " ".join(str(exc).split())
        err_console.print(
            f"deepzip: error: {one_line}", markup=False, highlight=False, soft_wrap=True
        )
        return 2
    except KeyboardInterrupt:
        err_console.print("deepzip: interrupted", markup=False)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
