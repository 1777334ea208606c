"""Entropy coders on real and synthetic weight streams: bits per symbol and speed, with peers.

Streams (the ones a ``.dzip`` file stores for a pruned, weight-shared layer):

* **real**: the pruned LeNets that ``benchmarks/prune_lenet.py`` caches in
  ``benchmarks/results/cache/{lenet-300-100,lenet-5}-pruned.safetensors``, quantized here with
  ``deepzip.quantize_`` and the defaults (k-means, 8 bits conv / 5 bits fc, no fine-tuning:
  fine-tuning moves centroids, not indices). Per layer: the relative index's value stream
  (cluster indices plus filler entries, alphabet ``k + 1``) and its gap stream (5-bit gaps
  for fc, 8-bit for conv, alphabet ``2**width``); a dense layer has only its index stream.
  Missing cache files are reported (run ``prune_lenet.py`` first) and only the synthetic
  streams run; the JSON says so.
* **synthetic**: 10 million Laplace(0, 0.02) weights (seeded), 90% pruned by magnitude,
  k-means with 32 clusters (``deepzip.quantize.kmeans.kmeans_1d``) → index and gap streams; and
  the same 10 million weights quantized densely (k = 32, no pruning) → a 10-million-symbol
  index stream.

Per stream: zeroth-order entropy (bits/symbol), the serialised size of deepzip's Huffman and
ANS streams in bits/symbol (header, model and payload all counted), the coder ``auto``
picks, and the median of ``--repeats`` (>= 5) single-threaded runs of deepzip's Huffman and
ANS encode and decode over the whole stream (wall clock, and process CPU time since these
machines are shared).

Peers, in the same run, on the stream's first ``--peer-slice`` symbols (they are slow; the
slice is the whole stream when it is shorter): pure-Python ``dahuffman`` (payload
bits/symbol, encode and decode speed) and constriction's own Huffman coder
(``constriction.symbol.huffman``, one Python call per symbol). The comparison is on equal
inputs: deepzip's Huffman is timed again on that same slice (its own table built from the
slice, as the peers build theirs; ``*_peer_slice`` fields, ``--repeats`` runs) and every
speed ratio (``*_speedup_vs_*``) is deepzip's rate on the slice over the peer's rate on the
slice, with deepzip's payload bits/symbol on the slice beside the peers'. For a stream no
longer than the slice the whole-stream runs are the slice runs.

Targets checked: Huffman within 1 bit/symbol of entropy; ANS at most 1.01 × entropy on the
streams of at least 1 million symbols; Huffman decode at least 50 M symbols/s on one core.

    python benchmarks/coding.py            # full: 10 M synthetic weights (a few minutes)
    python benchmarks/coding.py --quick    # 1 M synthetic weights, 5 runs, smaller peer slice

Prints a Markdown table and updates ``benchmarks/results/coding.json`` atomically: the
``streams`` list and the ``streams_run`` summary are replaced, every other top-level key
(e.g. ``big_checkpoint`` from the container benchmark) is kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from torch import nn

# benchmarks/ is this script's directory, so its sibling is importable
from _cache import MISSING_HINT
from _peers import require_peers
from deepzip._atomic import atomic_write_text
from deepzip.coding import (
    Coder,
    decode_relative,
    decode_symbols,
    encode_relative,
    encode_symbols,
    entropy_bits,
)
from deepzip.config import QuantizeConfig
from deepzip.format import load_checkpoint
from deepzip.quantize import SharedTensor, export_shared, quantize_
from deepzip.quantize.kmeans import kmeans_1d
from deepzip.report import markdown_table
from deepzip.zoo import create_model

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "cache"
MODELS = ("lenet-300-100", "lenet-5")
BIG = 1_000_000  # streams at least this long carry the ANS <= 1.01 x entropy target
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# ----------------------------------------------------------------------------- streams


def layer_streams(prefix: str, name: str, shared: SharedTensor, conv: bool) -> list[dict[str, Any]]:
    """The index (and, when pruned, gap) streams one shared layer stores."""
    k = int(shared.codebook.numel())
    indices = shared.indices.numpy().reshape(-1)
    mask = shared.mask.numpy().reshape(-1)
    if mask.all():
        return [{"stream": f"{prefix}/{name} index", "symbols": indices, "alphabet": k}]
    width = 8 if conv else 5
    index = encode_relative(mask, indices[mask], width, filler=k)
    positions, values = decode_relative(index, mask.size, filler=k, what=name)
    assert np.array_equal(positions, np.flatnonzero(mask))
    assert np.array_equal(values, indices[mask])
    note = f"width {width}, {index.entries - int(mask.sum())} fillers"
    return [
        {"stream": f"{prefix}/{name} index", "symbols": index.values, "alphabet": k + 1},
        {
            "stream": f"{prefix}/{name} gaps",
            "symbols": index.gaps,
            "alphabet": 1 << width,
            "note": note,
        },
    ]


def real_streams() -> tuple[list[dict[str, Any]], list[str]]:
    """Streams of the quantized pruned LeNets, and the names of missing checkpoints."""
    streams: list[dict[str, Any]] = []
    missing: list[str] = []
    for model_name in MODELS:
        ckpt = CACHE / f"{model_name}-pruned.safetensors"
        if not ckpt.is_file():
            missing.append(str(ckpt.relative_to(RESULTS.parent.parent)))
            continue
        model = create_model(model_name)
        load_checkpoint(model, ckpt)
        quantize_(model, QuantizeConfig())
        for name, shared in export_shared(model).items():
            owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            streams += layer_streams(model_name, name, shared, isinstance(owner, _CONV))
    return streams, missing


def laplace(n: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    """``n`` float32 Laplace(0, scale) values by inverse CDF from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(torch.float32)


def synthetic_streams(n: int, seed: int) -> list[dict[str, Any]]:
    """90%-pruned k=32 index and gap streams, and a dense k=32 index stream, of n weights."""
    x = laplace(n, seed)
    keep = n // 10
    order = torch.argsort(x.abs(), descending=True, stable=True)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:keep]] = True
    sparse = kmeans_1d(x[mask], 32)
    indices = np.zeros(n, dtype=np.uint8)
    indices[mask.numpy()] = sparse.labels.numpy().astype(np.uint8)
    label = f"synthetic-{n // 1_000_000}M" if n >= 1_000_000 else f"synthetic-{n}"

    shared = SharedTensor(sparse.centroids, torch.from_numpy(indices), mask)
    streams = layer_streams(label, "90%-pruned k=32", shared, conv=False)
    dense = kmeans_1d(x, 32)
    streams.append(
        {
            "stream": f"{label}/dense k=32 index",
            "symbols": dense.labels.numpy().astype(np.uint8),
            "alphabet": 32,
        }
    )
    return streams


# ----------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float], list[float]]:
    """Run ``fn`` ``repeats`` times; (last result, wall seconds, CPU seconds)."""
    walls, cpus = [], []
    out = None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return out, walls, cpus


def msym(n: int, seconds: list[float]) -> float:
    """Millions of symbols per second at the median time."""
    return n / statistics.median(seconds) / 1e6


def peers(symbols: np.ndarray, alphabet: int, budget_s: float) -> dict[str, Any]:
    """dahuffman and constriction's Huffman on ``symbols`` (one run each, more if quick)."""
    import constriction
    from dahuffman import HuffmanCodec

    n = int(symbols.size)
    data = symbols.tolist()
    out: dict[str, Any] = {"peer_symbols": n}

    def rounds(fn: Callable[[], Any]) -> tuple[Any, list[float]]:
        times: list[float] = []
        res = None
        while len(times) < 5 and sum(times) < budget_s:
            t = time.perf_counter()
            res = fn()
            times.append(time.perf_counter() - t)
        return res, times

    def da_encode() -> tuple[Any, bytes]:
        codec = HuffmanCodec.from_data(data)
        return codec, codec.encode(data)

    (codec, blob), enc_t = rounds(da_encode)
    dec, dec_t = rounds(lambda: codec.decode(blob))
    assert list(dec) == data, "dahuffman round trip failed"
    out["dahuffman_bps"] = 8 * len(blob) / n
    out["dahuffman_encode_msym_s"] = msym(n, enc_t)
    out["dahuffman_decode_msym_s"] = msym(n, dec_t)

    counts = np.bincount(symbols, minlength=alphabet).astype(np.float64)
    huff = constriction.symbol.huffman

    def c_encode() -> np.ndarray:
        tree = huff.EncoderHuffmanTree(counts)
        enc = constriction.symbol.QueueEncoder()
        for s in data:
            enc.encode_symbol(s, tree)
        words, _bits = enc.get_compressed_and_bitrate()
        return np.asarray(words)

    words, cenc_t = rounds(c_encode)

    def c_decode() -> list[int]:
        tree = huff.DecoderHuffmanTree(counts)
        d = constriction.symbol.QueueDecoder(words)
        return [d.decode_symbol(tree) for _ in range(n)]

    cdec, cdec_t = rounds(c_decode)
    assert cdec == data, "constriction Huffman round trip failed"
    out["constriction_huffman_bps"] = 32 * words.size / n
    out["constriction_huffman_encode_msym_s"] = msym(n, cenc_t)
    out["constriction_huffman_decode_msym_s"] = msym(n, cdec_t)
    out["peer_runs"] = {
        "dahuffman_encode_s": enc_t,
        "dahuffman_decode_s": dec_t,
        "constriction_huffman_encode_s": cenc_t,
        "constriction_huffman_decode_s": cdec_t,
    }
    return out


def measure(spec: dict[str, Any], repeats: int, peer_slice: int, peer_budget: float) -> dict:
    """One stream's record."""
    symbols, alphabet = spec["symbols"], spec["alphabet"]
    n = int(symbols.size)
    rec: dict[str, Any] = {"stream": spec["stream"], "symbols": n, "alphabet": alphabet}
    if "note" in spec:
        rec["note"] = spec["note"]
    rec["entropy_bps"] = entropy_bits(symbols, alphabet) / n
    huff, he_w, he_c = timed(lambda: encode_symbols(symbols, alphabet, coder="huffman"), repeats)
    out, hd_w, hd_c = timed(lambda: decode_symbols(huff), repeats)
    assert np.array_equal(out, symbols), f"{spec['stream']}: Huffman round trip failed"
    ans, ae_w, ae_c = timed(lambda: encode_symbols(symbols, alphabet, coder="ans"), repeats)
    out, ad_w, ad_c = timed(lambda: decode_symbols(ans), repeats)
    assert np.array_equal(out, symbols), f"{spec['stream']}: ANS round trip failed"
    raw = encode_symbols(symbols, alphabet, coder="raw")
    auto = encode_symbols(symbols, alphabet)
    rec |= {
        "huffman_bps": 8 * huff.nbytes / n,
        "ans_bps": 8 * ans.nbytes / n,
        "huffman_payload_bps": 8 * len(huff.payload) / n,
        "ans_payload_bps": 8 * len(ans.payload) / n,
        "raw_bps": 8 * raw.nbytes / n,
        "auto_coder": Coder(auto.coder).name.lower(),
        "auto_bps": 8 * auto.nbytes / n,
        "huffman_model_bytes": len(huff.model),
        "ans_model_bytes": len(ans.model),
        "huffman_encode_msym_s": msym(n, he_w),
        "huffman_decode_msym_s": msym(n, hd_w),
        "huffman_encode_msym_s_cpu": msym(n, he_c),
        "huffman_decode_msym_s_cpu": msym(n, hd_c),
        "ans_encode_msym_s": msym(n, ae_w),
        "ans_decode_msym_s": msym(n, ad_w),
        "ans_encode_msym_s_cpu": msym(n, ae_c),
        "ans_decode_msym_s_cpu": msym(n, ad_c),
    }
    h = rec["entropy_bps"]
    rec["huffman_within_1_bit"] = rec["huffman_bps"] < h + 1
    rec["huffman_payload_within_1_bit"] = rec["huffman_payload_bps"] < h + 1
    rec["ans_over_entropy"] = rec["ans_bps"] / h if h > 0 else None
    head = symbols[:peer_slice]
    m = int(head.size)
    if m == n:  # the whole stream is the slice: the runs above are the slice's
        slice_huff, she_w, shd_w = huff, he_w, hd_w
    else:
        slice_huff, she_w, _ = timed(
            lambda: encode_symbols(head, alphabet, coder="huffman"), repeats
        )
        out, shd_w, _ = timed(lambda: decode_symbols(slice_huff), repeats)
        assert np.array_equal(out, head), f"{spec['stream']}: Huffman round trip failed (slice)"
    rec |= {
        "huffman_payload_bps_peer_slice": 8 * len(slice_huff.payload) / m,
        "huffman_encode_msym_s_peer_slice": msym(m, she_w),
        "huffman_decode_msym_s_peer_slice": msym(m, shd_w),
    }
    p = peers(head, alphabet, peer_budget)
    assert p["peer_symbols"] == m
    rec |= p
    # ratios on equal inputs: deepzip and the peer on the same first peer_symbols symbols
    dz_enc, dz_dec = (
        rec["huffman_encode_msym_s_peer_slice"],
        rec["huffman_decode_msym_s_peer_slice"],
    )
    rec["decode_speedup_vs_dahuffman"] = dz_dec / p["dahuffman_decode_msym_s"]
    rec["encode_speedup_vs_dahuffman"] = dz_enc / p["dahuffman_encode_msym_s"]
    rec["decode_speedup_vs_constriction_huffman"] = dz_dec / p["constriction_huffman_decode_msym_s"]
    rec["encode_speedup_vs_constriction_huffman"] = dz_enc / p["constriction_huffman_encode_msym_s"]
    rec["speedups_on"] = f"the first {m} symbols, deepzip and peer alike"
    rec["runs"] = {
        "huffman_encode_s": he_w,
        "huffman_decode_s": hd_w,
        "ans_encode_s": ae_w,
        "ans_decode_s": ad_w,
        "huffman_encode_s_peer_slice": she_w,
        "huffman_decode_s_peer_slice": shd_w,
    }
    return rec


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "constriction": version("constriction"),
        "dahuffman": version("dahuffman"),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 M synthetic weights, peers on 100 k")
    p.add_argument("--n", type=int, default=None, help="synthetic weights (default 10 M)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per coder (>= 5)")
    p.add_argument("--peer-slice", type=int, default=None, help="symbols given to the peers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "coding.json")
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be at least 5 (the medians are of >= 5 runs)")
    require_peers("benchmarks/coding.py", "dahuffman", "constriction")
    n = args.n or (1_000_000 if args.quick else 10_000_000)
    peer_slice = args.peer_slice or (100_000 if args.quick else 1_000_000)

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    load_start = os.getloadavg()

    t = time.perf_counter()  # first-call cost: numba compiles the kernels
    warm = np.arange(1000, dtype=np.uint8) % 7
    for coder in ("huffman", "ans", "raw"):
        decode_symbols(encode_symbols(warm, 7, coder=coder))  # type: ignore[arg-type]
    jit_s = time.perf_counter() - t

    specs, missing = real_streams()
    if missing:
        print(
            f"missing {', '.join(missing)}: {MISSING_HINT}; measuring "
            + ("the synthetic streams only" if not specs else "the other streams"),
            file=sys.stderr,
        )
    specs += synthetic_streams(n, args.seed)

    records = []
    for spec in specs:
        records.append(measure(spec, args.repeats, peer_slice, 2.0 if args.quick else 20.0))
        r = records[-1]
        print(
            f"{r['stream']}: H {r['entropy_bps']:.3f}  huffman {r['huffman_bps']:.3f}  "
            f"ans {r['ans_bps']:.3f}  decode {r['huffman_decode_msym_s']:.0f} M/s",
            file=sys.stderr,
        )

    big = [r for r in records if r["symbols"] >= BIG]
    targets = {
        "huffman_within_1_bit_of_entropy": all(r["huffman_within_1_bit"] for r in records),
        "huffman_over_1_bit_streams": [
            {
                "stream": r["stream"],
                "symbols": r["symbols"],
                "alphabet": r["alphabet"],
                "model_bytes": r["huffman_model_bytes"],
                "excess_bps": r["huffman_bps"] - r["entropy_bps"],
            }
            for r in records
            if not r["huffman_within_1_bit"]
        ],
        "huffman_payload_within_1_bit_of_entropy": all(
            r["huffman_payload_within_1_bit"] for r in records
        ),
        "ans_within_1pct_of_entropy_on_big_streams": bool(big)
        and all(r["ans_bps"] <= 1.01 * r["entropy_bps"] for r in big),
        "worst_ans_over_entropy_on_big_streams": max(
            (r["ans_over_entropy"] for r in big if r["ans_over_entropy"] is not None),
            default=None,
        ),
        "huffman_decode_at_least_50_msym_s_on_big_streams": bool(big)
        and all(r["huffman_decode_msym_s"] >= 50 for r in big),
        "slowest_huffman_decode_msym_s_on_big_streams": min(
            (r["huffman_decode_msym_s"] for r in big), default=None
        ),
        "big_stream_threshold_symbols": BIG,
        "note": (
            "huffman_bps and ans_bps count the whole serialised stream (header, model, "
            "payload); *_payload_bps the payload only. Peer bps are payload only (dahuffman "
            "and constriction store no table). Speeds: median wall clock of the runs, one "
            "thread; *_cpu: median process CPU time. huffman_*_msym_s are over the whole "
            "stream; the peers run on its first peer_symbols symbols, and every *_speedup_vs_* "
            "divides deepzip's rate on that same slice (huffman_*_msym_s_peer_slice) by the "
            "peer's."
        ),
    }
    run = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/coding.py" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "synthetic_weights": n,
        "repeats": args.repeats,
        "peer_slice": peer_slice,
        "real_streams": not missing,
        "missing_checkpoints": missing,
        "note": (
            "LeNet streams from the pruned checkpoints, quantized 8 bits conv / 5 bits fc"
            if not missing
            else f"no streams for {', '.join(missing)}: {MISSING_HINT}"
        ),
        "jit_first_call_s": jit_s,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "environment": environment(),
        "targets": targets,
    }

    existing: dict[str, Any] = {}
    if args.out.is_file():
        existing = json.loads(args.out.read_text())
    existing["streams"] = records
    existing["streams_run"] = run
    atomic_write_text(args.out, json.dumps(existing, indent=2) + "\n")

    headers = [
        "stream", "symbols", "entropy", "Huffman", "ANS", "auto", "Huff enc M/s",
        "Huff dec M/s", "ANS dec M/s", "peer slice", "Huff dec M/s (slice)", "dahuffman (slice)",
        "dahuffman dec M/s", "constr. Huff dec M/s", "dec vs dahuffman (slice)",
    ]  # fmt: skip
    rows = [
        [
            r["stream"],
            f"{r['symbols']:,}",
            f"{r['entropy_bps']:.3f}",
            f"{r['huffman_bps']:.3f}",
            f"{r['ans_bps']:.3f}",
            r["auto_coder"],
            f"{r['huffman_encode_msym_s']:.0f}",
            f"{r['huffman_decode_msym_s']:.0f}",
            f"{r['ans_decode_msym_s']:.0f}",
            f"{r['peer_symbols']:,}",
            f"{r['huffman_decode_msym_s_peer_slice']:.0f}",
            f"{r['dahuffman_bps']:.3f}",
            f"{r['dahuffman_decode_msym_s']:.2f}",
            f"{r['constriction_huffman_decode_msym_s']:.2f}",
            f"{r['decode_speedup_vs_dahuffman']:.0f}×",
        ]
        for r in records
    ]
    print(
        "Bits per symbol (deepzip's counting header and model) and speed, one thread. The "
        "peers run on each stream's first symbols ('peer slice'); the speed-up compares "
        "deepzip on that same slice.\n"
    )
    print(markdown_table(headers, rows))
    over = ", ".join(
        f"{o['stream']} ({o['symbols']} symbols, {o['model_bytes']}-byte model)"
        for o in targets["huffman_over_1_bit_streams"]
    )
    print(
        "Targets: Huffman within 1 bit of entropy, everything counted: "
        f"{targets['huffman_within_1_bit_of_entropy']}"
        + (f" (not for {over})" if over else "")
        + "; payload only: "
        f"{targets['huffman_payload_within_1_bit_of_entropy']}. ANS <= 1.01 x entropy on "
        f">= 1M-symbol streams: {targets['ans_within_1pct_of_entropy_on_big_streams']} "
        f"(worst {_fmt(targets['worst_ans_over_entropy_on_big_streams'], '.4f')}). Huffman "
        f"decode >= 50 M/s: {targets['huffman_decode_at_least_50_msym_s_on_big_streams']} "
        f"(slowest {_fmt(targets['slowest_huffman_decode_msym_s_on_big_streams'], '.0f')}). "
        f"First-call JIT: {jit_s:.1f} s."
    )
    if missing:
        print(f"Not measured ({', '.join(missing)} missing): {MISSING_HINT}.")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
