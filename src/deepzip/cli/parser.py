"""The ``deepzip`` argument parser: every command, its options and their help."""

from __future__ import annotations

import argparse

from deepzip import __version__
from deepzip.cli._common import (
    _PRUNE_DEFAULTS,
    _add_checkpoint_args,
    _add_data_args,
    _add_glob_args,
    _add_optimizer_args,
    _add_run_data_args,
    _index_bits,
)
from deepzip.cli.file_commands import cmd_bench, cmd_compress, cmd_decompress, cmd_inspect
from deepzip.cli.run_commands import cmd_demo, cmd_download, cmd_run
from deepzip.cli.train_commands import cmd_prune, cmd_quantize, cmd_sensitivity, cmd_train
from deepzip.config import (
    CODER_NAMES,
    QuantizeConfig,
    builtin_recipe_names,
)
from deepzip.datasets import DATASETS
from deepzip.posttrain import DEFAULT_BITS, DEFAULT_QUANTIZER
from deepzip.zoo import model_names

_QUANTIZE_DEFAULTS = QuantizeConfig()
"""``deepzip quantize``'s defaults for the flags that default to ``None``."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="deepzip", description="Deep Compression for PyTorch models."
    )
    parser.add_argument("--version", action="version", version=f"deepzip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log deepzip's debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a zoo model and write a safetensors checkpoint",
        description="Train a zoo model on a data set; write a checkpoint.",
    )
    p.add_argument("model", choices=model_names(), help="zoo model")
    p.add_argument("-o", "--output", required=True, help="output .safetensors checkpoint")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default: 6)")
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
    p.add_argument(
        "--recipe",
        default=None,
        help="TOML recipe file or built-in recipe name (such as lenet-5); replaces the pruning, "
        "schedule and retraining flags (refused beside it)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sparsity", type=float, default=None, help="fraction removed per layer")
    g.add_argument("--quality", type=float, default=None, help="remove |w| < quality × std(layer)")
    # the flags a --recipe replaces default to None (refused beside it), see _PRUNE_DEFAULTS
    p.add_argument(
        "--scope",
        default=None,
        choices=("layer", "global"),
        help=f"layers pruned to one target each or together (default: {_PRUNE_DEFAULTS['scope']})",
    )
    _add_glob_args(p)
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="GLOB=SPARSITY|skip",
        help="per-layer sparsity, e.g. --override 'conv1=0.34'",
    )
    p.add_argument(
        "--schedule",
        default=None,
        choices=("steps", "agp", "oneshot"),
        help=f"how the target is approached (default: {_PRUNE_DEFAULTS['schedule']})",
    )
    p.add_argument(
        "--steps",
        default=None,
        help="progress fractions of the target (schedule=steps; default 0.5,0.75,0.875,1.0)",
    )
    p.add_argument(
        "--n-steps", type=int, default=None, help="steps of the AGP schedule (default 5)"
    )
    p.add_argument(
        "--retrain-epochs",
        type=int,
        default=None,
        help=f"epochs after each step (default: {_PRUNE_DEFAULTS['retrain_epochs']})",
    )
    p.add_argument(
        "--final-epochs",
        type=int,
        default=None,
        help=f"extra epochs at the end (default: {_PRUNE_DEFAULTS['final_epochs']})",
    )
    _add_optimizer_args(
        p,
        weight_decay=_PRUNE_DEFAULTS["weight_decay"],
        lr=_PRUNE_DEFAULTS["lr"],
        optimizer=_PRUNE_DEFAULTS["optimizer"],
        batch_size=_PRUNE_DEFAULTS["batch_size"],
        unset=True,
    )
    p.add_argument(
        "--lr-scale",
        type=float,
        default=None,
        help=f"retrain at lr × lr-scale (default: {_PRUNE_DEFAULTS['lr_scale']})",
    )
    p.add_argument("--json", default=None, help="also write the report as JSON")
    _add_data_args(p, checkpoint=True, recipe=True)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "quantize",
        help="weight sharing with trainable codebooks (k-means, uniform, ECSQ)",
        description="Quantize a (pruned) checkpoint by weight sharing and fine-tune the "
        "codebooks. Defaults are the paper's: 8 bits for convolutions, 5 for the rest.",
    )
    _add_checkpoint_args(p, output_help="output .safetensors checkpoint")
    p.add_argument("--bits", type=int, default=None, help="bits for every layer")
    # None when not given, so that one given beside --bits (which replaces both) is refused
    p.add_argument(
        "--conv-bits",
        type=int,
        default=None,
        help=f"bits of convolutions (default: {_QUANTIZE_DEFAULTS.conv_bits})",
    )
    p.add_argument(
        "--fc-bits",
        type=int,
        default=None,
        help=f"bits of the other layers (default: {_QUANTIZE_DEFAULTS.fc_bits})",
    )
    p.add_argument("--override", action="append", default=[], metavar="GLOB=BITS|skip")
    p.add_argument(
        "--method",
        default="kmeans",
        choices=("kmeans", "uniform", "ecsq"),
        help="quantizer (default: kmeans)",
    )
    p.add_argument(
        "--init",
        default="linear",
        choices=("linear", "density", "forgy", "kmeans++"),
        help="k-means initialisation (default: linear, the paper's)",
    )
    p.add_argument(
        "--importance",
        default="none",
        choices=("none", "fisher"),
        help="weight k-means/ECSQ by the Fisher diagonal (Choi et al. 2017)",
    )
    p.add_argument(
        "--ecsq-lambda",
        type=float,
        default=0.0,
        help="ECSQ rate weight (default: 0, k-means started from the uniform centres; "
        "larger: lower entropy, more distortion)",
    )
    p.add_argument(
        "--grad",
        default="sum",
        choices=("sum", "mean"),
        help="centroid gradient: sum (the paper) or mean of member gradients",
    )
    p.add_argument(
        "--finetune-epochs", type=int, default=2, help="centroid fine-tuning epochs (default: 2)"
    )
    # A centroid's gradient is the sum over its (thousands of) members: Adam's step size does
    # not depend on the gradient's scale, plain SGD would need a far smaller learning rate.
    _add_optimizer_args(p, weight_decay=0.0, lr=1e-3, optimizer="adam")
    p.add_argument(
        "--lr-scale", type=float, default=0.1, help="fine-tune at lr × lr-scale (default: 0.1)"
    )
    _add_glob_args(p)
    p.add_argument("--json", default=None, help="also write the report as JSON")
    _add_data_args(p, checkpoint=True)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser(
        "sensitivity",
        help="per-layer pruning sensitivity (JSON + PNG)",
        description="Prune one layer at a time over a sparsity sweep and "
        "record validation accuracy.",
    )
    _add_checkpoint_args(p, output_help="output JSON")
    p.add_argument("--plot", default=None, help="output PNG (default: next to the JSON)")
    p.add_argument(
        "--sparsities",
        default="0,0.3,0.5,0.6,0.7,0.8,0.85,0.9,0.93,0.95,0.97",
        help="comma-separated sweep of each layer's pruned fraction "
        "(default: 0,0.3,0.5,0.6,0.7,0.8,0.85,0.9,0.93,0.95,0.97)",
    )
    _add_glob_args(p)
    p.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="accuracy budget (points) for the suggested per-layer sparsity (default: 1)",
    )
    _add_data_args(p, checkpoint=True)
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
        "stored raw and listed. Exact zeros count as pruned and stay zeros. A deepzip "
        "checkpoint (train/prune/quantize) is read as its model: its masks prune, and its "
        "codebooks are kept unless --bits, --levels, --step, --quantizer, --lambda, "
        "--no-quantize or a --layer-bits glob asks for new ones.",
    )
    p.add_argument("input", help=".safetensors, .pt/.pth, or a model directory of shards")
    p.add_argument("-o", "--output", required=True, help="output .dzip file")
    p.add_argument(
        "--sparsity",
        type=float,
        default=0.0,
        help="fraction pruned per tensor, already-pruned weights and exact zeros included",
    )
    p.add_argument(
        "--bits", type=int, default=None, help=f"bits per index (default {DEFAULT_BITS})"
    )
    p.add_argument("--levels", type=int, default=None, help="quantization levels (not 2**bits)")
    p.add_argument(
        "--step",
        type=float,
        default=None,
        help="one uniform grid step for every tensor (NNCodec-style), instead of --levels",
    )
    p.add_argument("--no-quantize", action="store_true", help="prune only; values stay float")
    # None when not given, so that one given beside --no-quantize is refused
    p.add_argument(
        "--quantizer",
        default=None,
        choices=("kmeans", "uniform", "ecsq"),
        help=f"default: {DEFAULT_QUANTIZER}",
    )
    p.add_argument(
        "--lambda",
        dest="ecsq_lambda",
        type=float,
        default=None,
        help="ECSQ rate weight (default: 0, k-means started from the uniform centres; "
        "larger: lower entropy, more distortion)",
    )
    p.add_argument("--coder", default="auto", choices=CODER_NAMES)
    p.add_argument(
        "--layer-bits",
        action="append",
        default=[],
        metavar="GLOB=BITS",
        help="per-tensor bits (repeatable; the last glob that matches a tensor wins)",
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
    p.add_argument(
        "--batch", type=int, default=1, help="batch size of the example input (default: 1)"
    )
    p.add_argument("--input-shape", default="1,28,28", help="one sample's shape, e.g. 1,28,28")
    p.add_argument("--repeats", type=int, default=30, help="timed runs of each form (default: 30)")
    p.add_argument("--threads", type=int, default=None, help="torch (and kernel) threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_bench)
    return parser
