"""Per-layer tables as rich renderables, Markdown and JSON (building only; the CLI prints).

Every text of a rich table (titles, layer, tensor and stage names) is plain text, never rich
markup: a name such as ``p[/bold]`` is shown as written.

:func:`compression_table` reads a ``.dzip`` file's save/inspect report into the layout of the
Deep Compression paper's Tables 2 and 3: weights, kept fraction, weight and index bits with
fixed-width codes (P+Q) and after entropy coding (P+Q+C), and the size as a fraction of
float32 after each; totals and the real file's ratio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.markup import escape
from rich.table import Table

from deepzip.errors import ConfigError
from deepzip.prune import PruneReport, StepRecord
from deepzip.quantize import QuantizeReport

__all__ = [
    "COMPRESSION_HEADERS",
    "STAGE_HEADERS",
    "CompressionRow",
    "CompressionTable",
    "compression_caption",
    "compression_markdown",
    "compression_rich_table",
    "compression_row",
    "compression_table",
    "compression_table_rows",
    "markdown_table",
    "prune_table",
    "prune_table_rows",
    "quantize_table",
    "stage_rows",
    "stages_rich_table",
    "steps_table",
]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def prune_table_rows(report: PruneReport) -> list[list[str]]:
    """Rows ``[layer, type, shape, weights, kept, kept %]`` plus a total row."""
    rows = [
        [
            r.name,
            r.layer_type,
            "×".join(str(d) for d in r.shape),
            f"{r.weights:,}",
            f"{r.kept:,}",
            _pct(r.kept_fraction),
        ]
        for r in report.layers
    ]
    rows.append(
        ["total", "", "", f"{report.weights:,}", f"{report.kept:,}", _pct(report.kept_fraction)]
    )
    return rows


_PRUNE_HEADERS = ["layer", "type", "shape", "weights", "kept", "kept %"]


def prune_table(
    report: PruneReport,
    *,
    acc_before: float | None = None,
    acc_after: float | None = None,
    title: str = "Pruning",
) -> Table:
    """A rich table of the per-layer report, with accuracy before → after in the caption.

    ``title`` is plain text (not rich markup), as every cell.
    """
    caption = None
    if acc_before is not None or acc_after is not None:
        caption = f"test accuracy: {_pct(acc_before)} before → {_pct(acc_after)} after"
        if acc_before is not None and acc_after is not None:
            caption += f" ({100 * (acc_after - acc_before):+.2f} points)"
    table = Table(title=escape(title), caption=caption)
    for h in _PRUNE_HEADERS:
        table.add_column(h, justify="left" if h in ("layer", "type", "shape") else "right")
    rows = prune_table_rows(report)
    for row in rows[:-1]:
        table.add_row(*map(escape, row))
    table.add_row(*map(escape, rows[-1]), style="bold")
    return table


def quantize_table(
    report: QuantizeReport,
    *,
    acc_before: float | None = None,
    acc_clustered: float | None = None,
    acc_finetuned: float | None = None,
    title: str = "Quantization",
) -> Table:
    """Per layer: bits, distinct values, weights kept; accuracy before → clustered → tuned.

    ``title`` is plain text (not rich markup), as every cell.
    """
    caption = (
        f"test accuracy: {_pct(acc_before)} before → {_pct(acc_clustered)} clustered → "
        f"{_pct(acc_finetuned)} after fine-tuning the centroids"
    )
    table = Table(title=escape(title), caption=caption)
    for h in ("layer", "type", "bits", "distinct values", "weights", "kept"):
        table.add_column(h, justify="left" if h in ("layer", "type") else "right")
    for layer in report.layers:
        table.add_row(
            escape(layer.name),
            escape(layer.layer_type),
            str(layer.bits),
            str(layer.levels),
            f"{layer.weights:,}",
            f"{layer.kept:,}",
        )
    return table


def steps_table(steps: Sequence[StepRecord]) -> Table:
    """One row per prune → retrain step with validation accuracy."""
    table = Table(title="Prune → retrain steps (validation accuracy)")
    for h in ("step", "progress", "kept %", "after prune", "after retrain"):
        table.add_column(h, justify="right")
    for s in steps:
        table.add_row(
            str(s.step + 1),
            f"{s.progress:.3f}",
            _pct(s.kept_fraction),
            _pct(s.accuracy_after_prune),
            _pct(s.accuracy_after_retrain),
        )
    return table


def _md_cell(text: object) -> str:
    """One cell's text as Markdown table content: ``\\`` and ``|`` escaped (a ``|`` would end
    the cell), each line break a space (it would end the row)."""
    cell = str(text).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(cell.splitlines())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table.

    Headers and cells are text: a ``|`` or ``\\`` in them is escaped and a line break becomes
    a space, so a name such as ``a|b`` stays in its cell; other Markdown (``**bold**``) is kept.
    """
    lines = [
        "| " + " | ".join(map(_md_cell, headers)) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------- the paper's Tables 2 and 3 (per layer)


@dataclass(frozen=True)
class CompressionRow:
    """One layer of the paper's per-layer table, from a ``.dzip`` file's save/inspect report.

    Bits are per stored entry. "Fixed" is what a fixed-width code needs (weight bits:
    ``ceil(log2(alphabet))``, the alphabet counting the sparse index's filler symbol; index
    bits: the gap width); "coded" is what the file's entropy-coded stream really takes, its
    code table included. Sizes are fractions of the layer's float32 size, counted as the
    ``.dzip`` report counts the model's: 4 bytes per floating-point element, an integer or bool
    element at its own size.

    A Bloomier (Weightless) layer stores no positions and no index stream: its filter answers
    for every position at once, and is not entropy coded (an LZMA-compressed table is counted
    as stored). Its entries are the positions that decode to a weight, false positives
    included, as the file counts them (it does not record how many were stored on purpose);
    its weight bits are the filter's bits per such entry in both columns (values and positions
    together). The filter spends about ``1.23 t`` bits per stored weight for cells of ``t``
    bits, so with many false positives this figure is far below that. It has no index bits,
    and its fixed size equals its size in the file (codebook + filter).

    Attributes:
        name: tensor name.
        encoding: the ``.dzip`` encoding (``shared_sparse``, ``shared_dense``, ``sparse_float``,
            ``bloomier``, ``raw``).
        weights: elements.
        kept: surviving elements.
        k: codebook entries (``None`` if not quantized).
        entries: stored entries: survivors plus the sparse index's filler entries, every
            element of a dense stream, or a Bloomier layer's kept weights.
        weight_bits_fixed: bits per stored weight with a fixed-width code (Bloomier: filter bits
            per kept weight).
        weight_bits_coded: bits per stored weight in the file (Bloomier: as the fixed one).
        index_bits_fixed: gap width of the relative index (``None`` without one).
        index_bits_coded: bits per gap in the file (``None`` without an index).
        coders: the coders of the layer's streams (``"huffman"``, ``"ans"``, ``"raw"``).
        fixed_bytes: bytes with fixed-width codes (pruning + quantization, no entropy coding).
        coded_bytes: bytes in the file.
        float32_bytes: the float32 size the fractions are of (``None``: 4 bytes per element).
    """

    name: str
    encoding: str
    weights: int
    kept: int
    k: int | None
    entries: int
    weight_bits_fixed: float
    weight_bits_coded: float
    index_bits_fixed: int | None
    index_bits_coded: float | None
    coders: tuple[str, ...]
    fixed_bytes: float
    coded_bytes: int
    float32_bytes: int | None = None

    @property
    def kept_fraction(self) -> float:
        """Surviving fraction."""
        return self.kept / self.weights if self.weights else 1.0

    @property
    def bits_per_kept(self) -> float:
        """Bits in the file per surviving weight (values, positions and codebook together)."""
        return 8.0 * self.coded_bytes / self.kept if self.kept else 0.0

    @property
    def _float32(self) -> int:
        return 4 * self.weights if self.float32_bytes is None else self.float32_bytes

    @property
    def fixed_fraction(self) -> float:
        """Size after pruning + quantization (fixed-width codes) / float32 size."""
        return self.fixed_bytes / self._float32 if self._float32 else 0.0

    @property
    def coded_fraction(self) -> float:
        """Size in the file / float32 size."""
        return self.coded_bytes / self._float32 if self._float32 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "encoding": self.encoding,
            "weights": self.weights,
            "kept": self.kept,
            "kept_fraction": self.kept_fraction,
            "k": self.k,
            "entries": self.entries,
            "weight_bits_fixed": self.weight_bits_fixed,
            "weight_bits_coded": self.weight_bits_coded,
            "index_bits_fixed": self.index_bits_fixed,
            "index_bits_coded": self.index_bits_coded,
            "coders": list(self.coders),
            "fixed_bytes": self.fixed_bytes,
            "coded_bytes": self.coded_bytes,
            "float32_bytes": self._float32,
            "fixed_fraction": self.fixed_fraction,
            "coded_fraction": self.coded_fraction,
            "bits_per_kept": self.bits_per_kept,
        }


@dataclass(frozen=True)
class CompressionTable:
    """The per-layer rows, the other tensors in one row, and the whole file.

    Attributes:
        layers: compressed tensors (pruned and/or quantized), file order.
        others: tensors stored raw (biases, normalisation statistics...), in one row.
        overhead_bytes: header, directory and metadata of the file.
        file_bytes: the real file size.
        float32_bytes: the model's float32 size: 4 bytes per floating-point element, an
            integer or bool element at its own size (a tied tensor once).
        aliases: ``(name, the name whose data it shares)`` for each tied name the file stores
            as an alias (no data, no row of its own).
    """

    layers: tuple[CompressionRow, ...]
    others: CompressionRow | None
    overhead_bytes: int
    file_bytes: int
    float32_bytes: int
    aliases: tuple[tuple[str, str], ...] = ()

    @property
    def ratio(self) -> float:
        """``float32_bytes / file_bytes``: the compression ratio."""
        return self.float32_bytes / self.file_bytes if self.file_bytes else 0.0

    @property
    def fixed_bytes(self) -> float:
        """The whole model with fixed-width codes (same overhead and raw tensors)."""
        rows = [*self.layers, *([self.others] if self.others else [])]
        return sum(r.fixed_bytes for r in rows) + self.overhead_bytes

    @property
    def fixed_ratio(self) -> float:
        """``float32_bytes / fixed_bytes``: the ratio before entropy coding."""
        return self.float32_bytes / self.fixed_bytes if self.fixed_bytes else 0.0

    @property
    def weights(self) -> int:
        """Elements of the compressed layers."""
        return sum(r.weights for r in self.layers)

    @property
    def kept(self) -> int:
        """Surviving elements of the compressed layers."""
        return sum(r.kept for r in self.layers)

    def mean_bits(self, attr: str) -> float | None:
        """Entry-weighted mean of a per-layer bits attribute over the layers that have it."""
        pairs = [(getattr(r, attr), r.entries) for r in self.layers if getattr(r, attr) is not None]
        total = sum(n for _, n in pairs)
        return sum(b * n for b, n in pairs) / total if total else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "layers": [r.to_dict() for r in self.layers],
            "others": None if self.others is None else self.others.to_dict(),
            "overhead_bytes": self.overhead_bytes,
            "file_bytes": self.file_bytes,
            "float32_bytes": self.float32_bytes,
            "fixed_bytes": self.fixed_bytes,
            "ratio": self.ratio,
            "fixed_ratio": self.fixed_ratio,
            "weights": self.weights,
            "kept": self.kept,
        }


def _fixed_bits(alphabet: int) -> int:
    return max(1, math.ceil(math.log2(alphabet))) if alphabet > 1 else 1


def _element_bits(dtype: object) -> tuple[int, int]:
    """``(bits of one element as stored, bytes of one element in the float32 size)`` of a
    dtype name (``"int64"``); an unknown name counts as float32."""
    found = getattr(torch, str(dtype), None)
    if not isinstance(found, torch.dtype):
        return 32, 4
    return 8 * found.itemsize, 4 if found.is_floating_point else found.itemsize


def compression_row(tensor: Mapping[str, Any]) -> CompressionRow:
    """A :class:`CompressionRow` from one tensor of ``SaveReport.to_dict()["tensors"]``.

    Raises:
        ConfigError: a tensor record without the expected parts.
    """
    name, encoding = str(tensor["name"]), str(tensor["encoding"])
    parts = {str(p["name"]): p for p in tensor["parts"]}
    weights, kept = int(tensor["weights"]), int(tensor["kept"])
    coded = int(sum(int(p["bytes"]) for p in tensor["parts"]))
    coders = tuple(sorted({str(p["coder"]) for p in tensor["parts"] if p.get("coder")}))
    dtype_bits, element_bytes = _element_bits(tensor.get("dtype"))
    float32 = element_bytes * weights
    try:
        if encoding == "shared_sparse":
            values, gaps, book = parts["values"], parts["gaps"], parts["codebook"]
            entries = int(values["symbols"])
            wbits = _fixed_bits(int(values["alphabet"]))
            width = int(tensor["gap_width"])
            return CompressionRow(
                name, encoding, weights, kept, int(tensor["k"]), entries, wbits,
                _per(values["bytes"], entries), width, _per(gaps["bytes"], int(gaps["symbols"])),
                coders, entries * (wbits + width) / 8 + int(book["bytes"]), coded, float32,
            )  # fmt: skip
        if encoding == "shared_dense":
            symbols, book = parts["symbols"], parts["codebook"]
            entries = int(symbols["symbols"])
            wbits = _fixed_bits(int(symbols["alphabet"]))
            return CompressionRow(
                name, encoding, weights, kept, int(tensor["k"]), entries, wbits,
                _per(symbols["bytes"], entries), None, None,
                coders, entries * wbits / 8 + int(book["bytes"]), coded, float32,
            )  # fmt: skip
        if encoding == "bloomier":
            _, filt = parts["codebook"], parts["filter"]  # both are required
            per_kept = _per(filt["bytes"], kept)  # values and positions together
            return CompressionRow(
                name, encoding, weights, kept, int(tensor["k"]), kept, per_kept, per_kept,
                None, None, coders, coded, coded, float32,
            )  # fmt: skip
        if encoding == "sparse_float":
            gaps, values = parts["gaps"], parts["values"]
            entries = int(gaps["symbols"])
            width = int(tensor["gap_width"])
            return CompressionRow(
                name, encoding, weights, kept, None, entries, dtype_bits,
                _per(values["bytes"], entries), width, _per(gaps["bytes"], entries),
                coders, entries * (dtype_bits + width) / 8, coded, float32,
            )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"tensor {name!r}: incomplete {encoding} record ({exc!r})") from exc
    return CompressionRow(
        name, encoding, weights, kept, None, weights, dtype_bits, _per(coded, weights),
        None, None, coders, coded, coded, float32,
    )  # fmt: skip


def _per(nbytes: object, count: int) -> float:
    return 8.0 * int(nbytes) / count if count else 0.0  # type: ignore[call-overload]


def compression_table(save: Mapping[str, Any]) -> CompressionTable:
    """The paper's per-layer table from ``SaveReport.to_dict()`` (or ``InspectReport``'s).

    Compressed tensors get a row each; raw tensors are summed into one "other" row. A tied
    name stored as an alias of another (``alias_of``) gets no row: its data is its target's.
    """
    aliases = tuple(
        (str(t["name"]), str(t["alias_of"])) for t in save["tensors"] if t.get("alias_of")
    )
    rows = [compression_row(t) for t in save["tensors"] if not t.get("alias_of")]
    layers = tuple(r for r in rows if r.encoding != "raw")
    raw = [r for r in rows if r.encoding == "raw"]
    others = None
    if raw:
        weights = sum(r.weights for r in raw)
        coded = sum(r.coded_bytes for r in raw)
        others = CompressionRow(
            f"{len(raw)} other tensor(s), raw", "raw", weights, sum(r.kept for r in raw), None,
            weights, _per(coded, weights), _per(coded, weights), None, None, (), coded, coded,
            sum(r._float32 for r in raw),
        )  # fmt: skip
    file_bytes = int(save["file_bytes"])
    float32 = int(save.get("float32_bytes", sum(4 * r.weights for r in rows)))
    overhead = int(save.get("overhead_bytes", file_bytes - sum(r.coded_bytes for r in rows)))
    return CompressionTable(layers, others, overhead, file_bytes, float32, aliases)


COMPRESSION_HEADERS = (
    "layer",
    "weights",
    "kept",
    "weight bits (P+Q)",
    "weight bits (P+Q+C)",
    "index bits (P+Q)",
    "index bits (P+Q+C)",
    "size (P+Q)",
    "size (P+Q+C)",
    "bits / kept weight",
    "coders",
)


def _bits(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.{digits}f}"


def _fraction(part: float, whole: float) -> float | None:
    """``part / whole``; ``None`` (shown as ``-``) for a file of no tensors (``whole`` 0)."""
    return part / whole if whole else None


def compression_table_rows(table: CompressionTable) -> list[list[str]]:
    """Rows of :data:`COMPRESSION_HEADERS`: layers, other tensors, overhead, total."""

    def row(r: CompressionRow) -> list[str]:
        return [
            r.name,
            f"{r.weights:,}",
            _pct(r.kept_fraction) if r.encoding != "raw" else "-",
            _bits(r.weight_bits_fixed),
            _bits(r.weight_bits_coded),
            _bits(r.index_bits_fixed),
            _bits(r.index_bits_coded),
            _pct(r.fixed_fraction),
            _pct(r.coded_fraction),
            _bits(r.bits_per_kept),
            "/".join(r.coders) or "-",
        ]

    rows = [row(r) for r in table.layers]
    if table.others is not None:
        rows.append(row(table.others))
    rows.append(
        ["header + directory + metadata", "", "", "", "", "", "", "",
         f"{table.overhead_bytes:,} B", "", ""]
    )  # fmt: skip
    # the total's kept % is over every weight the row counts: a raw tensor is stored whole
    total_weights = table.weights + (table.others.weights if table.others else 0)
    total_kept = table.kept + (table.others.kept if table.others else 0)
    rows.append(
        [
            "total",
            f"{total_weights:,}",
            _pct(total_kept / total_weights if total_weights else 1.0),
            _bits(table.mean_bits("weight_bits_fixed")),
            _bits(table.mean_bits("weight_bits_coded")),
            _bits(table.mean_bits("index_bits_fixed")),
            _bits(table.mean_bits("index_bits_coded")),
            f"{_pct(_fraction(table.fixed_bytes, table.float32_bytes))} ({table.fixed_ratio:.1f}×)",
            f"{_pct(_fraction(table.file_bytes, table.float32_bytes))} ({table.ratio:.1f}×)",
            _bits(8.0 * sum(r.coded_bytes for r in table.layers) / table.kept)
            if table.kept
            else "-",
            "",
        ]
    )
    return rows


def compression_caption(table: CompressionTable) -> str:
    """One line: real sizes and the ratio."""
    return (
        f"{table.float32_bytes:,} B float32 → {table.file_bytes:,} B .dzip on disk: "
        f"{table.ratio:.1f}× (P = pruning, Q = quantization, C = entropy coding; "
        "bits per stored entry, sizes as % of float32; bits / kept weight counts a layer's "
        "whole region)" + _aliases_note(table)
    )


def _aliases_note(table: CompressionTable) -> str:
    if not table.aliases:
        return ""
    shown = ", ".join(f"{a} = {t}" for a, t in table.aliases[:4])
    more = f" and {len(table.aliases) - 4} more" if len(table.aliases) > 4 else ""
    return f"; tied names stored once: {shown}{more}"


def compression_rich_table(
    table: CompressionTable, *, title: str = "Per-layer compression"
) -> Table:
    """The paper's Table 2/3 layout as a rich table (``title`` is plain text, not markup)."""
    out = Table(title=escape(title), caption=escape(compression_caption(table)))
    for h in COMPRESSION_HEADERS:
        out.add_column(h, justify="left" if h in ("layer", "coders") else "right")
    rows = compression_table_rows(table)
    for r in rows[:-1]:
        out.add_row(*map(escape, r))
    out.add_row(*map(escape, rows[-1]), style="bold")
    return out


def compression_markdown(table: CompressionTable) -> str:
    """The paper's Table 2/3 layout in Markdown, with the caption below."""
    rows = compression_table_rows(table)
    rows[-1] = [f"**{c}**" if c else c for c in rows[-1]]
    return markdown_table(COMPRESSION_HEADERS, rows) + "\n" + compression_caption(table) + "\n"


# ------------------------------------------------------------------------- stages of a run


STAGE_HEADERS = ("stage", "validation", "test", "kept", ".dzip bytes", "ratio", "time")


def stage_rows(records: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row per stage record (``StageRecord.to_dict()``), the starting point first."""
    rows = []
    for r in records:
        label = "start" if r["index"] < 0 else f"{r['index'] + 1}. {r['kind']}"
        if r.get("name"):
            label += f" ({r['name']})"
        rows.append(
            [
                label,
                _pct(r.get("val_acc")),
                _pct(r.get("test_acc")),
                _pct(r.get("kept")),
                f"{int(r['file_bytes']):,}",
                f"{float(r['ratio']):.1f}×",
                f"{float(r['seconds']):.0f} s",
            ]
        )
    return rows


def stages_rich_table(records: Sequence[Mapping[str, Any]], *, title: str = "Stages") -> Table:
    """Accuracy and real size after each stage (``title`` is plain text, not markup)."""
    out = Table(title=escape(title))
    for h in STAGE_HEADERS:
        out.add_column(h, justify="left" if h == "stage" else "right")
    for r in stage_rows(records):
        out.add_row(*map(escape, r))
    return out
