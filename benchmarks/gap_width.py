"""The relative index's gap width: the writer's automatic choice against fixed widths.

For each pruned, clustered tensor the region (codebook + relative index, each stream in the
smaller of Huffman and ANS, ``layout="sparse"``) is written

- at the paper's width (5 bits for fully connected layers, 8 for convolutions),
- at every width from 1 to 16 bits, whose smallest region is the best a fixed choice can do,
- with ``gap_width="auto"`` (deepzip's default): the widths are ranked by the estimated size of
  both streams and the best two encoded;

and the dense index stream (``layout="dense"``) is shown for reference. ``auto`` must equal the
exhaustive best. Its cost is timed against the paper's width: ``add_shared`` alone, the median
of ``--repeats`` interleaved runs, one thread.

Tensors: the layers of the pruned LeNets that ``benchmarks/prune_lenet.py`` caches in
``benchmarks/results/cache`` (clustered with k-means, linear initialisation, 5 bits for fully
connected layers and 8 for convolutions, as in the paper), and seeded synthetic 4096 x 4096
tensors (32 clusters, uniform indices) at several densities, with scattered or clustered kept
positions.

    python benchmarks/gap_width.py             # about a minute
    python benchmarks/gap_width.py --repeats 3

Writes benchmarks/results/gap_width.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# benchmarks/ is this script's directory, so its sibling is importable
from _cache import require_cached
from deepzip._atomic import atomic_write_text
from deepzip.config import QuantizeConfig
from deepzip.format import apply_checkpoint, read_checkpoint
from deepzip.format.api import CONV_GAP_WIDTH, FC_GAP_WIDTH
from deepzip.format.dzip_spec import MAX_GAP_WIDTH, MIN_GAP_WIDTH
from deepzip.format.dzip_writer import DzipWriter, GapWidth
from deepzip.quantize import export_shared, quantize_
from deepzip.quantize.shared import SharedTensor
from deepzip.report import markdown_table
from deepzip.zoo import create_model

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "cache"
MODELS = ("lenet-300-100", "lenet-5")
SIDE = 4096
DENSITIES = (0.005, 0.02, 0.1, 0.3)


def _lenet_tensors() -> list[tuple[str, SharedTensor, bool]]:
    out = []
    for name in MODELS:
        path = CACHE / f"{name}-pruned.safetensors"
        require_cached(path)
        model = create_model(name)
        apply_checkpoint(model, read_checkpoint(path), source=str(path))
        quantize_(model, QuantizeConfig(method="kmeans", init="linear"))  # 8 bits conv, 5 fc
        for param, shared in export_shared(model).items():
            out.append((f"{name} {param}", shared, shared.indices.dim() >= 3))
    return out


def _synthetic_tensors() -> list[tuple[str, SharedTensor, bool]]:
    rng = np.random.default_rng(0)
    out = []
    for density in DENSITIES:
        for clustered in (False, True):
            if clustered:  # runs of 16 kept weights
                mask = np.zeros(SIDE * SIDE, dtype=bool)
                for start in rng.integers(
                    0, SIDE * SIDE - 16, size=int(SIDE * SIDE * density / 16)
                ):
                    mask[start : start + 16] = True
            else:
                mask = rng.random(SIDE * SIDE) < density
            indices = rng.integers(0, 32, size=SIDE * SIDE).astype(np.uint8)
            shared = SharedTensor(
                torch.linspace(-1.0, 1.0, 32),
                torch.from_numpy(indices.reshape(SIDE, SIDE)),
                torch.from_numpy(mask.reshape(SIDE, SIDE)),
            )
            kind = "runs of 16" if clustered else "scattered"
            out.append((f"synthetic {SIDE}x{SIDE}, {100 * density:g}% kept, {kind}", shared, False))
    return out


def _write(w: DzipWriter, name: str, shared: SharedTensor, width: GapWidth, layout: str) -> Any:
    return w.add_shared(name, shared, gap_width=width, layout=layout)  # type: ignore[arg-type]


def measure(label: str, shared: SharedTensor, conv: bool, repeats: int) -> dict[str, Any]:
    paper = CONV_GAP_WIDTH if conv else FC_GAP_WIDTH
    with tempfile.TemporaryDirectory() as tmp, DzipWriter(Path(tmp) / "g.dzip") as w:
        fixed = {
            width: _write(w, f"f{width}", shared, width, "sparse").bytes
            for width in range(MIN_GAP_WIDTH, MAX_GAP_WIDTH + 1)
        }
        auto = _write(w, "auto", shared, "auto", "sparse")
        dense = _write(w, "dense", shared, "auto", "dense").bytes
        times: dict[str, list[float]] = {"paper": [], "auto": []}
        for i in range(repeats):  # interleaved, so drifting load hits both alike
            for key, width in (("paper", paper), ("auto", "auto")):
                start = time.perf_counter()
                _write(w, f"t{i}{key}", shared, width, "sparse")
                times[key].append(time.perf_counter() - start)
    best_width = min(fixed, key=lambda g: (fixed[g], g))
    paper_s, auto_s = statistics.median(times["paper"]), statistics.median(times["auto"])
    return {
        "tensor": label,
        "weights": int(shared.mask.numel()),
        "kept": int(shared.mask.sum()),
        "clusters": int(shared.codebook.numel()),
        "paper_width": paper,
        "paper_bytes": fixed[paper],
        "best_fixed_width": best_width,
        "best_fixed_bytes": fixed[best_width],
        "auto_width": auto.gap_width,
        "auto_bytes": auto.bytes,
        "auto_is_best": auto.bytes == fixed[best_width],
        "auto_vs_paper": fixed[paper] / auto.bytes,
        "dense_stream_bytes": dense,
        "bytes_by_width": {str(g): b for g, b in fixed.items()},
        "encode_seconds_paper": paper_s,
        "encode_seconds_auto": auto_s,
        "auto_time_ratio": auto_s / paper_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [
        measure(label, shared, conv, args.repeats)
        for label, shared, conv in [*_lenet_tensors(), *_synthetic_tensors()]
    ]
    out = {
        "benchmark": "gap_width",
        "repeats": args.repeats,
        "threads": 1,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "all_auto_best": all(r["auto_is_best"] for r in rows),
        "tensors": rows,
    }
    path = RESULTS / "gap_width.json"
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    table = markdown_table(
        [
            "tensor",
            "kept",
            "paper width",
            "auto width",
            "auto = best fixed",
            "paper / auto bytes",
            "dense stream",
            "encode time auto / paper",
        ],
        [
            [
                r["tensor"],
                f"{r['kept']:,} of {r['weights']:,}",
                f"{r['paper_width']}: {r['paper_bytes']:,} B",
                f"{r['auto_width']}: {r['auto_bytes']:,} B",
                "yes" if r["auto_is_best"] else f"no ({r['best_fixed_bytes']:,} B)",
                f"{r['auto_vs_paper']:.3f}×",
                f"{r['dense_stream_bytes']:,} B",
                f"{r['auto_time_ratio']:.2f}× ({1000 * r['encode_seconds_auto']:.0f} ms)",
            ]
            for r in rows
        ],
    )
    sys.stdout.write(table + f"\n→ {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
