"""Reproduce the Deep Compression paper's Table 1 (LeNet-300-100, LeNet-5) end to end.

For each model, one run of the shipped recipe (deepzip/recipes/<model>-full.toml) with
``deepzip.pipeline.run_recipe``: dense training → iterative pruning with retraining → weight
sharing → centroid fine-tuning → the ``.dzip`` file. The ratio is the real file size (float32
bytes of every tensor the model needs / ``.dzip`` bytes) and the final accuracy is that of the
model decoded from the file. A second variant, "paper", starts from the same pruned checkpoint
and uses the paper's own quantization and coding (k-means with linear initialisation, 8 bits
for convolutions and 5 for fully connected layers, Huffman, the relative sparse index), so the
two methods compare at equal pruning. The report also shows the dense model's per-layer
pruning sensitivity (validation split), measured here.

    python benchmarks/reproduce.py                   # Fashion-MNIST, both models, 5 seeds
    python benchmarks/reproduce.py --quick           # smoke run (a few minutes, one seed)
    python benchmarks/reproduce.py --dataset mnist --data-dir DIR   # MNIST from its IDX files
    python benchmarks/reproduce.py --seeds 5 --jobs 5 --device cuda  # the same on a GPU

``--seeds N`` (default 5; 1 with ``--quick``) runs each model with recipe seeds 0..N-1, each
training its own dense baseline on the same data split, and reports the run with the median
accuracy drop (its HTML report is the one kept); every run is summarised under ``runs``.
``--jobs`` runs them in worker processes. The run directories under
``benchmarks/results/cache/runs/`` resume finished stages; a run directory started by other
deepzip code is refused, and ``--restart`` discards them.

``--seeds 1`` makes one run with the recipe's seed. With Fashion-MNIST its dense baselines then
come from the cached checkpoints ``benchmarks/results/cache/{model}-dense.safetensors``
(``scripts/rebuild_benchmark_cache.sh``, or ``benchmarks/prune_lenet.py --write-cache``) when
present, to save CPU time, and the JSON says so; ``--train`` trains them in the run instead.
Writes ``benchmarks/results/reproduce.json`` (``reproduce_<dataset>.json`` for other data sets,
``*_quick.json`` for smoke runs) and the HTML reports under
``benchmarks/results/reproduce/<model>/``, each with a headless-Chromium screenshot
(``report_screenshot.png``, ``scripts/screenshot_report.sh``; the JSON says when Chromium is
missing or a plot did not render); prints the paper's Table 1 beside ours.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from deepzip._atomic import atomic_write_text
from deepzip.config import (
    EncodeStage,
    FinetuneStage,
    QuantizeConfig,
    QuantizeStage,
    Recipe,
    Stage,
)
from deepzip.datasets import DataSplits, load_dataset
from deepzip.format import apply_checkpoint, read_checkpoint
from deepzip.pipeline import (
    PipelineEvent,
    RunResult,
    StageRecord,
    accuracy_fn,
    make_loaders,
    quick_recipe,
    run_recipe,
)
from deepzip.prune import sensitivity_analysis
from deepzip.report import compression_markdown, compression_table, markdown_table
from deepzip.report.run import write_run_report
from deepzip.zoo import create_model

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "cache"  # not committed (see .gitignore): dense checkpoints and run directories
REPORTS = RESULTS / "reproduce"
SCREENSHOT = RESULTS.parent.parent / "scripts" / "screenshot_report.sh"
MODELS = ("lenet-300-100", "lenet-5")

# Table 1 of Han, Mao & Dally, "Deep Compression" (ICLR 2016), MNIST.
PAPER: dict[str, dict[str, Any]] = {
    "lenet-300-100": {
        "dataset": "mnist",
        "err_ref": 1.64,
        "err_compressed": 1.58,
        "kb_ref": 1070,
        "kb_compressed": 27,
        "ratio": 40,
    },
    "lenet-5": {
        "dataset": "mnist",
        "err_ref": 0.80,
        "err_compressed": 0.74,
        "kb_ref": 1720,
        "kb_compressed": 44,
        "ratio": 39,
    },
}
TARGET_RATIO = {"lenet-300-100": 40.0, "lenet-5": 39.0}
STRETCH_RATIO = 50.0
MAX_DROP_POINTS = 0.3


def _logger(prefix: str) -> Callable[[PipelineEvent], None]:
    """Progress on stderr, each line prefixed (parallel seeds' lines interleave)."""

    def log(event: PipelineEvent) -> None:
        if event.kind != "stage_start":
            print(f"  {prefix}{event.message}", file=sys.stderr, flush=True)

    return log


def paper_stages(recipe: Recipe) -> tuple[Stage, ...]:
    """The paper's stage 2 and 3: k-means (8 bits conv, 5 fc), fine-tuning, Huffman + sparse."""
    finetune = next((s for s in recipe.stages if s.kind == "finetune"), None)
    return (
        Stage("quantize", QuantizeStage(QuantizeConfig(method="kmeans", init="linear"))),
        finetune if finetune is not None else Stage("finetune", FinetuneStage()),
        Stage("encode", EncodeStage(coder="huffman", index_bits="paper", layout="sparse")),
    )


def _stage_dicts(result: RunResult) -> list[dict[str, Any]]:
    out = []
    for r in (result.initial, *result.stages):
        out.append(
            {
                "stage": "start" if r.index < 0 else r.kind,
                "val_acc": r.val_acc,
                "test_acc": r.test_acc,
                "kept": r.kept,
                "file_bytes": r.file_bytes,
                "ratio": r.ratio,
                "seconds": r.seconds,
            }
        )
    return out


def _dense_record(result: RunResult) -> StageRecord:
    if result.stages and result.stages[0].kind == "train":
        return result.stages[0]
    return result.initial


def _summary(result: RunResult, dense_acc: float, target: float) -> dict[str, Any]:
    final = result.final
    final_acc = float(final.details.get("decoded_test_acc", final.test_acc))
    table = compression_table(final.details["save"])
    # Accuracies are counts over the test set (10,000 images: multiples of 0.01 points), so the
    # difference is rounded to drop float noise before it is compared with the budget.
    drop = round(100 * (dense_acc - final_acc), 6)
    return {
        "dense_acc": dense_acc,
        "final_acc": final_acc,
        "delta_points": -drop,
        "float_bytes": final.float32_bytes,
        "file_bytes": final.file_bytes,
        "ratio": final.ratio,
        "ratio_fixed_width": table.fixed_ratio,
        "kept": final.kept,
        "targets": {
            "ratio": target,
            "max_drop_points": MAX_DROP_POINTS,
            "ratio_met": final.ratio >= target,
            "accuracy_met": drop <= MAX_DROP_POINTS,
            "stretch_ratio": STRETCH_RATIO,
            "stretch_met": final.ratio >= STRETCH_RATIO,
        },
        "per_layer": table.to_dict(),
        "recipe": result.recipe.to_dict(),
    }


def _report_dir(name: str, dataset: str, quick: bool) -> Path:
    if quick:
        return CACHE / "reports" / f"{dataset}-{name}-quick"
    return REPORTS / (name if dataset == "fashion-mnist" else f"{dataset}-{name}")


def run_model(
    name: str, data: DataSplits, dataset: str, args: argparse.Namespace, seed: int | None = None
) -> tuple[dict[str, Any], str]:
    """Run the shipped recipe and the paper variant; returns the JSON entry and Markdown.

    ``seed`` (``--seeds``) replaces the recipe's seed; the dense model is then trained in the
    run, and the run directory and report carry the seed in their names.
    """
    recipe = Recipe.builtin(f"{name}-full")
    if seed is not None:
        recipe = replace(recipe, seed=seed)
    if args.quick:
        recipe = quick_recipe(recipe)
    suffix = ("-quick" if args.quick else "") + (f"-seed{seed}" if seed is not None else "")
    dense_ckpt = CACHE / f"{name}-dense.safetensors"
    use_cache = dataset == "fashion-mnist" and not args.train and not args.quick
    use_cache = use_cache and seed is None
    use_cache = use_cache and dense_ckpt.is_file()
    torch.manual_seed(recipe.seed)
    model = create_model(name)
    if use_cache:
        ckpt = read_checkpoint(dense_ckpt)
        if ckpt.metadata.get("deepzip.dataset", dataset) != dataset:
            raise SystemExit(f"{dense_ckpt} was trained on {ckpt.metadata['deepzip.dataset']}")
        apply_checkpoint(model, ckpt, strict=True, source=str(dense_ckpt))
        recipe = recipe.without("train")
        dense_source = f"cached dense checkpoint {dense_ckpt.relative_to(RESULTS.parent.parent)}"
    else:
        dense_source = "trained in this run (the recipe's train stage)"
    run_dir = CACHE / "runs" / f"{dataset}-{name}{suffix}"
    print(f"{name}: {len(recipe.stages)} stages into {run_dir}", file=sys.stderr, flush=True)
    log = _logger(f"{name}{'' if seed is None else f' seed {seed}'}: ")
    main = run_recipe(
        model,
        recipe,
        run_dir,
        data=data,
        model_name=name,
        device=args.device,
        on_event=log,
        restart=args.restart,
    )
    # the run's own stage times (a re-run that finds the stages done takes no time)
    seconds = sum(s.seconds for s in (main.initial, *main.stages))
    dense = _dense_record(main)
    assert dense.test_acc is not None
    entry = _summary(main, dense.test_acc, TARGET_RATIO[name])
    entry.update(
        {
            "dense_source": dense_source,
            "dense_val_acc": dense.val_acc,
            "stages": _stage_dicts(main),
            "seconds": seconds,
            "paper": PAPER[name],
            "seed": recipe.seed,
        }
    )

    # The paper's quantization and coding, from the same pruned checkpoint.
    last_pruned = [s for s in main.stages if recipe.stages[s.index].role in ("prune", "retrain")]
    paper_md = ""
    if last_pruned:
        pruned = create_model(name)
        apply_checkpoint(pruned, read_checkpoint(run_dir / last_pruned[-1].checkpoint))
        paper_recipe = Recipe(
            stages=paper_stages(recipe),
            seed=recipe.seed,
            overrides=recipe.overrides,
            name=f"{name}: the paper's quantization and coding",
        )
        print(f"{name}: paper variant", file=sys.stderr, flush=True)
        paper = run_recipe(
            pruned,
            paper_recipe,
            CACHE / "runs" / f"{dataset}-{name}-paper{suffix}",
            data=data,
            model_name=name,
            device=args.device,
            on_event=log,
            restart=args.restart,
        )
        entry["variants"] = {
            "paper": {
                **_summary(paper, dense.test_acc, TARGET_RATIO[name]),
                "starts_from": f"stage {last_pruned[-1].index + 1} ({last_pruned[-1].kind}) "
                "of the main run",
                "stages": _stage_dicts(paper),
            }
        }
        paper_md = compression_markdown(compression_table(paper.final.details["save"]))

    out = _report_dir(name, dataset, args.quick)
    if seed is not None:  # main() copies the reported seed's report to _report_dir
        out = CACHE / "reports" / f"{dataset}-{name}{suffix}"
    if out.exists():
        shutil.rmtree(out)
    # Per-layer pruning sensitivity of the dense model (validation split), for the report.
    sens_file = run_dir / "dense-sensitivity.json"
    dense_ckpt_file = run_dir / dense.checkpoint
    # measured again when the dense stage was re-run since (--restart keeps this file)
    stale = sens_file.is_file() and sens_file.stat().st_mtime < dense_ckpt_file.stat().st_mtime
    if stale or not sens_file.is_file():
        print(f"{name}: sensitivity of the dense model", file=sys.stderr, flush=True)
        dense_model = create_model(name)
        apply_checkpoint(dense_model, read_checkpoint(dense_ckpt_file))
        val = make_loaders(data, 1000).val
        assert val is not None  # load_dataset(val_size=5000) above
        sensitivity_analysis(dense_model, accuracy_fn(val, args.device)).save_json(sens_file)
    html = write_run_report(
        run_dir, out, title=f"{name} on {dataset}: Deep Compression", sensitivity=sens_file
    )
    entry["report"] = str(html)
    md = [
        f"### {name} on {dataset}",
        "",
        compression_markdown(compression_table(main.final.details["save"])),
    ]
    if paper_md:
        md += ["The paper's quantization and coding, same pruning:", "", paper_md]
    return entry, "\n".join(md)


def _run_in_worker(
    job: tuple[str, int | None], args: argparse.Namespace, threads: int
) -> tuple[dict[str, Any], str]:
    """One (model, seed) in a worker process (``--jobs``); loads the data itself."""
    torch.set_num_threads(threads)
    return run_model(job[0], _data(args), args.dataset, args, job[1])


def _data(args: argparse.Namespace) -> DataSplits:
    data = load_dataset(args.dataset, args.data_dir, val_size=5000, seed=0)
    if args.quick:
        data = DataSplits(data.train.subset(torch.arange(6000)), data.val, data.test)
    return data


def _median_run(
    runs: list[tuple[dict[str, Any], str]], report_dir: Path
) -> tuple[dict[str, Any], str]:
    """Of several seeds' runs of one model, the one with the median accuracy drop (the lower
    middle for an even count); its report is copied to ``report_dir`` and every run is
    summarised under ``runs``."""
    order = sorted(range(len(runs)), key=lambda i: runs[i][0]["delta_points"])
    entry, md = runs[order[(len(runs) - 1) // 2]]
    entry = dict(entry)
    html = Path(entry["report"])
    if report_dir.exists():
        shutil.rmtree(report_dir)
    shutil.copytree(html.parent, report_dir)
    entry["report"] = str(report_dir / html.name)
    entry["reported"] = "the run with the median delta_points over the seeds under runs"
    entry["runs"] = [
        {
            "seed": e["seed"],
            "dense_acc": e["dense_acc"],
            "final_acc": e["final_acc"],
            "delta_points": e["delta_points"],
            "dense_val_acc": e["dense_val_acc"],
            "final_val_acc": e["stages"][-1]["val_acc"],
            "ratio": e["ratio"],
            "file_bytes": e["file_bytes"],
            # every stage's accuracy, kept fraction and size (the pruned model's among them)
            "stages": [
                {k: s[k] for k in ("stage", "val_acc", "test_acc", "kept", "file_bytes")}
                for s in e["stages"]
            ],
            "paper_variant": {
                k: e["variants"]["paper"][k] for k in ("ratio", "delta_points", "final_acc")
            }
            if "variants" in e
            else None,
        }
        for e, _ in runs
    ]
    return entry, md


def _screenshot(html: Path) -> str:
    """Screenshot the committed HTML report beside it (``report_screenshot.png``) with
    ``scripts/screenshot_report.sh``, which also checks that every plot rendered; returns what
    happened (the report directory is rewritten by each run, so an old screenshot never stays)."""
    out = html.with_name("report_screenshot.png")
    done = subprocess.run(
        ["bash", str(SCREENSHOT), str(html), str(out)], capture_output=True, text=True, check=False
    )
    said = (done.stdout + done.stderr).strip().splitlines()
    print(f"  {said[-1] if said else 'screenshot: no output'}", file=sys.stderr, flush=True)
    if done.returncode == 2:  # no Chromium: the report stands, without a screenshot
        return "not taken: chromium not installed (apt-get install chromium)"
    if done.returncode != 0:  # reported, not raised: the run's results are still written
        return f"failed (exit {done.returncode}): {' '.join(said)}"
    return str(out.relative_to(RESULTS.parent.parent))


def _err(acc: float) -> str:
    return f"{100 * (1 - acc):.2f}%"


def table_one(results: dict[str, dict[str, Any]], dataset: str) -> str:
    """The paper's Table 1 beside ours (error = 100% − accuracy)."""
    headers = [
        "network",
        "paper (MNIST): error ref → compressed",
        "paper: size",
        "paper: ratio",
        f"ours ({dataset}): error ref → compressed",
        "ours: float32 → .dzip",
        "ours: ratio",
        "ours, paper's quantization + coding: ratio (error)",
    ]
    rows = []
    for name, r in results.items():
        p = PAPER[name]
        paper_variant = r.get("variants", {}).get("paper")
        pv = (
            f"{paper_variant['ratio']:.1f}× ({_err(paper_variant['final_acc'])})"
            if paper_variant
            else "-"
        )
        rows.append(
            [
                name,
                f"{p['err_ref']:.2f}% → {p['err_compressed']:.2f}%",
                f"{p['kb_ref']} KB → {p['kb_compressed']} KB",
                f"{p['ratio']}×",
                f"{_err(r['dense_acc'])} → {_err(r['final_acc'])} "
                f"({r['delta_points']:+.2f} points)",
                f"{r['float_bytes'] / 1000:.0f} KB → {r['file_bytes'] / 1000:.1f} KB",
                f"{r['ratio']:.1f}×",
                pv,
            ]
        )
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch per training, data slice")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist"))
    parser.add_argument("--data-dir", default=None, help="directory with the four IDX files")
    parser.add_argument("--train", action="store_true", help="train the dense models here")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard finished stages in the run directories (runs resume by default; after a "
        "code change the old stages would be reused)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="run each model with recipe seeds 0..N-1 (dense training included, same data "
        "split) and report the run with the median accuracy drop; every run under runs "
        "(default 5, --quick 1)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run the (model, seed) runs in this many worker processes (cores shared out)",
    )
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 5
    if args.seeds < 1 or args.jobs < 1:
        parser.error(f"--seeds and --jobs must be at least 1, got {args.seeds}, {args.jobs}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    names = args.models.split(",")
    seeds: list[int | None] = list(range(args.seeds)) if args.seeds > 1 else [None]
    jobs = [(name, seed) for name in names for seed in seeds]
    if args.jobs == 1:
        data = _data(args)
        done = [run_model(name, data, args.dataset, args, seed) for name, seed in jobs]
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            done = list(pool.map(_run_in_worker, jobs, [args] * len(jobs), [threads] * len(jobs)))
    results: dict[str, dict[str, Any]] = {}
    sections = []
    for name in names:
        runs = [run for job, run in zip(jobs, done, strict=True) if job[0] == name]
        entry, md = (
            runs[0]
            if len(runs) == 1
            else _median_run(runs, _report_dir(name, args.dataset, args.quick))
        )
        if not args.quick:
            entry["screenshot"] = _screenshot(Path(entry["report"]))
            entry["report"] = str(Path(entry["report"]).relative_to(RESULTS.parent.parent))
        results[name] = entry
        sections.append(md)
    stem = "reproduce" if args.dataset == "fashion-mnist" else f"reproduce_{args.dataset}"
    dest = RESULTS / f"{stem}{'_quick' if args.quick else ''}.json"
    out: dict[str, Any] = {
        "benchmark": "reproduce",
        "dataset": args.dataset,
        "quick": args.quick,
        "command": "python benchmarks/reproduce.py " + " ".join(argv or sys.argv[1:]),
        "seeds": args.seeds,
        "device": args.device,
        "torch": torch.__version__,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
        },
        "models": results,
    }
    if dest.is_file() and set(results) != set(MODELS):  # a partial run keeps the other models
        kept = json.loads(dest.read_text()).get("models", {})
        out["models"] = {**{k: v for k, v in kept.items() if k not in results}, **results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, json.dumps(out, indent=2) + "\n")
    print(table_one(out["models"], args.dataset))
    print("\n\n".join(sections))
    print(f"results → {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
