"""Weightless vs Deep Compression on the fully connected layers of the pruned LeNets.

Fashion-MNIST. Starts from the checkpoints ``benchmarks/prune_lenet.py`` leaves in
``benchmarks/results/cache`` (the dense model gives the baseline accuracy, the pruned one the
masks). Layer after layer
(fc1, fc2, fc3 of LeNet-300-100; fc1, fc2 of LeNet-5):

1. the layer is clustered (k-means, linear initialisation) with the bits of ``BITS``;
2. Deep Compression's size of exactly that clustered layer is measured: the ``.dzip``
   region deepzip writes for it with the relative sparse index at the gap width (1..16 bits)
   that makes it smallest and the entropy coder (``coder="auto"``: Huffman or ANS per
   stream), codebook included; the size at the paper's 5-bit gaps, and the smaller of the
   best one and deepzip's dense index stream, are reported beside it;
3. the layer is encoded with Weightless (``deepzip.weightless_``): the cell width is the
   smallest whose validation accuracy after retraining the later layers is within
   ``--max-drop`` points of the pruned model's; the filter (header and table) plus the
   codebook is the layer's Weightless size. The same filter with its table LZMA-compressed
   (``WeightlessConfig(lzma=True)``; lossless, so nothing else changes) is reported beside it;
4. the later layers, and the codebooks and biases of the layers already encoded (their
   positions and cluster indices never change), retrain around the false positives: Adam
   (lr 1e-3, cosine schedule), distilled from the dense model (weight 0.5, temperature 4),
   20 epochs per trial on LeNet-300-100 and 5 on LeNet-5. The paper freezes an encoded layer
   whole; ``--optimizer sgd --lr 0.01 --distill 0 --no-train-encoded --epochs 3`` is the
   earlier, weaker retraining (``benchmarks/results/weightless_sgd_frozen.json``).

On LeNet-300-100's largest layer (fc1) the cell width is also swept, each width from the same
starting point, to show the size/accuracy trade-off. The final model is written to a
``.dzip`` file (Weightless layers in the Bloomier encoding) and its test accuracy is measured
on the model decoded from that file. Test accuracy is only reported; every choice is made on
the validation split.

    python benchmarks/weightless.py            # full run
    python benchmarks/weightless.py --quick    # smoke run (data slice, one epoch per trial)

Writes benchmarks/results/weightless.json (weightless_quick.json with --quick) and prints a
Markdown table per model.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

# benchmarks/ is this script's directory, so its sibling is importable
from _cache import require_cached
from deepzip._atomic import atomic_write_text
from deepzip.coding.bloomier import BloomierFilter
from deepzip.config import QuantizeConfig, WeightlessConfig
from deepzip.datasets import DataSplits, TensorLoader, load_dataset
from deepzip.format import apply_checkpoint, load_model, read_checkpoint, save
from deepzip.format.dzip_spec import MAX_GAP_WIDTH, MIN_GAP_WIDTH
from deepzip.format.dzip_writer import DzipWriter
from deepzip.pipeline import accuracy_fn, independent_copy, make_loaders
from deepzip.quantize import export_shared, quantize_
from deepzip.quantize.shared import SharedTensor
from deepzip.quantize.weightless import get_weightless
from deepzip.report import markdown_table
from deepzip.train import (
    DistillationLoss,
    fit,
    make_optimizer,
    pack_teacher_targets,
    predict_logits,
)
from deepzip.weightless import WeightlessLayer, weightless_
from deepzip.zoo import create_model

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "cache"
MODELS = ("lenet-300-100", "lenet-5")
LAYERS = {"lenet-300-100": ("fc1", "fc2", "fc3"), "lenet-5": ("fc1", "fc2")}
# Cluster bits per layer, the same for Weightless and Deep Compression. Few clusters suit
# Weightless (its false-positive rate is K / 2**t); the paper's 5 bits are kept where a layer
# is small and sensitive (the output layers).
BITS = {
    "lenet-300-100": {"fc1": 2, "fc2": 2, "fc3": 5},
    "lenet-5": {"fc1": 2, "fc2": 5},
}
SWEEP = (4, 5, 6, 7, 8, 9)  # cell widths of the fc1 sweep
EPOCHS = {"lenet-300-100": 20, "lenet-5": 5}  # retraining epochs after each width tried
GAP_WIDTH = 5  # the paper's relative-index width for fully connected layers


def _dc_bytes(name: str, shared: SharedTensor) -> dict[str, Any]:
    """Deep Compression's region for one clustered layer, at its best gap width.

    The relative sparse index (gaps + values, entropy-coded) is written at every gap width the
    format allows and the smallest region is Deep Compression's size: a wider gap field needs
    fewer filler entries and the entropy coder keeps the wide alphabet cheap, so the paper's 5
    bits is not the best width on a sparse layer. The paper's width and deepzip's best layout
    (the smaller of that and the dense index stream, at the best width) are reported beside it.
    """
    sizes: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp, DzipWriter(Path(tmp) / "dc.dzip") as w:
        records = {}
        for width in range(MIN_GAP_WIDTH, MAX_GAP_WIDTH + 1):
            records[width] = w.add_shared(
                f"{name}.{width}", shared, gap_width=width, layout="sparse"
            )
            sizes[width] = records[width].bytes
        best_width = min(sizes, key=lambda g: (sizes[g], g))
        sparse = records[best_width]
        best = w.add_shared(name + ".auto", shared, gap_width=best_width, layout="auto")
    return {
        "bytes": sparse.bytes,
        "gap_width": best_width,
        "parts": {p.name: p.bytes for p in sparse.parts},
        "paper_gap_width_bytes": sizes[GAP_WIDTH],
        "bytes_by_gap_width": {str(g): b for g, b in sizes.items()},
        "best_bytes": best.bytes,
        "best_encoding": best.encoding,
    }


class Trainer:
    """Retraining of whatever still trains, on the training split (optionally distilled)."""

    def __init__(
        self,
        data: DataSplits,
        *,
        epochs: int,
        optimizer: str,
        lr: float,
        teacher: nn.Module | None,
        distill: float,
        seed: int,
    ) -> None:
        self.epochs, self.optimizer, self.lr, self.seed = epochs, optimizer, lr, seed
        targets = data.train.labels
        self.loss: nn.Module | None = None
        if teacher is not None and distill > 0:
            plain = TensorLoader(data.train.images, data.train.labels, 1000)
            targets = pack_teacher_targets(data.train.labels, predict_logits(teacher, plain))
            self.loss = DistillationLoss(distill, 4.0)
        self.loader = TensorLoader(data.train.images, targets, 128, shuffle=True, seed=seed)
        self.calls = 0

    def __call__(self, model: nn.Module, layer: str) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params or not self.epochs:
            return
        self.calls += 1
        # an encoded layer's centroid gets the summed gradient of all its positions (false
        # positives included): Adam's step does not depend on that scale, SGD's does
        decay = 5e-4 if self.optimizer == "sgd" else 0.0
        opt = make_optimizer(params, self.optimizer, self.lr, weight_decay=decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        fit(
            model,
            self.loader,
            optimizer=opt,
            epochs=self.epochs,
            loss_fn=self.loss,
            scheduler=sched,
            seed=self.seed,
        )


def _load(name: str, kind: str, quick: bool) -> nn.Module:
    path = CACHE / f"{name}-{kind}.safetensors"
    if not path.is_file() and quick:
        path = CACHE / f"{name}-{kind}-quick.safetensors"
    require_cached(path)
    model = create_model(name)
    apply_checkpoint(model, read_checkpoint(path), source=str(path))
    return model


def _lzma_bytes(model: nn.Module, layer: WeightlessLayer) -> int:
    """The encoded layer's filter with its table LZMA-compressed (as ``lzma = true`` writes it:
    kept only when smaller), plus the codebook. Lossless: the decoded layer is the same."""
    module = model.get_submodule(layer.name.rpartition(".")[0])
    weight = get_weightless(module, layer.name.rpartition(".")[2])
    assert weight is not None, f"{layer.name} is not encoded"
    data = weight.bloomier.cpu().numpy().tobytes()
    return len(BloomierFilter.from_bytes(data).to_bytes(compress=True)) + layer.codebook_bytes


def _row(
    layer: WeightlessLayer, dc: dict[str, Any], test_acc: float, lzma_bytes: int
) -> dict[str, Any]:
    original = 4 * layer.weights
    return {
        "weights": layer.weights,
        "kept": layer.keys,
        "clusters": layer.clusters,
        "cell_bits": layer.cell_bits,
        "cells": layer.cells,
        "weightless_bytes": layer.encoded_bytes,
        "weightless_ratio": original / layer.encoded_bytes,
        "filter_bytes": layer.filter_bytes,
        "deep_compression_bytes": dc["bytes"],
        "deep_compression_ratio": original / dc["bytes"],
        "deep_compression_gap_width": dc["gap_width"],
        "deep_compression_parts": dc["parts"],
        "deep_compression_bytes_paper_gap_width": dc["paper_gap_width_bytes"],
        "deepzip_best_bytes": dc["best_bytes"],
        "deepzip_best_encoding": dc["best_encoding"],
        "weightless_vs_deep_compression": dc["bytes"] / layer.encoded_bytes,
        "weightless_lzma_bytes": lzma_bytes,
        "weightless_lzma_ratio": original / lzma_bytes,
        "weightless_lzma_vs_deep_compression": dc["bytes"] / lzma_bytes,
        "false_positives": layer.false_positives,
        "false_positive_rate": layer.false_positive_rate,
        "expected_false_positive_rate": layer.expected_false_positive_rate,
        "val_acc": layer.accuracy,
        "test_acc": test_acc,
        "within_budget": layer.within_budget,
        "trials": [t.to_dict() for t in layer.trials],
    }


def run_model(name: str, data: DataSplits, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    loaders = make_loaders(data, 1000)
    assert loaders.val is not None
    test_acc, val_acc = accuracy_fn(loaders.test), accuracy_fn(loaders.val)
    dense = _load(name, "dense", args.quick)
    model = _load(name, "pruned", args.quick)
    dense_acc, dense_val = test_acc(dense), val_acc(dense)
    pruned_acc, pruned_val = test_acc(model), val_acc(model)
    epochs = 1 if args.quick else (args.epochs or EPOCHS[name])
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.01)
    trainer = Trainer(
        data,
        epochs=epochs,
        optimizer=args.optimizer,
        lr=lr,
        teacher=dense,
        distill=args.distill,
        seed=args.seed,
    )
    config = WeightlessConfig(
        max_drop=args.max_drop,
        min_cell_bits=args.min_cell_bits,
        max_cell_bits=args.max_cell_bits,
        lzma=args.lzma,
        seed=args.seed,
        train_encoded=args.train_encoded,
    )
    layers: dict[str, Any] = {}
    sweep: list[dict[str, Any]] = []
    rows = []
    t0 = time.perf_counter()
    for layer in LAYERS[name]:
        param = f"{layer}.weight"
        quantize_(model, QuantizeConfig(bits=BITS[name][layer], include=(param,)))
        shared = export_shared(model)[param]
        dc = _dc_bytes(param, shared)
        if name == "lenet-300-100" and layer == "fc1" and not args.no_sweep:
            for t in SWEEP[:2] if args.quick else SWEEP:
                trial = independent_copy(model)
                rep = weightless_(
                    trial,
                    replace(config, cell_bits=t, include=(param,)),
                    retrain=trainer,
                    evaluate=val_acc,
                )
                (enc,) = rep.layers
                sweep.append(
                    {
                        "cell_bits": t,
                        "weightless_bytes": enc.encoded_bytes,
                        "vs_deep_compression": dc["bytes"] / enc.encoded_bytes,
                        "weightless_lzma_bytes": _lzma_bytes(trial, enc),
                        "false_positive_rate": enc.false_positive_rate,
                        "val_acc": enc.accuracy,
                        "test_acc": test_acc(trial),
                    }
                )
        report = weightless_(
            model,
            replace(config, include=(param,)),
            retrain=trainer,
            evaluate=val_acc,
            reference=pruned_val,
        )
        (enc,) = report.layers
        layers[layer] = _row(enc, dc, test_acc(model), _lzma_bytes(model, enc))
        r = layers[layer]
        rows.append(
            [
                layer,
                f"{enc.weights:,}",
                f"{100 * enc.keys / enc.weights:.1f}%",
                str(enc.clusters),
                str(enc.cell_bits),
                f"{r['deep_compression_bytes']:,} B ({r['deep_compression_ratio']:.0f}×)",
                f"{r['weightless_bytes']:,} B ({r['weightless_ratio']:.0f}×)",
                f"{r['weightless_vs_deep_compression']:.2f}×",
                f"{r['weightless_lzma_bytes']:,} B "
                f"({r['weightless_lzma_vs_deep_compression']:.2f}×)",
                f"{100 * enc.false_positive_rate:.2f}%",
                f"{100 * r['val_acc']:.2f}% / {100 * r['test_acc']:.2f}%",
            ]
        )
    seconds = time.perf_counter() - t0
    # the accuracy that counts is the file's: write the .dzip, decode it into a fresh model
    path = CACHE / f"{name}-weightless{'-quick' if args.quick else ''}.dzip"
    saved = save(model, path, metadata={"benchmark": "weightless", "model": name})
    decoded = create_model(name)
    load_model(decoded, path, strict=True)
    final_acc = test_acc(decoded)
    assert final_acc == test_acc(model), "the decoded .dzip must give the model's accuracy"
    return {
        "dense_acc": dense_acc,
        "dense_val_acc": dense_val,
        "pruned_acc": pruned_acc,
        "pruned_val_acc": pruned_val,
        "final_acc": final_acc,
        "final_val_acc": val_acc(model),
        "delta_points_vs_dense": 100 * (final_acc - dense_acc),
        "dzip_bytes": saved.file_bytes,
        "dzip_ratio": saved.float32_bytes / saved.file_bytes,
        "dzip_encodings": {t.name: t.encoding for t in saved.tensors},
        "bits": BITS[name],
        "layers": layers,
        "fc1_sweep": sweep,
        "retrain": {
            "epochs_per_trial": epochs,
            "lr": lr,
            "optimizer": args.optimizer,
            "schedule": "cosine",
            "distill": args.distill,
            "train_encoded": args.train_encoded,
            "calls": trainer.calls,
        },
        "weightless": config.to_dict(),
        "seconds": seconds,
        "table": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on a data slice")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs", type=int, default=None, help="retraining epochs per trial (default: per model)"
    )
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument(
        "--lr", type=float, default=None, help="default: 1e-3 with Adam, 0.01 with SGD"
    )
    parser.add_argument(
        "--distill", type=float, default=0.5, help="weight of distillation from the dense model"
    )
    parser.add_argument(
        "--train-encoded",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="encoded layers' codebooks and biases keep training (--no-train-encoded: frozen)",
    )
    parser.add_argument("--max-drop", type=float, default=0.3, help="points vs the pruned model")
    parser.add_argument("--min-cell-bits", type=int, default=4)
    parser.add_argument("--max-cell-bits", type=int, default=12)
    parser.add_argument("--lzma", action="store_true")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    # the split the cached models were pruned on (prune_lenet.py's split seed 0), whatever
    # --seed; a training image of theirs must not become a validation image here
    data = load_dataset("fashion-mnist", args.data_dir, val_size=5000, seed=0)
    if args.quick:
        data = DataSplits(data.train.subset(torch.arange(8000)), data.val, data.test)
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        results[name] = run_model(name, data, args)
        r = results[name]
        print(
            f"\n{name}: dense {100 * r['dense_acc']:.2f}%, pruned {100 * r['pruned_acc']:.2f}%, "
            f"final (decoded .dzip) {100 * r['final_acc']:.2f}%, file {r['dzip_bytes']:,} B"
        )
        print(
            markdown_table(
                [
                    "layer",
                    "weights",
                    "kept",
                    "K",
                    "t",
                    "Deep Compression",
                    "Weightless",
                    "Weightless ÷ DC",
                    "Weightless, LZMA table (÷ DC)",
                    "false positives",
                    "val / test after retraining",
                ],
                results[name].pop("table"),
            )
        )
        if results[name]["fc1_sweep"]:
            print(
                markdown_table(
                    [
                        "t",
                        "Weightless bytes",
                        "× vs DC",
                        "LZMA table",
                        "false positives",
                        "val",
                        "test",
                    ],
                    [
                        [
                            str(s["cell_bits"]),
                            f"{s['weightless_bytes']:,}",
                            f"{s['vs_deep_compression']:.2f}×",
                            f"{s['weightless_lzma_bytes']:,}",
                            f"{100 * s['false_positive_rate']:.2f}%",
                            f"{100 * s['val_acc']:.2f}%",
                            f"{100 * s['test_acc']:.2f}%",
                        ]
                        for s in results[name]["fc1_sweep"]
                    ],
                )
            )
    primary = results.get("lenet-300-100") or next(iter(results.values()))
    out = {
        "benchmark": "weightless",
        "dataset": "fashion-mnist",
        "quick": args.quick,
        "seed": args.seed,
        "torch": torch.__version__,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
        },
        "dense_acc": primary["dense_acc"],
        "final_acc": primary["final_acc"],
        "layers": {
            k: {
                key: v[key]
                for key in (
                    "weights",
                    "weightless_bytes",
                    "weightless_ratio",
                    "deep_compression_bytes",
                    "deep_compression_ratio",
                    "false_positive_rate",
                )
            }
            for k, v in primary["layers"].items()
        },
        "models": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / ("weightless_quick.json" if args.quick else "weightless.json")
    atomic_write_text(dest, json.dumps(out, indent=2) + "\n")
    print(f"results → {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
