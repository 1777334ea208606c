"""``deepzip train``, ``prune``, ``quantize`` and ``sensitivity``: one technique at a time."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from deepzip._atomic import atomic_write_text
from deepzip.cli._common import (
    _check_distinct,
    _check_output,
    _check_safetensors_output,
    _data,
    _device,
    _floats,
    _glob_number,
    _load_model,
    _print_step,
    _progress,
    _ProgressCallback,
    _prune_job,
    _split_glob,
    console,
)
from deepzip.config import (
    BitsOverride,
    QuantizeConfig,
    RetrainConfig,
    TrainConfig,
)
from deepzip.datasets import DATASETS
from deepzip.errors import ConfigError
from deepzip.format import save_checkpoint
from deepzip.pipeline import (
    accuracy_fn,
    make_loaders,
    prune_with_retraining,
    quantize_with_finetuning,
    recipe_prune_job,
    train_dense,
)
from deepzip.prune import sensitivity_analysis
from deepzip.report import (
    plot_sensitivity,
    prune_table,
    quantize_table,
    steps_table,
)
from deepzip.train import evaluate
from deepzip.zoo import create_model


def _check_recipe_alone(args: argparse.Namespace) -> None:
    """``--recipe`` replaces the pruning, schedule and retraining flags: refuse one of them
    given beside it (it would be ignored), even at its default value (the flags default to
    ``None``)."""
    if args.recipe is None:
        return
    given = [
        flag
        for flag, value in (
            ("--sparsity", args.sparsity),
            ("--quality", args.quality),
            ("--steps", args.steps),
            ("--n-steps", args.n_steps),
            ("--include", args.include or None),
            ("--exclude", args.exclude or None),
            ("--override", args.override or None),
            ("--scope", args.scope),
            ("--schedule", args.schedule),
            ("--retrain-epochs", args.retrain_epochs),
            ("--final-epochs", args.final_epochs),
            ("--lr", args.lr),
            ("--optimizer", args.optimizer),
            ("--weight-decay", args.weight_decay),
            ("--batch-size", args.batch_size),
            ("--lr-scale", args.lr_scale),
        )
        if value is not None
    ]
    if given:
        raise ConfigError(
            f"--recipe {args.recipe} replaces the pruning, schedule and retraining flags: "
            f"{', '.join(given)} would be "
            f"ignored; set {'them' if len(given) > 1 else 'it'} in the recipe instead"
        )


def cmd_train(args: argparse.Namespace) -> int:
    """``deepzip train``: train a zoo model, write a safetensors checkpoint."""
    _check_output(args.output, "-o")
    _check_safetensors_output(args.output, "-o")
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    device = _device(args.device)
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
    _check_distinct(args.output, "-o", args.json, "--json")
    _check_distinct(args.checkpoint, "the input", args.json, "--json")
    if args.recipe is not None and Path(args.recipe).exists():  # a file, not a built-in name
        _check_distinct(args.recipe, "--recipe", args.json, "--json")
    _check_safetensors_output(args.output, "-o")
    _check_recipe_alone(args)
    device = _device(args.device)
    # a recipe's data set, as `deepzip run` takes it (--dataset overrides it); its model must
    # be the checkpoint's, rather than be ignored
    job, recipe = _prune_job(args)
    recipe_model = recipe.model if recipe is not None else None
    recipe_dataset = recipe.dataset if recipe is not None else None
    if args.dataset is None:
        if recipe_dataset is not None and recipe_dataset not in DATASETS:
            raise ConfigError(
                f"--recipe {args.recipe}: dataset {recipe_dataset!r} is not a data set deepzip "
                f"knows ({', '.join(DATASETS)}); fix it, or give --dataset"
            )
        args.dataset = recipe_dataset  # None: the checkpoint's (see _load_model)
    model, name = _load_model(args, device)
    if recipe_model is not None and recipe_model != name:
        raise ConfigError(
            f"--recipe {args.recipe} is for model {recipe_model!r}, not the checkpoint's "
            f"{name!r}: give a checkpoint of that model, or change the recipe's model"
        )
    if recipe is not None and recipe.stages:
        # a rule for a layer the prune stage leaves out is another stage's (as in a run)
        job = recipe_prune_job(model, recipe)
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
    _check_distinct(args.output, "-o", args.json, "--json")
    _check_distinct(args.checkpoint, "the input", args.json, "--json")
    _check_safetensors_output(args.output, "-o")
    widths = {
        key: value
        for key, value in (("conv_bits", args.conv_bits), ("fc_bits", args.fc_bits))
        if value is not None
    }
    if args.bits is not None and widths:
        given = ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in widths.items())
        raise ConfigError(f"--bits {args.bits} sets every layer: {given} would be ignored")
    device = _device(args.device)
    config = QuantizeConfig(
        bits=args.bits,
        **widths,  # the paper's defaults where not given
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
    # checked before anything loads: the budget is only used once the whole sweep has run
    if not math.isfinite(args.max_drop) or args.max_drop < 0:
        raise ConfigError(
            f"--max-drop must be a finite number of points >= 0, got {args.max_drop!r}"
        )
    sweep = _floats(args.sparsities, "--sparsities")
    _check_output(args.output, "-o")  # before with_suffix, which fails on "." or "/"
    plot_path = args.plot or str(Path(args.output).with_suffix(".png"))
    _check_output(plot_path, "--plot")
    _check_distinct(args.output, "-o", plot_path, "--plot")
    _check_distinct(args.checkpoint, "the input", args.output, "-o")
    _check_distinct(args.checkpoint, "the input", plot_path, "--plot")
    device = _device(args.device)
    model, _ = _load_model(args, device)
    data = _data(args)
    loaders = make_loaders(data, 1000, seed=args.seed)
    if loaders.val is None:
        raise ConfigError("sensitivity needs a validation split: use --val-size > 0")
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
    for s in result.skipped:  # as prune and quantize list theirs (the JSON has them too)
        console.print(
            f"not analysed: {s.name} ({s.reason})", style="dim", markup=False, soft_wrap=True
        )
    for layer, sparsity in result.suggest(args.max_drop / 100).items():
        console.print(
            f"  {layer}: prune up to {100 * sparsity:.0f}% within {args.max_drop:g} point(s)",
            markup=False,
            soft_wrap=True,
        )
    console.print(f"sensitivity → {args.output}, plot → {plot_path}", markup=False, soft_wrap=True)
    return 0
