"""Trained quantization of the pruned LeNets (Fashion-MNIST): accuracy vs bits per method.

Starts from the pruned checkpoints that ``benchmarks/prune_lenet.py`` leaves in
``benchmarks/results/cache/`` and reports test accuracy after clustering only and after
fine-tuning the centroids (Adam, lr 1e-4; the same budget for every sweep point: one pass over
a fixed seeded subset of ``--sweep-train`` training images; the paper's setting gets a full
epoch):

* 2..8 bits for every layer, k-means with each of the four initialisations (the paper found
  linear initialisation best);
* 2..8 bits, plain vs Fisher-weighted k-means (Choi et al. 2017), uniform, and ECSQ;
* the paper's setting, 8 bits conv / 5 bits fc, linear k-means with fine-tuned centroids
  (target: within 0.1 point of the pruned model).

Each row also gives the zeroth-order entropy of the indices (bits/weight an ideal entropy
coder would need). Writes benchmarks/results/quantize_lenet.json and quantize_lenet.png.

    python benchmarks/quantize_lenet.py [--quick] [--models lenet-5]

A run over some of the models keeps the other models' results in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

# benchmarks/ is this script's directory, so its sibling is importable
from _cache import require_cached
from deepzip._atomic import atomic_path, atomic_write_text
from deepzip.config import QuantizeConfig, RetrainConfig
from deepzip.datasets import DataSplits, load_dataset
from deepzip.format import load_checkpoint
from deepzip.pipeline import quantize_with_finetuning
from deepzip.quantize import export_shared
from deepzip.report import markdown_table
from deepzip.zoo import create_model

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "cache"
MODELS = ("lenet-300-100", "lenet-5")
INITS = ("linear", "density", "forgy", "kmeans++")
FINETUNE = RetrainConfig(epochs=1, final_epochs=0, lr=1e-3, lr_scale=0.1, optimizer="adam")
ECSQ_LAMBDA = 0.02


def _entropy_bits(model: torch.nn.Module) -> float:
    """Zeroth-order entropy of all surviving indices, bits per surviving weight."""
    counts: list[torch.Tensor] = []
    for shared in export_shared(model).values():
        counts.append(torch.bincount(shared.indices[shared.mask].long(), minlength=256))
    total_bits, n = 0.0, 0
    for c in counts:
        m = int(c.sum())
        p = c[c > 0].double() / m
        total_bits += float(-(p * torch.log2(p)).sum()) * m
        n += m
    return total_bits / n if n else 0.0


def _run(
    name: str, data: DataSplits, config: QuantizeConfig, finetune: RetrainConfig, ckpt: Path
) -> dict[str, Any]:
    model = create_model(name)
    load_checkpoint(model, ckpt)
    t0 = time.perf_counter()
    out = quantize_with_finetuning(model, data, config, finetune, seed=0)
    return {
        "clustered": out.acc_clustered,
        "finetuned": out.acc_finetuned,
        "pruned": out.acc_before,
        "entropy_bits": _entropy_bits(model),
        "levels": {layer.name: layer.levels for layer in out.report.layers},
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2, 5 and 8 bits, linear only")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--sweep-train",
        type=int,
        default=10_000,
        help="training images for the sweep's fine-tuning (0: all); the paper setting uses all",
    )
    args = parser.parse_args(argv)
    data = load_dataset("fashion-mnist", args.data_dir, val_size=5000, seed=0)
    sweep_data = data
    if 0 < args.sweep_train < len(data.train):
        pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
        sweep_data = DataSplits(data.train.subset(pick[: args.sweep_train]), data.val, data.test)
    bits_sweep = (2, 5, 8) if args.quick else tuple(range(2, 9))
    inits = ("linear",) if args.quick else INITS
    results: dict[str, Any] = {}
    rows: list[list[str]] = []
    for name in args.models.split(","):
        ckpt = CACHE / f"{name}-pruned.safetensors"
        require_cached(ckpt)
        sweep: dict[str, dict[str, Any]] = {}
        for bits in bits_sweep:
            for init in inits:
                cfg = QuantizeConfig(bits=bits, init=init)  # type: ignore[arg-type]
                sweep[f"kmeans-{init}-{bits}"] = _run(name, sweep_data, cfg, FINETUNE, ckpt)
            for label, cfg in (
                ("kmeans-fisher", QuantizeConfig(bits=bits, importance="fisher")),
                ("uniform", QuantizeConfig(bits=bits, method="uniform")),
                ("ecsq", QuantizeConfig(bits=bits, method="ecsq", ecsq_lambda=ECSQ_LAMBDA)),
            ):
                sweep[f"{label}-{bits}"] = _run(name, sweep_data, cfg, FINETUNE, ckpt)
        paper = _run(name, data, QuantizeConfig(), FINETUNE, ckpt)
        pruned_acc = paper["pruned"]
        results[name] = {"pruned_acc": pruned_acc, "paper_setting": paper, "sweep": sweep}
        rows.append(
            [
                name,
                "8 conv / 5 fc (paper)",
                "k-means linear",
                f"{100 * pruned_acc:.2f}%",
                f"{100 * paper['clustered']:.2f}%",
                f"{100 * paper['finetuned']:.2f}%",
                f"{100 * (paper['finetuned'] - pruned_acc):+.2f}",
                f"{paper['entropy_bits']:.2f}",
            ]
        )
        for key, r in sweep.items():
            method, bits = key.rsplit("-", 1)
            rows.append(
                [
                    name,
                    bits,
                    method,
                    f"{100 * pruned_acc:.2f}%",
                    f"{100 * r['clustered']:.2f}%",
                    f"{100 * r['finetuned']:.2f}%",
                    f"{100 * (r['finetuned'] - pruned_acc):+.2f}",
                    f"{r['entropy_bits']:.2f}",
                ]
            )
    out = {
        "benchmark": "quantize_lenet",
        "dataset": "fashion-mnist",
        "quick": args.quick,
        "finetune": FINETUNE.to_dict(),
        "sweep_train_images": len(sweep_data.train),
        "paper_setting_train_images": len(data.train),
        "ecsq_lambda": ECSQ_LAMBDA,
        "torch": torch.__version__,
        "models": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "quantize_lenet_quick" if args.quick else "quantize_lenet"
    dest = RESULTS / f"{stem}.json"
    if dest.is_file():  # a run over some models keeps the others' results
        kept = json.loads(dest.read_text())["models"]
        out["models"] = {**{k: v for k, v in kept.items() if k not in results}, **results}
    atomic_write_text(dest, json.dumps(out, indent=2) + "\n")
    _plot(out["models"], bits_sweep, RESULTS / f"{stem}.png")
    print(
        markdown_table(
            [
                "model",
                "bits",
                "method",
                "pruned",
                "clustered",
                "fine-tuned",
                "Δ points",
                "index entropy (bits)",
            ],
            rows,
        )
    )
    print(f"results → {RESULTS / (stem + '.json')}")
    return 0


def _plot(results: dict[str, Any], bits_sweep: tuple[int, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(results), 4.5), dpi=110)
    for i, (name, res) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        methods = sorted({k.rsplit("-", 1)[0] for k in res["sweep"]})
        for m in methods:
            xs = [b for b in bits_sweep if f"{m}-{b}" in res["sweep"]]
            ax.plot(
                xs,
                [100 * res["sweep"][f"{m}-{b}"]["finetuned"] for b in xs],
                marker="o",
                markersize=3,
                label=m,
            )
        ax.axhline(100 * res["pruned_acc"], color="gray", linestyle="--", label="pruned (float)")
        ax.set_title(f"{name}: accuracy after centroid fine-tuning")
        ax.set_xlabel("bits per weight index")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(max(0.0, 100 * res["pruned_acc"] - 15), 100 * res["pruned_acc"] + 2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


if __name__ == "__main__":
    sys.exit(main())
