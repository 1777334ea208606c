"""Sizes only: Weightless against Deep Compression at its best gap width, on each LeNet's fc1.

No training, so it runs in seconds and needs no accuracy. For the largest layer of each pruned
LeNet (fc1 of the checkpoints ``benchmarks/prune_lenet.py`` leaves in
``benchmarks/results/cache``), clustered exactly as ``benchmarks/weightless.py`` clusters it
(k-means, linear initialisation, 2 bits), it measures:

- Deep Compression's region (codebook + relative sparse index + values, each stream in the
  smaller of Huffman and ANS) at every gap width from 1 to 16 bits; the smallest is the
  baseline, the paper's 5 bits is shown beside it;
- deepzip's dense index stream at that width's best layout, for reference;
- the Weightless region (filter header and table + codebook) for cell widths 3 to 9 with the
  filter's defaults (3 hashes, 1.23 cells per key, seed 0), and its false-positive rate.

``benchmarks/weightless.py`` and ``benchmarks/weightless_ceiling.py`` measured the accuracy of
the same filters; their committed JSON files compared against the 5-bit-gap region. This
script gives the ratios against the best gap width. The 5-bit region and the t = 4 filter
must equal the sizes in those files (the script checks this when they are present).

    python benchmarks/weightless_sizes.py

Writes benchmarks/results/weightless_sizes.json and prints a Markdown table per model.
"""

from __future__ import annotations

import json
import platform
import sys
from typing import Any

import torch

from deepzip._atomic import atomic_write_text
from deepzip.config import QuantizeConfig
from deepzip.quantize import export_shared, quantize_
from deepzip.report import markdown_table
from deepzip.weightless import decode_filter, encode_shared

# benchmarks/ is this script's directory, so its sibling is importable
from weightless import BITS, GAP_WIDTH, MODELS, RESULTS, _dc_bytes, _load

LAYER = "fc1"
CELL_BITS = range(3, 10)
HASHES, RATIO, SEED = 3, 1.23, 0  # the filter's defaults, weightless.py's seed


def _committed(name: str) -> dict[str, int]:
    """Sizes the accuracy benchmarks recorded for this fc1, to check against."""
    out: dict[str, int] = {}
    ceiling = RESULTS / (
        "weightless_ceiling.json" if name == "lenet-300-100" else f"weightless_ceiling_{name}.json"
    )
    if ceiling.is_file():
        data = json.loads(ceiling.read_text())
        out["dc_paper_gap_width"] = int(data["deep_compression_bytes"])
        for row in data["rows"]:
            if row["label"] == "Weightless 4" and not row["polished"]:
                seed0 = next(run for run in row["runs"] if run["seed"] == SEED)
                out["weightless_t4_seed0"] = int(seed0["bytes"])
                out["weightless_t4_seed0_false_positives"] = int(seed0["false_positives"])
    return out


def run_model(name: str) -> dict[str, Any]:
    model = _load(name, "pruned", False)
    param = f"{LAYER}.weight"
    bits = BITS[name][LAYER]
    quantize_(model, QuantizeConfig(bits=bits, include=(param,)))
    shared = export_shared(model)[param]
    weights = int(shared.mask.numel())
    keys = int(shared.mask.sum())
    original = 4 * weights
    dc = _dc_bytes(param, shared)
    codebook_bytes = 4 * int(shared.codebook.numel())
    filters = []
    for t in CELL_BITS:
        f = encode_shared(shared, t, hashes=HASHES, ratio=RATIO, seed=SEED, name=param)
        size = len(f.to_bytes()) + codebook_bytes
        decoded = decode_filter(f, shared.codebook, tuple(shared.indices.shape))
        fps = int(decoded.mask.sum()) - keys
        filters.append(
            {
                "cell_bits": t,
                "weightless_bytes": size,
                "weightless_ratio": original / size,
                "vs_deep_compression": dc["bytes"] / size,
                "vs_deep_compression_paper_gap_width": dc["paper_gap_width_bytes"] / size,
                "false_positives": fps,
                "false_positive_rate": fps / (weights - keys),
            }
        )
    checks = {}
    t4 = next(f for f in filters if f["cell_bits"] == 4)
    measured = {
        "dc_paper_gap_width": dc["paper_gap_width_bytes"],
        "weightless_t4_seed0": t4["weightless_bytes"],
        "weightless_t4_seed0_false_positives": t4["false_positives"],
    }
    for key, value in _committed(name).items():
        ours = measured[key]
        if ours != value:
            raise AssertionError(f"{name} {key}: {ours} B here, {value} B in the committed file")
        checks[key] = value
    return {
        "layer": param,
        "weights": weights,
        "kept": keys,
        "clusters": int(shared.codebook.numel()),
        "deep_compression": {
            "bytes": dc["bytes"],
            "ratio": original / dc["bytes"],
            "gap_width": dc["gap_width"],
            "bytes_by_gap_width": dc["bytes_by_gap_width"],
            "paper_gap_width": GAP_WIDTH,
            "paper_gap_width_bytes": dc["paper_gap_width_bytes"],
            "deepzip_best_bytes": dc["best_bytes"],
            "deepzip_best_encoding": dc["best_encoding"],
        },
        "weightless": filters,
        "matches_committed": checks,
    }


def _markdown(name: str, r: dict[str, Any]) -> str:
    dc = r["deep_compression"]
    rows = [
        [
            str(f["cell_bits"]),
            f"{f['weightless_bytes']:,} B",
            f"{f['weightless_ratio']:.1f}×",
            f"{100 * f['false_positive_rate']:.2f}%",
            f"{f['vs_deep_compression']:.2f}×",
            f"{f['vs_deep_compression_paper_gap_width']:.2f}×",
        ]
        for f in r["weightless"]
    ]
    head = (
        f"{name} {r['layer']}: {r['weights']:,} weights, {r['kept']:,} kept, "
        f"{r['clusters']} clusters. Deep Compression: {dc['bytes']:,} B at {dc['gap_width']}-bit "
        f"gaps ({dc['ratio']:.1f}×); {dc['paper_gap_width_bytes']:,} B at the paper's "
        f"{dc['paper_gap_width']} bits."
    )
    table = markdown_table(
        ["t", "Weightless", "ratio", "false positives", "÷ DC (best gaps)", "÷ DC (5-bit gaps)"],
        rows,
    )
    return head + "\n\n" + table


def main() -> int:
    results = {name: run_model(name) for name in MODELS}
    out = {
        "benchmark": "weightless_sizes",
        "dataset": "fashion-mnist",
        "filter": {"hashes": HASHES, "ratio": RATIO, "seed": SEED},
        "torch": torch.__version__,
        "machine": platform.machine(),
        "models": results,
    }
    path = RESULTS / "weightless_sizes.json"
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    for name, r in results.items():
        sys.stdout.write(_markdown(name, r) + "\n\n")
    sys.stdout.write(f"→ {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
