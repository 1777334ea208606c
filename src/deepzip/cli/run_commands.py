"""``deepzip run``, ``demo`` and ``download``: whole recipes, and the data they need."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.progress import (
    Progress,
)

from deepzip.cli._common import (
    DEFAULT_DATASET,
    _check_output,
    _demo_recipe,
    _device,
    _progress,
    _ProgressCallback,
    console,
    err_console,
)
from deepzip.config import (
    Recipe,
    builtin_recipe_names,
    load_recipe,
)
from deepzip.datasets import download, load_dataset
from deepzip.errors import ConfigError
from deepzip.format import apply_checkpoint, read_checkpoint
from deepzip.pipeline import (
    PipelineEvent,
    RunResult,
    accuracy_reference,
    quick_recipe,
    run_recipe,
    validation_stage,
)
from deepzip.report import (
    compression_rich_table,
    compression_table,
    stages_rich_table,
)
from deepzip.zoo import create_model, model_names


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
    if not path.exists():
        raise ConfigError(
            f"{text}: no such recipe file, nor a built-in recipe "
            f"({', '.join(builtin_recipe_names())})"
        )
    return load_recipe(path)


def _run_and_report(
    args: argparse.Namespace, recipe: Recipe, model_name: str, dataset: str, run_dir: Path
) -> RunResult:
    """Run a recipe on a zoo model and a data set with progress display; print the tables."""
    _check_output(run_dir, "--out-dir" if args.command == "demo" else "--run-dir", directory=True)
    device = _device(args.device)
    torch.manual_seed(recipe.seed)
    model = create_model(model_name)
    if getattr(args, "start", None):
        apply_checkpoint(model, read_checkpoint(args.start), strict=True, source=args.start)
    needs_val = validation_stage(recipe, model)
    if needs_val is not None and args.val_size <= 0:
        label, hint = needs_val
        raise ConfigError(
            f"{label} needs validation data: --val-size must be > 0, got {args.val_size}"
            + (f"; or {hint}" if hint else "")
        )
    data = load_dataset(dataset, args.data_dir, val_size=args.val_size, seed=recipe.seed)
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
    dataset = args.dataset or recipe.dataset or DEFAULT_DATASET
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
    dataset = args.dataset or recipe.dataset or DEFAULT_DATASET
    start = time.perf_counter()
    _run_and_report(args, recipe, "lenet-300-100", dataset, Path(args.out_dir))
    console.print(f"demo took {time.perf_counter() - start:.0f} s")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``deepzip download``: fetch a data set's IDX files (needs a network)."""
    path = download(args.name, args.root)
    console.print(f"{args.name} → {path}", markup=False, soft_wrap=True)
    return 0
