"""``deepzip compress`` then ``deepzip decompress`` on a ~100M-parameter safetensors checkpoint.

A seeded synthetic checkpoint shaped like a transformer stack (8 blocks of QKV, output and MLP
projections with biases and norm vectors, about 100.7 M float32 parameters, 403 MB) with
Laplace-distributed weights (scale 1/sqrt(fan_in), like trained Linear layers) is written to a
temporary directory. The two commands run as subprocesses under ``/usr/bin/time -v``, which
reports their wall time and peak resident memory. The decompressed ``.safetensors`` file must
have the original names, shapes and dtypes, raw tensors bit-exact, and each compressed tensor
equal to the quantized tensor computed independently here (the uniform quantizer of the tensor's
own values). Target: peak memory of each command at most about 3x the checkpoint size.

    python benchmarks/big_checkpoint.py           # ~100 M parameters (a few minutes)
    python benchmarks/big_checkpoint.py --quick   # ~12.6 M parameters
    python benchmarks/big_checkpoint.py --layer 8192 --against ../old/src --runs 3

Updates only the ``big_checkpoint`` key of ``benchmarks/results/coding.json`` (the coding
benchmark owns the other keys); ``--quick`` writes ``big_checkpoint_quick.json`` instead.

``--layer N`` takes one N x N layer (plus its bias) instead: a single large tensor, where
the working memory of one tensor dominates (the stack's tensors are at most 4 M values). It
writes ``big_layer.json``. ``--against SRC`` also runs both commands with another deepzip's
source tree first on ``PYTHONPATH`` (e.g. an older commit's checkout), in the same run, and
records its figures beside this one's; ``--runs`` repeats every command (medians reported).
``--quantizer kmeans`` (or ``ecsq``) compresses with that quantizer instead of the default
and writes its results beside the default's (``big_layer_kmeans.json``, ...); each compressed
tensor is then checked against that quantizer run here on the tensor's values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepzip import __version__
from deepzip._atomic import atomic_write_text
from deepzip.posttrain import DEFAULT_BITS, DEFAULT_QUANTIZER, PostTrainConfig
from deepzip.quantize.kmeans import KMeansResult, kmeans_1d
from deepzip.quantize.scalar import ecsq_quantize, uniform_quantize

RESULTS = Path(__file__).resolve().parent / "results"
PEAK_LIMIT = 3.0


def block_shapes(d_model: int, d_ff: int) -> dict[str, tuple[int, ...]]:
    """One transformer block's tensors (PyTorch Linear layout: out × in)."""
    return {
        "attn.qkv.weight": (3 * d_model, d_model),
        "attn.qkv.bias": (3 * d_model,),
        "attn.out.weight": (d_model, d_model),
        "attn.out.bias": (d_model,),
        "norm1.weight": (d_model,),
        "norm1.bias": (d_model,),
        "mlp.fc1.weight": (d_ff, d_model),
        "mlp.fc1.bias": (d_ff,),
        "mlp.fc2.weight": (d_model, d_ff),
        "mlp.fc2.bias": (d_model,),
        "norm2.weight": (d_model,),
        "norm2.bias": (d_model,),
    }


def make_checkpoint(
    path: Path, blocks: int, d_model: int, d_ff: int, layer: int | None = None
) -> tuple[int, int]:
    """Write the seeded checkpoint (with ``layer``: one layer x layer Linear); returns
    (parameters, bytes)."""
    g = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    if layer is not None:
        shapes = {"layer.weight": (layer, layer), "layer.bias": (layer,)}
    else:
        shapes = {
            f"blocks.{b}.{name}": shape
            for b in range(blocks)
            for name, shape in block_shapes(d_model, d_ff).items()
        }
    for name, shape in shapes.items():
        if name.split(".")[-2].startswith("norm") and name.endswith("weight"):
            t = 1.0 + 0.05 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            t = 0.02 * torch.randn(shape, generator=g)
        else:  # Laplace(0, 1/sqrt(fan_in)): the difference of two exponentials
            e1 = torch.empty(shape).exponential_(generator=g)
            t = (e1 - torch.empty(shape).exponential_(generator=g)) / math.sqrt(shape[1])
        tensors[name] = t.contiguous()
    params = sum(t.numel() for t in tensors.values())
    save_file(tensors, str(path))
    return params, path.stat().st_size


def _deepzip() -> list[str]:
    script = Path(sys.executable).parent / "deepzip"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "deepzip.cli"]


def timed(cmd: list[str], src: Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` under ``/usr/bin/time -v`` (with ``src``, another deepzip source tree, first
    on ``PYTHONPATH``); wall seconds and peak RSS bytes."""
    env = os.environ.copy()
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr)
    if rss is None or wall is None:
        sys.exit(f"cannot parse /usr/bin/time output:\n{proc.stderr}")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = 60 * seconds + float(part)
    return {"command": " ".join(Path(c).name for c in cmd[:1]) + " " + " ".join(cmd[1:2]),
            "wall_seconds": seconds, "peak_rss_bytes": 1024 * int(rss.group(1))}  # fmt: skip


def quantized(values: torch.Tensor, levels: int, quantizer: str) -> KMeansResult:
    """What ``deepzip compress --quantizer <quantizer>`` does to one tensor's values."""
    if quantizer == "kmeans":
        return kmeans_1d(values, levels)
    if quantizer == "ecsq":
        return ecsq_quantize(values, levels, PostTrainConfig().ecsq_lambda)
    return uniform_quantize(values, levels)


def verify(original: Path, decompressed: Path, levels: int, quantizer: str) -> dict[str, Any]:
    """Names, shapes, dtypes and values of the decompressed file, one tensor at a time."""
    compressed = exact = 0
    with (
        safe_open(str(original), framework="pt") as src,
        safe_open(str(decompressed), framework="pt") as back,
    ):
        if set(src.keys()) != set(back.keys()):
            sys.exit("decompressed tensor names differ from the original")
        for name in src.keys():  # noqa: SIM118 - safe_open is not a mapping
            a, b = src.get_tensor(name), back.get_tensor(name)
            if a.dtype != b.dtype or a.shape != b.shape:
                sys.exit(f"{name}: {a.dtype} {tuple(a.shape)} came back {b.dtype} {tuple(b.shape)}")
            if a.dim() < 2:
                if not torch.equal(a, b):
                    sys.exit(f"{name}: raw tensor changed")
                exact += 1
                continue
            q = quantized(a.flatten(), levels, quantizer)
            if not torch.equal(q.centroids[q.labels].reshape(a.shape), b):
                sys.exit(f"{name}: decompressed tensor is not the quantized tensor")
            compressed += 1
    return {"compressed_tensors_equal_quantized": compressed, "raw_tensors_exact": exact}


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One command's figures: the medians of its runs (each run kept under ``runs``)."""
    out = dict(runs[0])
    for key in ("wall_seconds", "peak_rss_bytes"):
        out[key] = statistics.median(r[key] for r in runs)
    if len(runs) > 1:
        out["runs"] = [{k: r[k] for k in ("wall_seconds", "peak_rss_bytes")} for r in runs]
    return out


def _imported_from(src: Path) -> str:
    """Where ``import deepzip`` finds it with ``src`` first on ``PYTHONPATH``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import deepzip, sys; sys.stdout.write(deepzip.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0 or not Path(out.stdout).resolve().is_relative_to(src.resolve()):
        sys.exit(
            f"--against {src}: deepzip is not imported from there ({out.stdout or out.stderr})"
        )
    return out.stdout


def main(argv: list[str] | None = None) -> int:
    """Generate, compress, decompress, verify, record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one block (~12.6 M parameters)")
    parser.add_argument("--layer", type=int, default=None, help="one N x N layer instead")
    parser.add_argument("--against", type=Path, default=None, help="another deepzip's src/")
    parser.add_argument("--runs", type=int, default=1, help="runs of each command (median)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    parser.add_argument(
        "--quantizer",
        choices=("uniform", "kmeans", "ecsq"),
        default=DEFAULT_QUANTIZER,
        help=f"the compress command's quantizer (default {DEFAULT_QUANTIZER})",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or (args.layer is not None and args.layer < 1):
        parser.error("--runs and --layer must be >= 1")
    if args.quick and args.layer is not None:
        parser.error("--quick and --layer are two different checkpoints: give one")
    against = None if args.against is None else _imported_from(args.against)
    blocks, d_model, d_ff = (1, 1024, 4096) if args.quick else (8, 1024, 4096)
    work = Path(tempfile.mkdtemp(prefix="dzip-big-")) if args.workdir is None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    sources: list[tuple[str, Path | None]] = [("this", None)]
    if args.against is not None:
        sources.append(("against", args.against))
    times: dict[str, dict[str, list[dict[str, Any]]]] = {
        label: {"compress": [], "decompress": []} for label, _ in sources
    }
    try:
        ckpt = work / "model.safetensors"
        t0 = time.perf_counter()
        params, ckpt_bytes = make_checkpoint(ckpt, blocks, d_model, d_ff, args.layer)
        print(f"checkpoint: {params:,} parameters, {ckpt_bytes:,} bytes "
              f"({time.perf_counter() - t0:.0f} s to generate)", flush=True)  # fmt: skip
        dzip_bytes: dict[str, int] = {}
        checks: dict[str, dict[str, Any]] = {}
        for run in range(args.runs):
            for label, src in sources:  # interleaved: both see the same machine load
                dzip, back = work / f"{label}.dzip", work / f"{label}.safetensors"
                cmd = [*_deepzip(), "compress", str(ckpt), "-o", str(dzip), "--no-progress"]
                cmd += ["--quantizer", args.quantizer]
                times[label]["compress"].append(timed(cmd, src))
                cmd = [*_deepzip(), "decompress", str(dzip), "-o", str(back), "--no-progress"]
                times[label]["decompress"].append(timed(cmd, src))
                done = [(step, t[-1]) for step, t in times[label].items()]
                print(f"run {run + 1} {label}: " + ", ".join(
                    f"{step} {t['wall_seconds']:.1f} s, {t['peak_rss_bytes'] / 2**20:.0f} MiB"
                    for step, t in done), flush=True)  # fmt: skip
                if run == 0:
                    checks[label] = verify(ckpt, back, 1 << DEFAULT_BITS, args.quantizer)
                    dzip_bytes[label] = dzip.stat().st_size
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    compress = _median_of(times["this"]["compress"])
    decompress = _median_of(times["this"]["decompress"])
    for step in (compress, decompress):
        step["peak_over_checkpoint"] = step["peak_rss_bytes"] / ckpt_bytes
        step["within_limit"] = step["peak_over_checkpoint"] <= PEAK_LIMIT
    record = {
        "description": "deepzip compress + decompress (subprocesses, /usr/bin/time -v) of a "
        + (
            f"seeded synthetic float32 checkpoint of one {args.layer} x {args.layer} layer"
            if args.layer is not None
            else "seeded synthetic transformer-like float32 checkpoint"
        )
        + f"; post-training settings {args.quantizer}, {DEFAULT_BITS} bits, coder auto, no "
        f"pruning (the default quantizer is {DEFAULT_QUANTIZER}); medians of {args.runs} run(s)",
        "quantizer": args.quantizer,
        "parameters": params,
        "checkpoint_bytes": ckpt_bytes,
        "float32_bytes": 4 * params,  # every tensor of the checkpoint is float32
        "dzip_bytes": dzip_bytes["this"],
        "ratio": 4 * params / dzip_bytes["this"],  # the model's float32 size over the file, not the
        # checkpoint file (whose JSON header is not part of the model)
        "compress": compress,
        "decompress": decompress,
        "peak_limit_over_checkpoint": PEAK_LIMIT,
        "within_limit": compress["within_limit"] and decompress["within_limit"],
        "compress_mparams_per_s": params / compress["wall_seconds"] / 1e6,
        "decompress_mparams_per_s": params / decompress["wall_seconds"] / 1e6,
        **checks["this"],
        "deepzip_version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d"),
    }
    # what the interpreter holds before any tensor: python with deepzip's CLI imported
    record["import_peak_rss_bytes"] = timed([sys.executable, "-c", "import deepzip.cli"])[
        "peak_rss_bytes"
    ]
    if args.against is not None:
        other = {step: _median_of(times["against"][step]) for step in ("compress", "decompress")}
        head = subprocess.run(
            ["git", "-C", str(args.against), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        record["against"] = {
            "src": str(args.against),
            "imported_from": against,
            "commit": head.stdout.strip() if head.returncode == 0 else None,
            "dzip_bytes": dzip_bytes["against"],
            "same_bytes_as_this": dzip_bytes["against"] == dzip_bytes["this"],
            **other,
            **checks["against"],
            "this_over_against": {
                f"{step}_{key}": record[step][key] / other[step][key]
                for step in ("compress", "decompress")
                for key in ("wall_seconds", "peak_rss_bytes")
            },
        }
    suffix = "" if args.quantizer == DEFAULT_QUANTIZER else f"_{args.quantizer}"
    if args.layer is not None:
        out = RESULTS / f"big_layer{suffix}.json"
        atomic_write_text(out, json.dumps({"big_layer": record}, indent=2) + "\n")
    elif args.quick or suffix:
        out = RESULTS / f"big_checkpoint{'_quick' if args.quick else ''}{suffix}.json"
        atomic_write_text(out, json.dumps({"big_checkpoint": record}, indent=2) + "\n")
    else:
        out = RESULTS / "coding.json"
        existing = json.loads(out.read_text()) if out.is_file() else {}
        existing["big_checkpoint"] = record  # the coding benchmark owns the other keys
        atomic_write_text(out, json.dumps(existing, indent=2) + "\n")
    print()
    print("| deepzip | command | wall s | peak RSS MiB | peak RSS ÷ checkpoint |")
    print("|---|---|---|---|---|")
    rows = [("this", "compress", compress), ("this", "decompress", decompress)]
    if args.against is not None:
        rows += [("against", step, record["against"][step]) for step in ("compress", "decompress")]
    for who, label, step in rows:
        print(
            f"| {who} | {label} | {step['wall_seconds']:.1f} | "
            f"{step['peak_rss_bytes'] / 2**20:.0f} | {step['peak_rss_bytes'] / ckpt_bytes:.2f}× |"
        )
    print(f"(python with deepzip imported: {record['import_peak_rss_bytes'] / 2**20:.0f} MiB)")
    print()
    print(
        f"ratio {record['ratio']:.2f}x; peak RSS compress {compress['peak_over_checkpoint']:.2f}x, "
        f"decompress {decompress['peak_over_checkpoint']:.2f}x the checkpoint "
        f"(limit {PEAK_LIMIT}x); results -> {out}"
    )
    return 0 if record["within_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
