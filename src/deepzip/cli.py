"""The ``deepzip`` command line: the only place that prints to the terminal or exits.

Every command has ``--help``, shows progress bars on long work, and on error exits non-zero
with one clear line (``deepzip: error: ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from torch import nn

from deepzip import __version__
from deepzip._atomic import atomic_write_text
from deepzip.config import (
    CODER_NAMES,
    BitsOverride,
    IndexBitsSpec,
    LayerOverride,
    PruneConfig,
    PruneJob,
    QuantizeConfig,
    Recipe,
    RetrainConfig,
    ScheduleConfig,
    TrainConfig,
    builtin_recipe_names,
    check_index_bits,
    load_prune_job,
    load_recipe,
)
from deepzip.datasets import DATASETS, DataSplits, download, load_dataset
from deepzip.errors import ConfigError, DeepZipError
from deepzip.format import apply_checkpoint, read_checkpoint, save_checkpoint, to_safetensors
from deepzip.format import inspect as inspect_dzip
from deepzip.pipeline import (
    PipelineEvent,
    RunResult,
    accuracy_fn,
    accuracy_reference,
    make_loaders,
    prune_with_retraining,
    quantize_with_finetuning,
    quick_recipe,
    run_recipe,
    train_dense,
    validation_stage,
)
from deepzip.posttrain import DEFAULT_BITS, DEFAULT_QUANTIZER, compress_checkpoint
from deepzip.prune import StepRecord, sensitivity_analysis
from deepzip.report import (
    compression_rich_table,
    compression_table,
    plot_sensitivity,
    prune_table,
    quantize_table,
    stages_rich_table,
    steps_table,
)
from deepzip.train import Callback, FitState, evaluate, resolve_device
from deepzip.zoo import create_model, model_names

__all__ = ["main"]

# Piped or redirected output has no terminal width; rich would then squeeze the wide per-layer
# tables into 80 columns, so give it room (a terminal's own width is kept).
console = Console()
if not console.is_terminal:
    console = Console(width=200)
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
        TextColumn("{task.description}", markup=False),  # layer and tensor names as written
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


def _seed(text: str) -> int:
    """``--seed``: an integer in ``[0, 2**31)``, the range every seed it reaches accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**31), got {value}")
    return value


def _index_bits(text: str) -> IndexBitsSpec:
    """``--index-bits``: a gap width in bits, ``auto`` or ``paper``."""
    spec: object = text if text in ("auto", "paper") else None
    if spec is None:
        try:
            spec = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number of bits, 'auto' or 'paper', got {text!r}"
            ) from None
    try:
        return check_index_bits("--index-bits", spec)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_output(
    path: str | os.PathLike[str] | None, flag: str, *, directory: bool = False
) -> None:
    """Refuse an output path that cannot be written, before any long work starts.

    A file output must not be a directory, a directory output must not be a file, and the
    nearest existing directory above it must be a writable directory (missing ones are
    created when the output is written).
    """
    if path is None:
        return
    p = Path(path)
    if not directory and p.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give a file name")
    if directory and p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path}: is not a directory")
    above = p.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise ConfigError(f"{flag} {path}: {above} is not a directory")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: no permission to write in {above}")


def _os_error(exc: OSError) -> str:
    """``path: reason`` for an ``OSError`` (the destination of a failed rename)."""
    reason = exc.strerror or str(exc)
    name = exc.filename2 if exc.filename2 is not None else exc.filename
    return reason if name is None else f"{os.fsdecode(name)}: {reason}"


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
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
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


_Num = TypeVar("_Num", int, float)


def _split_glob(text: str, flag: str, forms: str) -> tuple[str, str]:
    """``GLOB=VALUE`` of ``flag`` (``forms`` says what it accepts, for the error)."""
    pattern, sep, value = text.partition("=")
    if not sep or not pattern:
        raise ConfigError(f"{flag} expects {forms}, got {text!r}")
    return pattern, value


def _glob_number(text: str, value: str, kind: type[_Num], flag: str) -> _Num:
    """The value of ``flag GLOB=VALUE`` as ``kind``; range checks stay with the config."""
    try:
        return kind(value)
    except ValueError as exc:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{flag} {text!r}: {value!r} is not {what}") from exc


def _parse_override(text: str) -> LayerOverride:
    pattern, value = _split_glob(text, "--override", "GLOB=SPARSITY or GLOB=skip")
    if value == "skip":
        return LayerOverride(pattern, skip=True)
    return LayerOverride(pattern, sparsity=_glob_number(text, value, float, "--override"))


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


def _add_run_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", default=None, choices=DATASETS, help="overrides the recipe's data set"
    )
    p.add_argument(
        "--data-dir", default=None, help="directory with the four IDX files (default: search)"
    )
    p.add_argument("--val-size", type=int, default=5000, help="validation images (default 5000)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _demo_recipe() -> Recipe:
    """The built-in whole pipeline for LeNet-300-100 (``lenet-300-100-full``)."""
    return Recipe.builtin("lenet-300-100-full")


def _print_step(record: StepRecord) -> None:
    after = record.accuracy_after_retrain
    acc = f", val {100 * after:.2f}%" if after is not None else ""
    err_console.print(
        f"step {record.step + 1}: kept {100 * record.kept_fraction:.2f}% of weights{acc}"
    )


# ----------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    """``deepzip train``: train a zoo model, write a safetensors checkpoint."""
    _check_output(args.output, "-o")
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    device = resolve_device(args.device)
    data = _data(args)
    torch.manual_seed(args.seed)
    model = create_model(args.model).to(device)
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
        f"{args.model} on {args.dataset}: test accuracy {100 * test.accuracy:.2f}% → {args.output}",
        markup=False,
        soft_wrap=True,
    )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """``deepzip prune``: iterative pruning with retraining; per-layer table."""
    _check_output(args.output, "-o")
    _check_output(args.json, "--json")
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
    console.print(f"pruned checkpoint → {args.output}", markup=False, soft_wrap=True)
    return 0


def _parse_bits_override(text: str) -> BitsOverride:
    pattern, value = _split_glob(text, "--override", "GLOB=BITS or GLOB=skip")
    if value == "skip":
        return BitsOverride(pattern, skip=True)
    return BitsOverride(pattern, bits=_glob_number(text, value, int, "--override"))


def cmd_quantize(args: argparse.Namespace) -> int:
    """``deepzip quantize``: weight sharing, optional centroid fine-tuning; per-layer table."""
    _check_output(args.output, "-o")
    _check_output(args.json, "--json")
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
    console.print(f"quantized checkpoint → {args.output}", markup=False, soft_wrap=True)
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """``deepzip sensitivity``: per-layer accuracy over a sparsity sweep; JSON and PNG."""
    _check_output(args.output, "-o")  # before with_suffix, which fails on "." or "/"
    plot_path = args.plot or str(Path(args.output).with_suffix(".png"))
    _check_output(plot_path, "--plot")
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
    plot_sensitivity(result, plot_path)
    console.print(f"baseline validation accuracy {100 * result.baseline:.2f}%")
    for layer, sparsity in result.suggest(args.max_drop / 100).items():
        console.print(
            f"  {layer}: prune up to {100 * sparsity:.0f}% within {args.max_drop:g} point(s)",
            markup=False,
            soft_wrap=True,
        )
    console.print(f"sensitivity → {args.output}, plot → {plot_path}", markup=False, soft_wrap=True)
    return 0


class _StageProgress(_ProgressCallback):
    """Training progress bars labelled with the running stage."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(progress, "")

    def on_event(self, event: PipelineEvent) -> None:
        """Follow the run: label bars with the stage, print stage and step lines."""
        if event.kind == "stage_start" and event.index is not None:
            self.label = f"stage {event.index + 1}"
        if event.kind != "stage_start":
            err_console.print(event.message, markup=False, highlight=False, soft_wrap=True)


def _load_run_recipe(text: str) -> Recipe:
    """A recipe file, or the name of a built-in recipe.

    A built-in pruning recipe is named after its zoo model (``lenet-5``): that is its model.
    """
    path = Path(text)
    if not path.exists() and text in builtin_recipe_names():
        recipe = Recipe.builtin(text)
        if recipe.model is None and text in model_names():
            recipe = replace(recipe, model=text)
        return recipe
    return load_recipe(path)


def _run_and_report(
    args: argparse.Namespace, recipe: Recipe, model_name: str, dataset: str, run_dir: Path
) -> RunResult:
    """Run a recipe on a zoo model and a data set with progress display; print the tables."""
    _check_output(run_dir, "--out-dir" if args.command == "demo" else "--run-dir", directory=True)
    needs_val = validation_stage(recipe)
    if needs_val is not None and args.val_size <= 0:
        label, hint = needs_val
        raise ConfigError(
            f"{label} needs validation data: --val-size must be > 0, got {args.val_size}"
            + (f"; or {hint}" if hint else "")
        )
    device = resolve_device(args.device)
    data = load_dataset(dataset, args.data_dir, val_size=args.val_size, seed=recipe.seed)
    torch.manual_seed(recipe.seed)
    model = create_model(model_name)
    if getattr(args, "start", None):
        apply_checkpoint(model, read_checkpoint(args.start), strict=True, source=args.start)
    with _progress(not args.no_progress) as progress:
        tracker = _StageProgress(progress)
        result = run_recipe(
            model,
            recipe,
            run_dir,
            data=data,
            model_name=model_name,
            restart=args.restart,
            device=device,
            callbacks=[tracker],
            on_event=tracker.on_event,
        )
    from deepzip.report.run import write_run_report

    html = write_run_report(run_dir, title=recipe.name or f"{model_name} on {dataset}")
    records = [result.initial.to_dict(), *(s.to_dict() for s in result.stages)]
    console.print(stages_rich_table(records, title=f"{model_name} on {dataset}: stages"))
    save = result.final.details.get("save")
    if save is not None:
        table = compression_table(save)
        console.print(compression_rich_table(table, title=f"{model_name}: per-layer compression"))
    decoded = result.final.details.get("decoded_test_acc")
    ref, dense = accuracy_reference(result.initial, result.stages)
    if decoded is not None and ref.test_acc is not None:
        label = "dense" if dense else "at the start"
        console.print(
            f"test accuracy: {100 * ref.test_acc:.2f}% {label} → {100 * decoded:.2f}% decoded "
            f"from the file ({100 * (decoded - ref.test_acc):+.2f} points)",
            soft_wrap=True,
        )
    console.print(
        f".dzip → {result.dzip} ({result.final.file_bytes:,} bytes, "
        f"{result.final.ratio:.1f}× smaller than float32)",
        markup=False,
        soft_wrap=True,
    )
    console.print(f"report → {html}", markup=False, soft_wrap=True)
    return result


def cmd_run(args: argparse.Namespace) -> int:
    """``deepzip run``: a whole recipe (train, prune, quantize, fine-tune, encode), resumable."""
    recipe = _load_run_recipe(args.recipe)
    model_name = args.model or recipe.model
    if model_name is None:
        raise ConfigError(
            f'{args.recipe}: the recipe names no model; add model = "..." or pass --model '
            f"({', '.join(model_names())})"
        )
    dataset = args.dataset or recipe.dataset or "fashion-mnist"
    if args.start:
        recipe = recipe.without("train")
    if args.quick:
        recipe = quick_recipe(recipe)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.recipe).stem)
    _run_and_report(args, recipe, model_name, dataset, run_dir)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``deepzip demo``: the whole pipeline on LeNet-300-100 and Fashion-MNIST (or --dataset)."""
    recipe = _demo_recipe()
    if args.quick:
        recipe = quick_recipe(recipe)
    dataset = args.dataset or recipe.dataset or "fashion-mnist"
    start = time.perf_counter()
    _run_and_report(args, recipe, "lenet-300-100", dataset, Path(args.out_dir))
    console.print(f"demo took {time.perf_counter() - start:.0f} s")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``deepzip download``: fetch a data set's IDX files (needs a network)."""
    path = download(args.name, args.root)
    console.print(f"{args.name} → {path}", markup=False, soft_wrap=True)
    return 0


def _parse_layer_bits(text: str) -> tuple[str, int]:
    pattern, value = _split_glob(text, "--layer-bits", "GLOB=BITS")
    return pattern, _glob_number(text, value, int, "--layer-bits")


def cmd_compress(args: argparse.Namespace) -> int:
    """``deepzip compress``: post-training prune + quantize + code of any checkpoint."""
    _check_output(args.output, "-o")
    _check_output(args.json, "--json")
    with _progress(not args.no_progress) as progress:
        task = progress.add_task("compress", total=None)

        def on_tensor(name: str, index: int, total: int) -> None:
            progress.update(task, completed=index, total=total, description=name)

        report = compress_checkpoint(
            args.input,
            args.output,
            sparsity=args.sparsity,
            bits=None if args.no_quantize else args.bits,
            levels=args.levels,
            quantizer=args.quantizer,
            ecsq_lambda=args.ecsq_lambda,
            step=args.step,
            coder=args.coder,
            include=tuple(args.include),
            exclude=tuple(args.exclude),
            layer_bits=dict(_parse_layer_bits(t) for t in args.layer_bits),
            index_bits=args.index_bits,
            layout=args.layout,
            progress=on_tensor,
        )
        progress.update(task, completed=len(report.tensors), description="done")
    console.print(
        compression_rich_table(
            compression_table(report.to_dict()), title=f"{args.input} → {args.output}"
        )
    )
    for name, reason in report.skipped:
        console.print(f"kept raw: {name} ({reason})", style="dim", markup=False, soft_wrap=True)
    console.print(
        f"{report.float32_bytes:,} B float32 → {report.file_bytes:,} B on disk: "
        f"{report.ratio:.2f}× → {args.output}",
        markup=False,
        soft_wrap=True,
    )
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    """``deepzip decompress``: a ``.dzip`` file back to ``.safetensors`` (exact names/dtypes)."""
    _check_output(args.output, "-o")
    with _progress(not args.no_progress) as progress:
        task = progress.add_task("decompress", total=None)

        def on_tensor(name: str, index: int, total: int) -> None:
            progress.update(task, completed=index, total=total, description=name)

        path = to_safetensors(args.input, args.output, progress=on_tensor)
        progress.update(task, description="done")
    size = path.stat().st_size
    console.print(f"{args.input} → {path} ({size:,} bytes)", markup=False, soft_wrap=True)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``deepzip inspect``: per-tensor and per-section bytes of a ``.dzip`` file."""
    info = inspect_dzip(args.input)
    if args.json:
        sys.stdout.write(json.dumps(info.to_dict(), indent=2) + "\n")
        return 0
    console.print(compression_rich_table(compression_table(info.to_dict()), title=args.input))
    sections = Table(title="Sections", caption="every byte of the file, in order")
    for column in ("section", "kind", "offset", "bytes"):
        sections.add_column(column, justify="left" if column in ("section", "kind") else "right")
    for s in info.sections:
        sections.add_row(escape(s.name), s.kind, f"{s.offset:,}", f"{s.length:,}")
    total = sum(s.length for s in info.sections)
    sections.add_row("total", "", "", f"{total:,}", style="bold")
    console.print(sections)
    console.print(
        f"format {info.version[0]}.{info.version[1]}, {len(info.tensors)} tensors, "
        f"{info.file_bytes:,} bytes ({info.ratio:.2f}× float32)",
        markup=False,
        soft_wrap=True,
    )
    return 0


def _bench_model_name(args: argparse.Namespace) -> str:
    """``--model``, else the zoo name stored under ``deepzip.model`` in the file's metadata."""
    from deepzip.format import DzipReader

    if args.model:
        return str(args.model)
    with DzipReader(args.input) as reader:
        meta = reader.metadata
    user = meta.get("user") if isinstance(meta, dict) else None
    name = user.get("deepzip.model") if isinstance(user, dict) else None
    if not isinstance(name, str) or name not in model_names():
        found = f" (the file names {name!r}, not a zoo model)" if name else ""
        raise ConfigError(
            f"{args.input}: cannot tell the model architecture{found}; pass --model "
            f"({', '.join(model_names())})"
        )
    return name


def cmd_bench(args: argparse.Namespace) -> int:
    """``deepzip bench``: per-layer latency of the runtime form against dense decoding."""
    from deepzip.runtime import RuntimePolicy, benchmark_layers, benchmark_model

    if args.batch < 1 or args.repeats < 1:
        raise ConfigError(f"--batch and --repeats must be >= 1, got {args.batch}, {args.repeats}")
    try:
        shape = tuple(int(d) for d in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(
            f"--input-shape must be positive integers like 1,28,28, got {args.input_shape!r}"
        )
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    name = _bench_model_name(args)
    torch.manual_seed(0)
    example = torch.rand(args.batch, *shape)
    policy = RuntimePolicy(batch_size=args.batch)
    layers = benchmark_layers(
        args.input, create_model(name), example, repeats=args.repeats, policy=policy
    )
    whole = benchmark_model(
        args.input, create_model(name), example, repeats=args.repeats, policy=policy
    )
    if args.json:
        out = {
            "file": str(args.input),
            "model": name,
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "layers": [t.to_dict() for t in layers],
            "model_timing": whole.to_dict(),
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    table = Table(
        title=escape(
            f"{args.input}: {name}, batch {args.batch}, {torch.get_num_threads()} thread(s)"
        ),
        caption=f"median of {args.repeats} interleaved runs; policy: what the automatic "
        "rule picks at this batch size (reasons below)",
    )
    columns = ("layer", "type", "shape", "density", "dense ms", "runtime ms", "speedup",
               "dense bytes", "runtime bytes", "policy")  # fmt: skip
    for column in columns:
        table.add_column(
            column,
            justify="left" if column in ("layer", "type", "policy") else "right",
            overflow="fold",
        )
    for t in layers:
        speedup = t.speedup
        table.add_row(
            escape(t.name),
            escape(t.layer_type),
            "×".join(str(d) for d in t.shape),
            f"{100 * t.density:.1f}%",
            "-" if t.dense_ms is None else f"{t.dense_ms:.3f}",
            "-" if t.runtime_ms is None else f"{t.runtime_ms:.3f}",
            "-" if speedup is None else f"{speedup:.2f}×",
            f"{t.dense_bytes:,}",
            f"{t.runtime_bytes:,}",
            t.policy_form,
        )
    console.print(table)
    for t in layers:
        console.print(
            f"{t.name}: {t.policy_form} ({t.note or t.policy_reason})",
            markup=False,
            soft_wrap=True,
        )
    console.print(
        f"whole model: dense {whole.dense_ms:.3f} ms, runtime {whole.runtime_ms:.3f} ms "
        f"({whole.speedup:.2f}×; sparse layers: {', '.join(whole.report.sparse) or 'none'}); "
        f"compressed weights {whole.report.runtime_bytes:,} bytes in memory vs "
        f"{whole.report.dense_bytes:,} dense; outputs differ by at most "
        f"{whole.max_abs_difference:.2e}",
        markup=False,
        soft_wrap=True,
    )
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
        "run",
        help="run a recipe: train, prune, quantize, fine-tune, encode (resumable)",
        description="Run a pipeline recipe (TOML, or a built-in name such as lenet-5) on its "
        "zoo model and data set (a built-in pruning recipe runs the model it is named after). "
        "A checkpoint is written after every stage into the run "
        "directory; running the same command again resumes after the last finished stage. "
        "Prints the per-layer table and writes an HTML report.",
    )
    p.add_argument(
        "recipe",
        help=f"recipe file, or a built-in recipe name ({', '.join(builtin_recipe_names())})",
    )
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<recipe>)")
    p.add_argument(
        "--restart", action="store_true", help="discard a previous run in the run directory"
    )
    p.add_argument("--model", choices=model_names(), default=None, help="overrides the recipe's")
    p.add_argument(
        "--start",
        default=None,
        metavar="CHECKPOINT",
        help="start from this trained checkpoint (the recipe's train stage is skipped)",
    )
    p.add_argument("--quick", action="store_true", help="one epoch per training (smoke run)")
    _add_run_data_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo",
        help="the built-in default: LeNet-300-100 on Fashion-MNIST, end to end",
        description="Train LeNet-300-100 on Fashion-MNIST (or --dataset), prune it with "
        "retraining, share "
        "its weights and fine-tune the centroids, write the .dzip file; print the per-layer "
        "table and write an HTML report.",
    )
    p.add_argument("--out-dir", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--restart", action="store_true", help="discard a previous demo run")
    p.add_argument("--quick", action="store_true", help="one epoch per training (smoke run)")
    _add_run_data_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("download", help="download MNIST or Fashion-MNIST (needs a network)")
    p.add_argument("name", choices=DATASETS)
    p.add_argument(
        "--root",
        default=None,
        help="directory to write into (default: ~/.cache/deepzip, searched by deepzip)",
    )
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "compress",
        help="compress any checkpoint into a .dzip file (no data, no retraining)",
        description="Post-training compression: magnitude pruning, weight sharing and "
        "entropy coding of a .safetensors/.pt/.pth checkpoint or a Hugging Face model "
        "directory. Floating-point tensors of 2+ dimensions are compressed; the others are "
        "stored raw and listed.",
    )
    p.add_argument("input", help=".safetensors, .pt/.pth, or a model directory of shards")
    p.add_argument("-o", "--output", required=True, help="output .dzip file")
    p.add_argument("--sparsity", type=float, default=0.0, help="fraction pruned per tensor")
    p.add_argument(
        "--bits", type=int, default=DEFAULT_BITS, help=f"bits per index (default {DEFAULT_BITS})"
    )
    p.add_argument("--levels", type=int, default=None, help="quantization levels (not 2**bits)")
    p.add_argument(
        "--step",
        type=float,
        default=None,
        help="one uniform grid step for every tensor (NNCodec-style), instead of --levels",
    )
    p.add_argument("--no-quantize", action="store_true", help="prune only; values stay float")
    p.add_argument(
        "--quantizer",
        default=DEFAULT_QUANTIZER,
        choices=("kmeans", "uniform", "ecsq"),
        help=f"default: {DEFAULT_QUANTIZER}",
    )
    p.add_argument("--lambda", dest="ecsq_lambda", type=float, default=0.0, help="ECSQ rate weight")
    p.add_argument("--coder", default="auto", choices=CODER_NAMES)
    p.add_argument(
        "--layer-bits", action="append", default=[], metavar="GLOB=BITS", help="per-tensor bits"
    )
    p.add_argument(
        "--index-bits",
        type=_index_bits,
        default="auto",
        metavar="BITS|auto|paper",
        help="sparse-index gap width: 1..16 bits, 'auto' (each tensor's smallest; default) or "
        "'paper' (8 bits for convolutions, 5 otherwise)",
    )
    p.add_argument(
        "--layout",
        choices=("auto", "dense", "sparse"),
        default="auto",
        help="a pruned quantized tensor's index: 'sparse' (Deep Compression's relative index), "
        "'dense' (one symbol per weight) or 'auto' (whichever makes the file smaller; default)",
    )
    _add_glob_args(p)
    p.add_argument("--json", default=None, help="also write the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser(
        "decompress",
        help="decompress a .dzip file into .safetensors",
        description="Write every tensor of a .dzip file to a .safetensors file with its "
        "exact name, shape and dtype (one tensor in memory at a time).",
    )
    p.add_argument("input", help="input .dzip file")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser(
        "inspect",
        help="per-tensor and per-section bytes of a .dzip file",
        description="Describe a .dzip file: every tensor's encoding and streams, and every "
        "section; the bytes add up exactly to the file size. Verifies every checksum.",
    )
    p.add_argument("input", help=".dzip file")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "bench",
        help="per-layer latency of the runtime (sparse) form vs dense",
        description="Time every compressed layer of a .dzip file dense and in its runtime "
        "form (deepzip.runtime), interleaved, medians; then the whole model both ways.",
    )
    p.add_argument("input", help=".dzip file")
    p.add_argument(
        "--model",
        default=None,
        choices=model_names(),
        help="zoo architecture (default: the file's deepzip.model metadata)",
    )
    p.add_argument("--batch", type=int, default=1, help="batch size of the example input")
    p.add_argument("--input-shape", default="1,28,28", help="one sample's shape, e.g. 1,28,28")
    p.add_argument("--repeats", type=int, default=30, help="timed runs of each form")
    p.add_argument("--threads", type=int, default=None, help="torch (and kernel) threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_bench)
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
    except (DeepZipError, OSError) as exc:  # a file that cannot be read or written
        text = _os_error(exc) if isinstance(exc, OSError) else str(exc)
        one_line = " ".join(text.split())
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
