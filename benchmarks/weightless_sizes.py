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
  filter's defaults (3 hashes, 1.23 cells per key, seed 0), and its false-positive rate;
- a lower bound that holds for any filter, not only this one: returning each of the ``n`` kept
  weights' cluster exactly while reading all but a fraction ``eps`` of the zero positions as
  zero takes at least ``n * (H + log2(1/eps))`` bits (the approximate-membership bound plus the
  entropy ``H`` of the cluster indices), if the zero positions have no structure to use. From
  it: the smallest ``eps`` any filter can have at 1.5x Deep Compression's size, and the size of
  an optimal filter at each measured false-positive rate.

``benchmarks/weightless.py`` and ``benchmarks/weightless_ceiling.py`` measure the accuracy of
the same filters (after minutes of training per width). This script gives the ratios against
the best gap width (and the paper's 5 bits) in seconds. Its Deep Compression sizes and its
t = 4 filter (bytes and false positives) must equal those in the committed ``weightless.json``
and ``weightless_ceiling*.json`` (it checks this when they are present).

    python benchmarks/weightless_sizes.py

Writes benchmarks/results/weightless_sizes.json and prints a Markdown table per model.
"""

from __future__ import annotations

import json
import math
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
TARGET = 1.5  # the target: Weightless at 1.5x Deep Compression's ratio
CELL_BITS = range(3, 10)
HASHES, RATIO, SEED = 3, 1.23, 0  # the filter's defaults, weightless.py's seed


def _committed(name: str) -> dict[str, int]:
    """Sizes the accuracy benchmarks recorded for this fc1, to check against."""
    out: dict[str, int] = {}
    ceiling = RESULTS / (
        "weightless_ceiling.json" if name == "lenet-300-100" else f"weightless_ceiling_{name}.json"
    )
    main = RESULTS / "weightless.json"
    if main.is_file():
        fc1 = json.loads(main.read_text())["models"][name]["layers"][LAYER]
        out["dc_best_gap_width"] = int(fc1["deep_compression_bytes"])
        out["dc_paper_gap_width"] = int(fc1["deep_compression_bytes_paper_gap_width"])
        t4 = next(t for t in fc1["trials"] if t["cell_bits"] == 4)
        out["weightless_t4_filter"] = int(t4["filter_bytes"])
        out["weightless_t4_seed0_false_positives"] = int(t4["false_positives"])
    if ceiling.is_file():
        data = json.loads(ceiling.read_text())
        out["dc_best_gap_width"] = int(data["deep_compression_bytes"])
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
    counts = torch.bincount(shared.indices[shared.mask].long(), minlength=len(shared.codebook))
    p = counts[counts > 0].double() / keys
    entropy = float(-(p * p.log2()).sum())
    min_rate = 2.0 ** -(8 * dc["bytes"] / TARGET / keys - entropy)
    bound = {
        "value_entropy_bits": entropy,
        "target_vs_deep_compression": TARGET,
        "min_false_positive_rate_at_target": min_rate,
        "min_false_positives_at_target": round(min_rate * (weights - keys)),
        "optimal_filter_bytes_at_measured_rates": {
            str(f["cell_bits"]): keys * (entropy + math.log2(1 / f["false_positive_rate"])) / 8
            for f in filters
        },
    }
    checks = {}
    t4 = next(f for f in filters if f["cell_bits"] == 4)
    measured = {
        "dc_best_gap_width": dc["bytes"],
        "dc_paper_gap_width": dc["paper_gap_width_bytes"],
        "weightless_t4_filter": t4["weightless_bytes"] - codebook_bytes,
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
        "lower_bound": bound,
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
    optimal = r["lower_bound"]["optimal_filter_bytes_at_measured_rates"]
    for row, f in zip(rows, r["weightless"], strict=True):
        size = optimal[str(f["cell_bits"])]
        row.append(f"{size:,.0f} B ({dc['bytes'] / size:.2f}×)")
    table = markdown_table(
        [
            "t",
            "Weightless",
            "ratio",
            "false positives",
            "÷ DC (best gaps)",
            "÷ DC (5-bit gaps)",
            "optimal filter at that rate (÷ DC)",
        ],
        rows,
    )
    b = r["lower_bound"]
    tail = (
        f"Any filter at {b['target_vs_deep_compression']}× Deep Compression: at least "
        f"{100 * b['min_false_positive_rate_at_target']:.1f}% false positives "
        f"({b['min_false_positives_at_target']:,}); cluster-index entropy "
        f"{b['value_entropy_bits']:.3f} bits."
    )
    return head + "\n\n" + table + "\n\n" + tail


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
