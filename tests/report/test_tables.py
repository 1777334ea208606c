"""The paper's per-layer table from a .dzip save report (hand-computed expectations)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from deepzip.errors import ConfigError
from deepzip.report.tables import (
    compression_markdown,
    compression_rich_table,
    compression_row,
    compression_table,
    stage_rows,
    stages_rich_table,
)


def _part(name: str, nbytes: int, coder: str | None = None, symbols: int | None = None,
          alphabet: int | None = None) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "bytes": nbytes, "coder": coder, "symbols": symbols, "alphabet": alphabet}


SPARSE = {
    "name": "fc1.weight", "encoding": "shared_sparse", "shape": [100, 40], "dtype": "float32",
    "weights": 4000, "kept": 190, "k": 32, "gap_width": 5,
    "parts": [
        _part("codebook", 128),
        _part("gaps", 80, "huffman", 200, 32),
        _part("values", 100, "ans", 200, 33),
    ],
}  # fmt: skip
DENSE = {
    "name": "fc2.weight", "encoding": "shared_dense", "shape": [10, 40], "dtype": "float32",
    "weights": 400, "kept": 400, "k": 16, "gap_width": None,
    "parts": [_part("codebook", 64), _part("symbols", 150, "huffman", 400, 16)],
}  # fmt: skip
SPARSE_FLOAT = {
    "name": "conv.weight", "encoding": "sparse_float", "shape": [8, 1, 5, 5], "dtype": "float32",
    "weights": 200, "kept": 50, "k": None, "gap_width": 8,
    "parts": [_part("gaps", 30, "huffman", 52, 256), _part("values", 208)],
}  # fmt: skip
BIAS = {
    "name": "fc1.bias", "encoding": "raw", "shape": [100], "dtype": "float32",
    "weights": 100, "kept": 100, "k": None, "gap_width": None, "parts": [_part("data", 400)],
}  # fmt: skip
SAVE = {
    "file_bytes": 2000, "float32_bytes": 4 * 4700, "overhead_bytes": 850,
    "tensors": [BIAS, SPARSE, DENSE, SPARSE_FLOAT],
}  # fmt: skip


def test_shared_sparse_row() -> None:
    r = compression_row(SPARSE)
    assert r.kept_fraction == pytest.approx(190 / 4000)
    assert r.entries == 200  # 190 survivors + 10 filler entries
    assert r.weight_bits_fixed == 6  # 33 symbols (32 clusters + the filler) need 6 bits
    assert r.weight_bits_coded == pytest.approx(4.0)  # 100 bytes / 200 entries
    assert r.index_bits_fixed == 5
    assert r.index_bits_coded == pytest.approx(3.2)  # 80 bytes / 200 gaps
    assert r.fixed_bytes == pytest.approx(200 * 11 / 8 + 128)
    assert r.coded_bytes == 308
    assert r.coded_fraction == pytest.approx(308 / 16000)
    assert r.coders == ("ans", "huffman")
    assert r.bits_per_kept == pytest.approx(308 * 8 / 190)


def test_other_encodings() -> None:
    d = compression_row(DENSE)
    assert (d.weight_bits_fixed, d.index_bits_fixed, d.index_bits_coded) == (4, None, None)
    assert d.weight_bits_coded == pytest.approx(3.0)
    assert d.fixed_bytes == pytest.approx(400 * 4 / 8 + 64)
    f = compression_row(SPARSE_FLOAT)
    assert (f.weight_bits_fixed, f.index_bits_fixed, f.entries) == (32, 8, 52)
    assert f.weight_bits_coded == pytest.approx(208 * 8 / 52)
    assert f.fixed_bytes == pytest.approx(52 * 40 / 8)
    b = compression_row(BIAS)
    assert (b.fixed_bytes, b.coded_bytes, b.weight_bits_coded) == (400, 400, 32)
    with pytest.raises(ConfigError, match=r"'fc1\.weight': incomplete shared_sparse record"):
        compression_row({**SPARSE, "parts": SPARSE["parts"][:2]})


def test_table_totals_and_ratio() -> None:
    t = compression_table(SAVE)
    assert [r.name for r in t.layers] == ["fc1.weight", "fc2.weight", "conv.weight"]
    assert t.others is not None
    assert t.others.name == "1 other tensor(s), raw"
    assert t.ratio == pytest.approx(18800 / 2000)
    assert t.weights == 4600
    assert t.kept == 190 + 400 + 50
    fixed = (200 * 11 / 8 + 128) + (400 * 4 / 8 + 64) + 52 * 40 / 8 + 400 + 850
    assert t.fixed_bytes == pytest.approx(fixed)
    assert t.fixed_ratio == pytest.approx(18800 / fixed)
    # entry-weighted mean over the layers that have the column
    assert t.mean_bits("weight_bits_fixed") == pytest.approx((200 * 6 + 400 * 4 + 52 * 32) / 652)
    assert t.mean_bits("index_bits_fixed") == pytest.approx((200 * 5 + 52 * 8) / 252)
    assert t.to_dict()["layers"][0]["entries"] == 200


def test_renderings() -> None:
    t = compression_table(SAVE)
    md = compression_markdown(t)
    assert md.splitlines()[0].startswith("| layer | weights | kept | weight bits (P+Q) |")
    row = "| fc1.weight | 4,000 | 4.75% | 6 | 4 | 5 | 3.2 | 2.52% | 1.93% | 13.0 | ans/huffman |"
    assert row in md  # 308 bytes for 190 survivors: 12.97 bits each
    assert "| header + directory + metadata |" in md
    assert "**10.64% (9.4×)**" in md  # the real file: 2000 / 18800 bytes
    assert "18,800 B float32 → 2,000 B .dzip on disk: 9.4×" in md
    console = Console(width=250, record=True)
    console.print(compression_rich_table(t, title="LeNet"))
    text = console.export_text()
    assert "LeNet" in text
    assert "conv.weight" in text


def test_stage_rows() -> None:
    records = [
        {"index": -1, "kind": "initial", "val_acc": 0.5, "test_acc": None, "kept": 1.0,
         "file_bytes": 5000, "ratio": 1.0, "seconds": 0.2},
        {"index": 0, "kind": "prune", "name": "p", "val_acc": 0.875, "test_acc": 0.8, "kept": 0.1,
         "file_bytes": 1000, "ratio": 5.04, "seconds": 12.4},
    ]  # fmt: skip
    assert stage_rows(records) == [
        ["start", "50.00%", "-", "100.00%", "5,000", "1.0×", "0 s"],
        ["1. prune (p)", "87.50%", "80.00%", "10.00%", "1,000", "5.0×", "12 s"],
    ]


# A Weightless layer as dz.save records it: 960 positions, 282 read as weights (192 stored,
# 90 false positives), 4 clusters, a 188-byte filter (270 cells of 5 bits + its header).
BLOOMIER = {
    "name": "1.weight", "encoding": "bloomier", "shape": [48, 20], "dtype": "float32",
    "weights": 960, "kept": 282, "k": 4, "gap_width": None,
    "parts": [_part("codebook", 16), _part("filter", 188)],
}  # fmt: skip


def test_bloomier_row() -> None:
    r = compression_row(BLOOMIER)
    assert (r.k, r.kept, r.entries) == (4, 282, 282)
    # the filter holds values and positions together: bits of the filter per kept weight,
    # with or without entropy coding (it has none), and no separate index
    assert r.weight_bits_fixed == pytest.approx(188 * 8 / 282)
    assert r.weight_bits_coded == pytest.approx(188 * 8 / 282)
    assert (r.index_bits_fixed, r.index_bits_coded, r.coders) == (None, None, ())
    assert r.fixed_bytes == r.coded_bytes == 204
    assert r.bits_per_kept == pytest.approx(204 * 8 / 282)
    t = compression_table({**SAVE, "tensors": [*SAVE["tensors"], BLOOMIER]})
    mean = (200 * 6 + 400 * 4 + 52 * 32 + 188 * 8) / (652 + 282)
    assert t.mean_bits("weight_bits_fixed") == pytest.approx(mean)
    with pytest.raises(ConfigError, match=r"'1\.weight': incomplete bloomier record"):
        compression_row({**BLOOMIER, "parts": BLOOMIER["parts"][:1]})


def test_user_text_is_not_rich_markup() -> None:
    records = [
        {"index": 0, "kind": "prune", "name": "p[/bold]", "val_acc": 0.5, "test_acc": None,
         "kept": 0.1, "file_bytes": 1000, "ratio": 5.0, "seconds": 1.0},
    ]  # fmt: skip
    layer = {**SPARSE, "name": "blocks[red].0.weight"}
    table = compression_table({**SAVE, "tensors": [layer]})
    console = Console(width=250, record=True)
    console.print(stages_rich_table(records, title="m[bold]x on [/]data"))
    console.print(compression_rich_table(table, title="model[fp16].dzip"))
    text = console.export_text()
    for written in ("1. prune (p[/bold])", "m[bold]x on [/]data", "blocks[red].0.weight",
                    "model[fp16].dzip"):  # fmt: skip
        assert written in text


def test_an_alias_gets_no_row_and_is_named_in_the_caption() -> None:
    # a tied name stored as an alias was a second layer row: the weights counted twice
    alias = {
        "name": "head.weight", "encoding": "alias", "shape": [100, 40], "dtype": "float32",
        "weights": 4000, "kept": 190, "k": None, "gap_width": None, "alias_of": "fc1.weight",
        "parts": [_part("alias", 0)],
    }  # fmt: skip
    t = compression_table({**SAVE, "tensors": [*SAVE["tensors"], alias]})
    assert [r.name for r in t.layers] == ["fc1.weight", "fc2.weight", "conv.weight"]
    assert t.weights == 4600
    assert t.aliases == (("head.weight", "fc1.weight"),)
    assert "tied names stored once: head.weight = fc1.weight" in compression_markdown(t)
    assert "tied names" not in compression_markdown(compression_table(SAVE))
