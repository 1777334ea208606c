"""How close can Weightless get to issue 7's target on the LeNets' fc1, on Fashion-MNIST?

The target: the largest layer at 1.5× or more of Deep Compression's ratio for that layer, with
the final accuracy at most 0.3 points below the dense model. ``benchmarks/weightless.py``
misses it; this study asks whether anything within the issue's terms (the same pruning and the
same 2-bit clustering for both methods) could reach it, on fc1 of LeNet-300-100 (235,200
weights) and, with ``--model lenet-5``, fc1 of LeNet-5 (400,000 weights, the largest layer of
either). Only fc1 is encoded; every other layer stays in float (pruned), which is the most
generous setting for the accuracy half: encoding them too can only cost more.

Every row starts from the pruned model of ``benchmarks/prune_lenet.py``, clusters fc1 with 2
bits (k-means, linear initialisation, as ``weightless.py``), installs fc1 as a given decoding
(codebook, indices, mask), and retrains exactly as ``weightless.py`` does: fc1's codebook and
bias and the other layers (masked), Adam lr 1e-3 with a cosine schedule, distilled from the
dense model (0.5, T 4), 20 epochs on LeNet-300-100 and 5 on LeNet-5. Each row is run with 3
seeds (the filter's seed and the retraining's seed); medians are reported. Rows:

- ``no false positives``: fc1's positions exact, as Deep Compression stores them. The ceiling
  of any encoding of this clustered layer under this retraining.
- ``Weightless t``: real Bloomier filters (``deepzip.weightless.encode_shared``), decoded
  with their false positives.
- ``occupied rows/cols, t``: the filter covers only the rows and columns of fc1 that keep a
  weight (a bitmap of each, counted in the size: 136 bytes on LeNet-300-100); the others decode
  to zero. Fewer non-keys, fewer false positives.
- ``per-row t``: one filter per group of rows sharing a cell width, the widths chosen to
  minimise the expected number of false positives within the bytes of ``Weightless 4``
  (occupied columns only; a 4-bit width per row is counted in the size).
- ``polished``: the pruned model first trains as many more distilled epochs, then the same as
  above.

Test accuracy is reported beside validation accuracy; nothing is chosen here.

    python benchmarks/weightless_ceiling.py        # LeNet-300-100, 10-13 minutes on 2 threads
    python benchmarks/weightless_ceiling.py --model lenet-5 --widths 4,5,6 --occupied-widths 4

Writes benchmarks/results/weightless_ceiling.json (weightless_ceiling_lenet-5.json) and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from deepzip._atomic import atomic_write_text
from deepzip.coding.bloomier import build_filter
from deepzip.config import QuantizeConfig
from deepzip.datasets import load_dataset
from deepzip.pipeline import accuracy_fn, make_loaders
from deepzip.quantize import export_shared, quantize_
from deepzip.quantize.shared import SharedTensor, attach_shared
from deepzip.report import markdown_table
from deepzip.weightless import encode_shared

# benchmarks/ is this script's directory, so its sibling is importable
from weightless import EPOCHS, MODELS, RESULTS, Trainer, _dc_bytes, _load

LAYER = "fc1.weight"
BITS = 2  # weightless.py's fc1 clustering, on both LeNets
SEEDS = (0, 1, 2)
HASHES, RATIO = 3, 1.23  # the filter's defaults
CODEBOOK_BYTES = 4 * (1 << BITS)

Decoding = tuple[SharedTensor, int, int]  # decoded fc1, encoded bytes, false positives


def _filter_over(
    shared: SharedTensor, rows: torch.Tensor, cols: torch.Tensor, t: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Encode the keys of the sub-matrix ``rows × cols`` in one filter and decode it back.

    Returns the decoded indices and mask over the whole matrix (zero outside the sub-matrix)
    and the filter's serialised size.
    """
    r_idx, c_idx = torch.nonzero(rows).flatten(), torch.nonzero(cols).flatten()
    sub_mask = shared.mask[r_idx][:, c_idx]
    if int(sub_mask.sum()) != int(shared.mask[r_idx].sum()):
        raise AssertionError("a kept weight lies outside the filter's columns")
    sub_idx = shared.indices[r_idx][:, c_idx].long()
    keys = np.flatnonzero(sub_mask.reshape(-1).numpy())
    values = sub_idx.reshape(-1).numpy()[keys]
    f = build_filter(
        keys,
        values,
        n_positions=int(sub_mask.numel()),
        num_values=1 << BITS,
        cell_bits=t,
        hashes=HASHES,
        ratio=RATIO,
        seed=seed,
        name=f"{LAYER} rows {int(r_idx[0])}..",
    )
    dec_idx, dec_mask = f.decode_indices()
    indices = torch.zeros_like(shared.indices)
    mask = torch.zeros_like(shared.mask)
    sub = (r_idx[:, None], c_idx[None, :])
    indices[sub] = torch.from_numpy(dec_idx.astype(np.uint8)).reshape(sub_mask.shape)
    mask[sub] = torch.from_numpy(dec_mask).reshape(sub_mask.shape)
    return indices, mask, len(f.to_bytes())


def _result(shared: SharedTensor, indices: torch.Tensor, mask: torch.Tensor, size: int) -> Decoding:
    if bool((shared.mask & ~mask).any()) or not bool(
        (indices[shared.mask] == shared.indices[shared.mask]).all()
    ):
        raise AssertionError("a key did not decode to its cluster index")
    fps = int((mask & ~shared.mask).sum())
    return SharedTensor(shared.codebook.clone(), indices, mask), size, fps


def exact(shared: SharedTensor, seed: int, dc_bytes: int) -> Decoding:
    return SharedTensor(shared.codebook.clone(), shared.indices, shared.mask), dc_bytes, 0


def uniform(t: int) -> Callable[[SharedTensor, int, int], Decoding]:
    def make(shared: SharedTensor, seed: int, dc_bytes: int) -> Decoding:
        f = encode_shared(shared, t, hashes=HASHES, ratio=RATIO, seed=seed, name=LAYER)
        idx, mask = f.decode_indices()
        return _result(
            shared,
            torch.from_numpy(idx.astype(np.uint8)).reshape(shared.mask.shape),
            torch.from_numpy(mask).reshape(shared.mask.shape),
            len(f.to_bytes()) + CODEBOOK_BYTES,
        )

    return make


def _bitmap_bytes(shared: SharedTensor) -> int:
    rows, cols = shared.mask.shape
    return math.ceil(rows / 8) + math.ceil(cols / 8)


def occupied(t: int) -> Callable[[SharedTensor, int, int], Decoding]:
    def make(shared: SharedTensor, seed: int, dc_bytes: int) -> Decoding:
        rows, cols = shared.mask.any(1), shared.mask.any(0)
        idx, mask, size = _filter_over(shared, rows, cols, t, seed)
        return _result(shared, idx, mask, size + _bitmap_bytes(shared) + CODEBOOK_BYTES)

    return make


def per_row_widths(shared: SharedTensor, budget_bits: float) -> torch.Tensor:
    """Cell width per row minimising the expected false positives within ``budget_bits``.

    Row ``r`` with ``n_r`` keys among ``N`` occupied columns costs about ``RATIO * n_r * t_r``
    bits and expects ``(N - n_r) * K / 2**t_r`` false positives; the Lagrangian optimum is
    ``2**-t_r ∝ n_r / (N - n_r)``, rounded, found by bisection on the multiplier.
    """
    n_r = shared.mask.sum(1).double()
    n_cols = float(shared.mask.any(0).sum())
    k = float(1 << BITS)

    def widths(kappa: float) -> torch.Tensor:
        t = torch.log2(k * (n_cols - n_r).clamp(min=1) / (kappa * n_r.clamp(min=1)))
        t = t.round().clamp(BITS, 15)
        t[n_r == 0] = 0
        return t.long()

    lo, hi = 1e-6, 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if float((RATIO * n_r * widths(mid)).sum()) > budget_bits:
            lo = mid
        else:
            hi = mid
    return widths(hi)


def per_row(budget_bytes: int) -> Callable[[SharedTensor, int, int], Decoding]:
    def build(
        shared: SharedTensor, widths: torch.Tensor, overhead: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        cols = shared.mask.any(0)
        indices = torch.zeros_like(shared.indices)
        mask = torch.zeros_like(shared.mask)
        size = overhead
        for t in sorted(set(widths.tolist()) - {0}):
            idx, m, b = _filter_over(shared, widths == t, cols, t, seed)
            indices |= idx
            mask |= m
            size += b
        return indices, mask, size

    def make(shared: SharedTensor, seed: int, dc_bytes: int) -> Decoding:
        overhead = math.ceil(shared.mask.shape[0] * 4 / 8) + _bitmap_bytes(shared)
        overhead += CODEBOOK_BYTES
        bits = 8.0 * (budget_bytes - overhead)
        for _ in range(32):  # each filter's header and spare cells come on top: shrink to fit
            indices, mask, size = build(shared, per_row_widths(shared, bits), overhead, seed)
            if size <= budget_bytes:
                return _result(shared, indices, mask, size)
            bits -= 8.0 * (size - budget_bytes)
        raise AssertionError(f"per-row widths did not fit in {budget_bytes} bytes")

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument("--widths", default="4,5,6,7,8", help="cell widths of the plain rows")
    parser.add_argument(
        "--occupied-widths", default="4,5,6", help="cell widths of the occupied-domain rows"
    )
    args = parser.parse_args(argv)
    seeds = tuple(range(args.seeds))
    model_name: str = args.model
    epochs = EPOCHS[model_name]
    widths = [int(w) for w in args.widths.split(",") if w]
    occupied_widths = [int(w) for w in args.occupied_widths.split(",") if w]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_dataset("fashion-mnist", args.data_dir, val_size=5000, seed=0)
    loaders = make_loaders(data, 1000)
    assert loaders.val is not None
    val_acc, test_acc = accuracy_fn(loaders.val), accuracy_fn(loaders.test)
    dense = _load(model_name, "dense", False)
    pruned = _load(model_name, "pruned", False)

    def retrain(model: nn.Module, seed: int) -> None:
        # a fresh trainer per run: every run sees the same batches for its seed
        Trainer(
            data, epochs=epochs, optimizer="adam", lr=1e-3, teacher=dense, distill=0.5, seed=seed
        )(model, LAYER)

    def clustered(model: nn.Module) -> SharedTensor:
        quantize_(model, QuantizeConfig(bits=BITS, include=(LAYER,)))
        return export_shared(model)[LAYER]

    reference = clustered(_load(model_name, "pruned", False))
    dc_bytes = _dc_bytes(LAYER, reference)["bytes"]
    t4_bytes = len(encode_shared(reference, 4, seed=0).to_bytes()) + CODEBOOK_BYTES
    plan: list[tuple[str, bool, Callable[[SharedTensor, int, int], Decoding]]] = [
        ("no false positives", False, exact),
        *[(f"Weightless {t}", False, uniform(t)) for t in widths],
        *[(f"occupied rows/cols, {t}", False, occupied(t)) for t in occupied_widths],
        ("per-row t (bytes of Weightless 4)", False, per_row(t4_bytes)),
        ("polished, no false positives", True, exact),
        ("polished, Weightless 4", True, uniform(4)),
    ]
    polished_start: dict[int, dict[str, torch.Tensor]] = {}
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for label, polished, make in plan:
        runs = []
        for s in seeds:
            if polished and s not in polished_start:
                start = _load(model_name, "pruned", False)
                retrain(start, s)
                polished_start[s] = start.state_dict()
            model = _load(model_name, "pruned", False)
            if polished:
                model.load_state_dict(polished_start[s])
            shared = clustered(model)
            decoded, size, fps = make(shared, s, dc_bytes)
            attach_shared(model.fc1, "weight", decoded)
            retrain(model, s)
            runs.append(
                {
                    "seed": s,
                    "bytes": size,
                    "false_positives": fps,
                    "val_acc": val_acc(model),
                    "test_acc": test_acc(model),
                }
            )
        size = int(statistics.median(r["bytes"] for r in runs))
        rows.append(
            {
                "label": label,
                "polished": polished,
                "bytes": size,
                "vs_deep_compression": dc_bytes / size,
                "false_positives": int(statistics.median(r["false_positives"] for r in runs)),
                "val_acc": statistics.median(r["val_acc"] for r in runs),
                "test_acc": statistics.median(r["test_acc"] for r in runs),
                "runs": runs,
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), flush=True)
    dense_acc, dense_val = test_acc(dense), val_acc(dense)
    floor = dense_acc - 0.003
    for r in rows:
        r["meets_size"] = r["vs_deep_compression"] >= 1.5
        r["meets_accuracy"] = r["test_acc"] >= floor - 1e-12
        r["meets_target"] = r["meets_size"] and r["meets_accuracy"]
    out = {
        "benchmark": "weightless_ceiling",
        "dataset": "fashion-mnist",
        "model": model_name,
        "layer": LAYER,
        "seeds": list(seeds),
        "torch": torch.__version__,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
        },
        "dense_acc": dense_acc,
        "dense_val_acc": dense_val,
        "pruned_acc": test_acc(pruned),
        "pruned_val_acc": val_acc(pruned),
        "deep_compression_bytes": dc_bytes,
        "accuracy_floor": floor,
        "retrain": {"epochs": epochs, "optimizer": "adam", "lr": 1e-3, "distill": 0.5},
        "rows": rows,
        "any_meets_target": any(r["meets_target"] for r in rows),
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"\n{model_name} {LAYER}: dense {100 * dense_acc:.2f}% (val {100 * dense_val:.2f}%), "
        f"pruned {100 * out['pruned_acc']:.2f}% (val {100 * out['pruned_val_acc']:.2f}%); "
        f"Deep Compression {dc_bytes:,} B; target: ≥ 1.5× and test ≥ {100 * floor:.2f}%"
    )
    print(
        markdown_table(
            ["fc1", "bytes", "× vs DC", "false positives", "val", "test", "size", "accuracy"],
            [
                [
                    r["label"],
                    f"{r['bytes']:,}",
                    f"{r['vs_deep_compression']:.2f}×",
                    f"{r['false_positives']:,}",
                    f"{100 * r['val_acc']:.2f}%",
                    f"{100 * r['test_acc']:.2f}%",
                    "yes" if r["meets_size"] else "no",
                    "yes" if r["meets_accuracy"] else "no",
                ]
                for r in rows
            ],
        )
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if model_name == MODELS[0] else f"_{model_name}"
    dest = RESULTS / f"weightless_ceiling{suffix}.json"
    atomic_write_text(dest, json.dumps(out, indent=2) + "\n")
    print(f"results → {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
