"""``deepzip compress``, ``decompress``, ``inspect`` and ``bench``: working on files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from rich.markup import escape
from rich.table import Table

from deepzip._atomic import atomic_write_text
from deepzip.cli._common import (
    _check_distinct,
    _check_output,
    _check_safetensors_output,
    _glob_number,
    _progress,
    _split_glob,
    console,
)
from deepzip.errors import ConfigError
from deepzip.format import inspect as inspect_dzip
from deepzip.format import to_safetensors
from deepzip.posttrain import DEFAULT_BITS, DEFAULT_QUANTIZER, compress_checkpoint
from deepzip.report import (
    compression_rich_table,
    compression_table,
)
from deepzip.zoo import create_model, model_names


def _parse_layer_bits(text: str) -> tuple[str, int]:
    pattern, value = _split_glob(text, "--layer-bits", "GLOB=BITS")
    return pattern, _glob_number(text, value, int, "--layer-bits")


def _layer_bits(texts: list[str]) -> dict[str, int]:
    """The ``--layer-bits`` flags in the order given: the last matching glob wins, so a glob
    given again moves to where it was given last (a plain ``dict`` would keep its first place
    and let a glob given between the two win)."""
    out: dict[str, int] = {}
    for text in texts:
        pattern, bits = _parse_layer_bits(text)
        out.pop(pattern, None)
        out[pattern] = bits
    return out


def _check_not_in_model_dir(source: str, path: str | None, flag: str) -> None:
    """Refuse an output that would replace a file of the model directory being compressed
    (one of its shards, its index)."""
    if path is None or not Path(source).is_dir():
        return
    p = Path(path)
    if (p.is_symlink() or p.exists()) and p.parent.resolve() == Path(source).resolve():
        raise ConfigError(
            f"{flag} {path}: a file of the model directory being compressed; give it another name"
        )


def _check_quantization_flags(args: argparse.Namespace) -> None:
    """Refuse a quantization flag that the others would make ``compress`` ignore: ``--bits``
    beside ``--levels`` or ``--step`` (which set the levels); beside ``--no-quantize`` any of
    them, or ``--quantizer``, ``--lambda`` and ``--layout`` when no ``--layer-bits`` quantizes
    a tensor; and ``--index-bits`` beside ``--layout dense`` when every tensor is quantized.
    """
    levels = [f"{flag} {value}" for flag, value in (("--levels", args.levels),
              ("--step", args.step)) if value is not None]  # fmt: skip
    if args.no_quantize:
        given = [f"--bits {args.bits}"] if args.bits is not None else []
        given += levels
        if not args.layer_bits:
            given += [f"{flag} {value}" for flag, value in (("--quantizer", args.quantizer),
                      ("--lambda", args.ecsq_lambda)) if value is not None]  # fmt: skip
            if args.layout != "auto":  # it chooses the index of a quantized tensor
                given.append(f"--layout {args.layout}")
        if given:
            raise ConfigError(
                f"--no-quantize keeps the values in float: {', '.join(given)} would be ignored "
                "(per-tensor --layer-bits still quantize the tensors they match)"
            )
    elif args.bits is not None and levels:
        raise ConfigError(f"{levels[0]} sets the levels: --bits {args.bits} would be ignored")
    if not args.no_quantize and args.layout == "dense" and args.index_bits != "auto":
        # every compressed tensor is quantized, and stored with a symbol per weight
        raise ConfigError(
            "--layout dense stores no relative index: "
            f"--index-bits {args.index_bits} would be ignored"
        )


def _zoo_model_of(source: str) -> dict[str, str]:
    """``{"deepzip.model": name}`` of a deepzip checkpoint (``deepzip train``, ``prune``...),
    so that ``deepzip bench`` knows the compressed file's architecture; ``{}`` otherwise (an
    unreadable file is reported by the compression itself)."""
    path = Path(source)
    if path.suffix.lower() != ".safetensors" or not os.path.isfile(path):  # (False on EACCES)
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # not ours to report: compress_checkpoint names it
        return {}
    name = meta.get("deepzip.model")
    return {"deepzip.model": name} if name in model_names() else {}


def _requantize(args: argparse.Namespace) -> bool:
    """Whether ``compress`` quantizes again the weight-shared tensors of a deepzip checkpoint
    (``deepzip quantize``): only when a quantization flag is given (``--bits``, ``--levels``,
    ``--step``, ``--quantizer``, ``--lambda`` or ``--no-quantize``); a ``--layer-bits`` glob
    re-quantizes the tensors it matches either way."""
    given = (args.bits, args.levels, args.step, args.quantizer, args.ecsq_lambda)
    return bool(args.no_quantize) or any(value is not None for value in given)


def _kept_codebooks(path: str) -> list[tuple[str, int]]:
    """``(name, levels)`` of the tensors a ``.dzip`` file written by ``compress`` stores with
    the codebook of the checkpoint they came from (its metadata report says so)."""
    from deepzip.format import DzipReader

    with DzipReader(path) as reader:
        meta = reader.metadata
    report = meta.get("report") if isinstance(meta, dict) else None
    layers = report.get("layers") if isinstance(report, dict) else None
    if not isinstance(layers, dict):
        return []
    return [
        (str(name), int(line["levels"]))
        for name, line in layers.items()
        if isinstance(line, dict) and line.get("codebook") == "checkpoint"
    ]


def cmd_compress(args: argparse.Namespace) -> int:
    """``deepzip compress``: post-training prune + quantize + code of any checkpoint.

    A checkpoint of ``deepzip train``, ``prune`` or ``quantize`` is read as the model it
    holds (its masks prune, its codebooks are kept unless a quantization flag is given; see
    :func:`deepzip.compress_checkpoint`), and the file keeps the checkpoint's zoo model name,
    so ``deepzip bench`` needs no ``--model``.
    """
    _check_output(args.output, "-o")
    _check_output(args.json, "--json")
    _check_distinct(args.output, "-o", args.json, "--json")
    _check_distinct(args.input, "the input", args.json, "--json")
    _check_not_in_model_dir(args.input, args.json, "--json")
    _check_quantization_flags(args)
    bits = None if args.no_quantize else DEFAULT_BITS if args.bits is None else args.bits
    with _progress(not args.no_progress) as progress:
        task = progress.add_task("compress", total=None)

        def on_tensor(name: str, index: int, total: int) -> None:
            progress.update(task, completed=index, total=total, description=name)

        report = compress_checkpoint(
            args.input,
            args.output,
            sparsity=args.sparsity,
            bits=bits,
            levels=args.levels,
            quantizer=DEFAULT_QUANTIZER if args.quantizer is None else args.quantizer,
            ecsq_lambda=0.0 if args.ecsq_lambda is None else args.ecsq_lambda,
            step=args.step,
            coder=args.coder,
            include=tuple(args.include),
            exclude=tuple(args.exclude),
            layer_bits=_layer_bits(args.layer_bits),
            index_bits=args.index_bits,
            layout=args.layout,
            requantize=_requantize(args),
            metadata=_zoo_model_of(args.input),
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
    for name, levels in _kept_codebooks(args.output):
        console.print(
            f"kept the checkpoint's codebook: {name} ({levels} levels; --bits, --levels, --step "
            "or --quantizer quantize it again)",
            style="dim",
            markup=False,
            soft_wrap=True,
        )
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
    _check_distinct(args.input, "the input", args.output, "-o")
    _check_safetensors_output(args.output, "-o")
    with _progress(not args.no_progress) as progress:
        task = progress.add_task("decompress", total=None)
        tensors = [0]  # the file's tensor count, from the callback

        def on_tensor(name: str, index: int, total: int) -> None:
            tensors[0] = total
            progress.update(task, completed=index, total=total, description=name)

        path = to_safetensors(args.input, args.output, progress=on_tensor)
        # called before each tensor: the bar is full only once the last one is written
        progress.update(task, completed=tensors[0], total=tensors[0], description="done")
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
        user = reader.metadata.get("user", {})  # strings to strings: the reader checked
    name = user.get("deepzip.model")
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
    try:
        example = torch.rand(args.batch, *shape)
    except (RuntimeError, TypeError, MemoryError) as exc:  # too large to allocate or to count
        reason = " ".join(str(exc).split())
        raise ConfigError(
            f"--batch {args.batch} --input-shape {args.input_shape}: cannot make an example "
            f"input of shape {(args.batch, *shape)} ({reason[:200]})"
        ) from exc
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
    if layers:
        console.print(table)
    else:  # an empty table would leave the reader guessing
        console.print(
            f"{args.input}: no quantized (weight-shared) layer, so no layer has a runtime form: "
            "pruned float weights and raw tensors run dense in both",
            markup=False,
            soft_wrap=True,
        )
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
