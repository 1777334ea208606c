"""Mutation fuzzing of the .dzip reader on realistic files, for as long as you like.

    .venv/bin/python tests/format/fuzz_dzip.py --seconds 600 [--seed N] [--out DIR]

The corpus is written by deepzip itself: a pruned and clustered network at several gap widths
with Huffman and with ANS streams, a pruned float network (sparse floats), and Weightless
networks whose Bloomier tables are packed or LZMA-compressed, and a network with one layer
registered under two names (tied tensors, stored as ALIAS entries). Each trial edits a few bytes of
one file's tensor regions (a random byte, a flipped bit, a run of 0x00 or 0xFF, a byte ±1),
recomputes every checksum so the edit reaches the parsers behind them, and reads the whole file
back (every tensor, and the compressed form of shared and Bloomier ones). A format error is the
expected outcome; any other exception is a finding, and the file that raised it is kept in
``--out``. Exits 1 when there was a finding. ``test_dzip_fuzz.py`` runs a fixed 600 trials
(``fuzz(0, min_trials=600)``: no time budget, so the same files on every machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from dzip_craft import FORMAT_ERRORS, fix_crcs, header, read_all  # this folder (sys.path[0])
from test_dzip_bloomier import filter_flags, small_net, weightless_net
from torch import nn

import deepzip as dz
from deepzip.config import PruneConfig, QuantizeConfig

_MAX_ELEMENTS = 1 << 16  # what a mutated file may make the reader allocate (the corpus is less)


@dataclass
class FuzzResult:
    """What a campaign did: trials, files the reader accepted, and each finding's file and
    traceback."""

    tried: int = 0
    accepted: int = 0
    findings: list[tuple[Path, str]] = field(default_factory=list)


def corpus(workdir: Path) -> dict[str, bytes]:
    """The files to mutate, by name (deterministic: fixed seeds)."""
    files: dict[str, bytes] = {}

    def keep(name: str, net: nn.Module, **save: object) -> None:
        path = workdir / name
        dz.save(net, path, **save)  # type: ignore[arg-type]
        files[name] = path.read_bytes()

    net = small_net(seed=1, inputs=60)
    dz.prune_(net, PruneConfig(sparsity=0.9))
    dz.quantize_(net, QuantizeConfig(bits=5))
    for coder in ("huffman", "ans"):
        for width in (3, 8, "auto"):
            keep(f"shared-{coder}-{width}.dzip", net, coder=coder, index_bits=width)
    net = small_net(seed=2, inputs=60)
    dz.prune_(net, PruneConfig(sparsity=0.7))
    keep("sparse-float.dzip", net)
    for lzma in (False, True):
        net = weightless_net(lzma=lzma, inputs=200)
        if filter_flags(net) != ([1, 0] if lzma else [0, 0]):
            raise RuntimeError(f"the corpus's Weightless file (lzma={lzma}) has the wrong tables")
        keep(f"weightless-{'lzma' if lzma else 'packed'}.dzip", net)
    torch.manual_seed(3)
    lin = nn.Linear(40, 40)
    tied = nn.Sequential(lin, nn.ReLU(), lin)  # one layer under two names: ALIAS entries
    dz.prune_(tied, PruneConfig(sparsity=0.8))
    dz.quantize_(tied, QuantizeConfig(bits=4))
    keep("tied.dzip", tied)
    return files


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    end = header(data)["directory_offset"]  # the tensor regions lie between header and directory
    mode = int(rng.integers(4))
    for _ in range(int(rng.integers(1, 5))):
        pos = int(rng.integers(72, end))
        if mode == 0:
            out[pos] = int(rng.integers(256))
        elif mode == 1:
            out[pos] ^= 1 << int(rng.integers(8))
        elif mode == 2:
            run = int(rng.integers(1, 9))
            out[pos : pos + run] = bytes([int(rng.choice([0, 255]))]) * len(out[pos : pos + run])
        else:
            out[pos] = (out[pos] + int(rng.choice([-1, 1]))) % 256
    return fix_crcs(bytes(out))


def fuzz(
    seconds: float, *, seed: int = 0, min_trials: int = 0, out: Path | None = None
) -> FuzzResult:
    """Mutate the corpus for ``seconds`` and at least ``min_trials`` trials (seeded: the same
    mutations in the same order); a finding's file is kept in ``out`` (made if needed), or in
    a new temporary folder."""
    result = FuzzResult()
    with tempfile.TemporaryDirectory(prefix="dzip-fuzz-") as tmp:
        workdir = Path(tmp)
        files = corpus(workdir)
        names = sorted(files)
        rng = np.random.default_rng(seed)
        target = workdir / "mutated.dzip"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or result.tried < min_trials:
            name = names[int(rng.integers(len(names)))]
            data = _mutate(files[name], rng)
            target.write_bytes(data)
            result.tried += 1
            try:
                read_all(target, max_elements=_MAX_ELEMENTS)
                result.accepted += 1
            except FORMAT_ERRORS:
                pass
            except Exception:  # a finding: anything but a format error
                if out is None:
                    out = Path(tempfile.mkdtemp(prefix="dzip-findings-"))
                out.mkdir(parents=True, exist_ok=True)
                kept = out / f"finding-{result.tried}-{name}"
                kept.write_bytes(data)
                result.findings.append((kept, traceback.format_exc()))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where findings are kept")
    args = parser.parse_args(argv)
    result = fuzz(args.seconds, seed=args.seed, out=args.out)
    print(
        f"{result.tried} mutated files read, {result.accepted} accepted, "
        f"{len(result.findings)} findings"
    )
    for path, trace in result.findings:
        print(f"finding: {path}\n{trace}")
    return 1 if result.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
