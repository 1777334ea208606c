"""Review 30: docs/format.md against the real writer and reader.

A small decoder written from the spec alone (stdlib, numpy and lzma; no deepzip code) reads
files that ``deepzip.save`` writes and must give exactly what ``deepzip.load_state_dict``
gives; a change of format that does not update the spec fails here. It covers the parts a
clean-room reading found hardest: the ANS payload (section 7), the Bloomier hashes and table
(6.5), the relative index with its fillers (8) and the float32-then-round rule (6). Then the
refusals the spec adds (unpaired surrogates in the metadata, bytes after an LZMA2 stream) and
a tolerance it states (a newer ``minor`` with known encodings).
"""

from __future__ import annotations

import bisect
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.quantize.shared import SharedTensor

# ------------------------------------------------------------------ the spec's decoder

_DTYPES = {1: "<f4", 2: "<f2", 3: "bf16", 4: "<f8"}  # the float ids encodings may use


def _varint(b: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = b[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


class _Bits:
    """MSB-first bit reader (section 7 and the streams.py docstring)."""

    def __init__(self, data: bytes) -> None:
        self.bits = np.unpackbits(np.frombuffer(data, np.uint8)).tolist()
        self.pos = 0

    def read(self, n: int) -> int:
        value = 0
        for bit in self.bits[self.pos : self.pos + n]:
            value = value << 1 | bit
        self.pos += n
        return value

    def gamma(self) -> int:
        zeros = 0
        while self.read(1) == 0:
            zeros += 1
        return (1 << zeros) | self.read(zeros)

    def padding_is_zero(self) -> bool:
        return len(self.bits) == (self.pos + 7) // 8 * 8 and not any(self.bits[self.pos :])


def _table(bits: _Bits) -> dict[int, int]:
    """The symbol table: {used symbol: value}."""
    sparse, vbits, n = bits.read(1), bits.read(5) + 1, bits.read(16) + 1
    if sparse:
        symbols, s = [], -1
        for _ in range(n):
            s += bits.gamma()
            symbols.append(s)
        return {sym: bits.read(vbits) for sym in symbols}
    values = [bits.read(vbits) for _ in range(n)]
    return {i: v for i, v in enumerate(values) if v}


def _ans(payload: bytes, weights: dict[int, int], precision: int, n: int) -> list[int]:
    """Section 7's ANS rules, word for word."""
    used = sorted(weights)
    scaled = [weights[s] << (24 - precision) for s in used]
    starts = [sum(scaled[:i]) for i in range(len(used))]
    words = list(struct.unpack(f"<{len(payload) // 4}I", payload))
    state = 0
    if words:
        state = words.pop()
        assert state != 0
        while state < 1 << 32 and words:
            state = state << 32 | words.pop()
    out = []
    for _ in range(n):
        q = state % (1 << 24)
        i = bisect.bisect_right(starts, q) - 1
        state = (state >> 24) * scaled[i] + q - starts[i]
        if state < 1 << 32 and words:
            state = state << 32 | words.pop()
        out.append(used[i])
    assert not words
    assert state == 0
    return out


def _ans_encode(symbols: list[int], weights: dict[int, int], precision: int) -> bytes:
    """Section 7's informative ANS writer."""
    used = sorted(weights)
    scaled = {s: weights[s] << (24 - precision) for s in used}
    start = {s: sum(scaled[u] for u in used if u < s) for s in used}
    state, words = 0, []
    for s in reversed(symbols):
        if state >> 40 >= scaled[s]:
            words.append(state & 0xFFFFFFFF)
            state >>= 32
        state = (state // scaled[s]) << 24 | (state % scaled[s] + start[s])
    while state:
        words.append(state & 0xFFFFFFFF)
        state >>= 32
    return struct.pack(f"<{len(words)}I", *words)


def _stream(part: bytes, coders: list[int]) -> tuple[int, list[int]]:
    """(alphabet, symbols) of one stream part; records its coder in ``coders``."""
    coder, pos = part[0], 1
    alphabet, pos = _varint(part, pos)
    n, pos = _varint(part, pos)
    model_len, pos = _varint(part, pos)
    payload_len, pos = _varint(part, pos)
    assert pos + model_len + payload_len == len(part)
    model, payload = part[pos : pos + model_len], part[pos + model_len :]
    coders.append(coder)
    if n == 0:
        return alphabet, []
    if coder == 0:
        bits = _Bits(payload)
        width = (alphabet - 1).bit_length()
        out = [bits.read(width) for _ in range(n)]
        assert bits.padding_is_zero()
        return alphabet, out
    bits = _Bits(model)
    precision = bits.read(5) if coder == 2 else 0
    table = _table(bits)
    assert bits.padding_is_zero()
    if coder == 2:
        if precision == 0:
            return alphabet, [next(iter(table))] * n
        out = _ans(payload, table, precision, n)
        assert _ans_encode(out, table, precision) == payload
        return alphabet, out
    if len(table) == 1:
        return alphabet, [next(iter(table))] * n
    codes, code, prev = {}, 0, None
    for sym, length in sorted(table.items(), key=lambda kv: (kv[1], kv[0])):
        if prev is not None:
            code = (code + 1) << (length - prev)
        codes[(length, code)] = sym
        prev = length
    bits, out = _Bits(payload), []
    for _ in range(n):
        code, length = 0, 0
        while (length, code) not in codes:
            code, length = code << 1 | bits.read(1), length + 1
        out.append(codes[(length, code)])
    assert bits.padding_is_zero()
    return alphabet, out


def _positions(gaps: list[int], width: int) -> np.ndarray:
    assert all(g < 1 << width for g in gaps)
    return np.cumsum(np.asarray(gaps, np.int64) + 1) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _bloomier(part: bytes, numel: int, k: int) -> np.ndarray:
    assert part[:3] == b"BF\x01"
    flags, t, h = part[3], part[4], part[5]
    (seed,) = struct.unpack_from("<Q", part, 6)
    n_positions, pos = _varint(part, 14)
    m, pos = _varint(part, pos)
    values, pos = _varint(part, pos)
    assert n_positions == numel
    assert values == k
    assert m % h == 0
    if flags & 1:
        payload_len, pos = _varint(part, pos)
        assert pos + payload_len == len(part)
        raw = lzma.decompress(
            part[pos:],
            format=lzma.FORMAT_RAW,
            filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 4 << 20}],
        )
        table = np.frombuffer(raw, "u1" if t <= 8 else "<u2").astype(np.uint64)
        assert table.size == m
    else:
        assert len(part) - pos == (m * t + 7) // 8
        bits = np.unpackbits(np.frombuffer(part[pos:], np.uint8), bitorder="little")
        assert not bits[m * t :].any()
        cells = bits[: m * t].reshape(m, t).astype(np.uint64)
        table = (cells << np.arange(t, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    gold = 0x9E3779B97F4A7C15
    with np.errstate(over="ignore"):
        seeds = [_mix(np.uint64((seed + (i + 1) * gold) % 2**64)) for i in range(h + 1)]
        x = np.arange(numel, dtype=np.uint64) * np.uint64(gold)
        seg = np.uint64(m // h)
        value = _mix(x + seeds[h]) >> np.uint64(64 - t)
        for i in range(h):
            cell = np.uint64(i) * seg + (
                ((_mix(x + seeds[i]) >> np.uint64(32)) * seg) >> np.uint64(32)
            )
            value ^= table[cell.astype(np.int64)]
    return value.astype(np.int64)


def _round(f32: np.ndarray, dtype_id: int) -> np.ndarray:
    """float32 to the entry's dtype, to nearest, ties to even (section 6); bf16 as its bits."""
    if dtype_id == 3:
        u = f32.view("<u4").astype(np.uint64)
        return ((u + 0x7FFF + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)).astype("<u2")
    return f32.astype(_DTYPES[dtype_id])


def spec_decode(
    path: Path,
) -> tuple[dict[str, tuple[int, tuple[int, ...], np.ndarray]], dict[str, Any]]:
    """{name: (dtype id, shape, values)} (bf16 as uint16 bits) and what was seen on the way."""
    data = path.read_bytes()
    assert data[:8] == b"\x89DZIP\r\n\x1a"
    assert zlib.crc32(data[:68]) == struct.unpack_from("<I", data, 68)[0]
    major, minor, _flags, size, d_off, d_len, m_off, m_len, count = struct.unpack_from(
        "<HHIQQQQQI", data, 8
    )
    assert (major, size, m_off, m_off + m_len) == (1, len(data), d_off + d_len, len(data))
    seen: dict[str, Any] = {"minor": minor, "encodings": [], "coders": [], "gap_widths": []}
    d, pos, region = data[d_off:m_off], 0, 72
    out: dict[str, tuple[int, tuple[int, ...], np.ndarray]] = {}
    names: list[str] = []
    for index in range(count):
        (n_len,) = struct.unpack_from("<H", d, pos)
        name = d[pos + 2 : pos + 2 + n_len].decode()
        pos += 2 + n_len
        enc, dt, rank, n_parts = d[pos : pos + 4]
        shape = struct.unpack_from(f"<{rank}Q", d, pos + 4)
        pos += 4 + 8 * rank
        offset, crc = struct.unpack_from("<QI", d, pos)
        p_len = d[pos + 12]
        params = d[pos + 13 : pos + 13 + p_len]
        pos += 13 + p_len
        lengths = struct.unpack_from(f"<{n_parts}Q", d, pos)
        pos += 8 * n_parts
        assert offset == region
        assert zlib.crc32(data[offset : offset + sum(lengths)]) == crc
        parts, at = [], offset
        for length in lengths:
            parts.append(data[at : at + length])
            at += length
        region = at
        numel = int(np.prod(shape, dtype=np.int64)) if rank else 1
        seen["encodings"].append(enc)
        names.append(name)
        if enc == 0:  # RAW: only the float dtypes in these tests
            out[name] = (dt, shape, np.frombuffer(parts[0], "<u2" if dt == 3 else _DTYPES[dt]))
            continue
        if enc == 5:  # ALIAS
            (target,) = struct.unpack("<I", params)
            assert target < index
            assert parts == [b""]
            assert crc == 0
            out[name] = out[names[target]]
            continue
        f32 = np.zeros(numel, "<f4")
        if enc == 3:  # SPARSE_FLOAT
            width, kept = struct.unpack("<BQ", params)
            seen["gap_widths"].append(width)
            alphabet, gaps = _stream(parts[0], seen["coders"])
            assert alphabet == 1 << width
            item = np.dtype("<u2" if dt == 3 else _DTYPES[dt])
            res = np.zeros(numel, item)
            res[_positions(gaps, width)] = np.frombuffer(parts[1], item)
            out[name] = (dt, shape, res)
            continue
        if enc == 2:
            k, width, kept = struct.unpack("<HBQ", params)
        else:
            k, kept = struct.unpack("<HQ", params)
        codebook = np.frombuffer(parts[0], "<f4")
        assert codebook.size == k
        if enc == 1:  # SHARED_DENSE
            alphabet, symbols = _stream(parts[1], seen["coders"])
            sym = np.asarray(symbols, np.int64)
            assert alphabet in (k, k + 1)
            assert sym.size == numel
            keep = sym < k
            f32[keep] = codebook[sym[keep]]
        elif enc == 2:  # SHARED_SPARSE
            seen["gap_widths"].append(width)
            a_gaps, gaps = _stream(parts[1], seen["coders"])
            a_values, values = _stream(parts[2], seen["coders"])
            assert (a_gaps, a_values, len(gaps)) == (1 << width, k + 1, len(values))
            where, vals = _positions(gaps, width), np.asarray(values, np.int64)
            real = vals < k
            f32[where[real]] = codebook[vals[real]]
            # section 8: exactly floor(d / 2^width) fillers of gap 2^width - 1 per survivor
            expected, prev = [], -1
            for q in where[real].tolist():
                skipped = q - prev - 1
                fillers = skipped >> width
                expected += [((1 << width) - 1, k)] * fillers + [(skipped - (fillers << width), -1)]
                prev = q
            assert [(g, v if v == k else -1) for g, v in zip(gaps, values, strict=True)] == expected
        else:  # BLOOMIER
            value = _bloomier(parts[1], numel, k)
            keep = value < k
            f32[keep] = codebook[value[keep]]
        assert int(keep.sum() if enc != 2 else real.sum()) == kept
        out[name] = (dt, shape, _round(f32, dt))
    assert pos == len(d)
    assert region == d_off
    return out, seen


def _same(path: Path) -> dict[str, Any]:
    """Decode ``path`` by the spec and compare with ``dz.load_state_dict``, bit for bit."""
    mine, seen = spec_decode(path)
    ref = dz.load_state_dict(path)
    assert list(mine) == list(ref)
    for name, tensor in ref.items():
        _, shape, values = mine[name]
        assert tuple(tensor.shape) == tuple(shape), name
        t = tensor.detach().contiguous()
        expected = (
            t.view(torch.int16).numpy().view("<u2") if t.dtype == torch.bfloat16 else t.numpy()
        )
        assert expected.reshape(-1).tobytes() == np.ascontiguousarray(values).tobytes(), name
    return seen


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(36, 10)


# ------------------------------------------------------------------ spec facts, pinned


@pytest.mark.parametrize("coder", ["ans", "huffman", "raw"])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_spec_decoder_reads_quantized_files(tmp_path: Path, coder: str, layout: str) -> None:
    torch.manual_seed(0)
    model = _Net()
    dz.prune_(model, dz.PruneConfig(sparsity=0.8))
    dz.quantize_(model, dz.QuantizeConfig(bits=3))
    path = tmp_path / "m.dzip"
    dz.save(model, path, coder=coder, layout=layout)
    seen = _same(path)
    assert {1: "dense", 2: "sparse"}[max(seen["encodings"])] == layout
    assert set(seen["coders"]) <= {"raw": {0}, "huffman": {0, 1}, "ans": {0, 2}}[coder]
    if coder == "ans":
        assert 2 in seen["coders"]


@pytest.mark.parametrize("width", [1, 2, 5, 16])
def test_spec_decoder_relative_index_fillers(tmp_path: Path, width: int) -> None:
    gen = torch.Generator().manual_seed(width)
    mask = torch.rand(40, 30, generator=gen) > 0.97
    mask[0, 0] = mask[-1, -1] = True
    shared = SharedTensor(
        torch.tensor([-1.5, 0.25, 3.0]),
        torch.randint(0, 3, (40, 30), generator=gen, dtype=torch.uint8),
        mask,
    )
    path = tmp_path / "s.dzip"
    for coder in ("huffman", "ans"):
        dz.save({"w": shared}, path, coder=coder, layout="sparse", index_bits=width)
        seen = _same(path)
        assert seen["encodings"] == [2]
        assert seen["gap_widths"] == [width]


def test_spec_decoder_sparse_float_and_alias(tmp_path: Path) -> None:
    torch.manual_seed(1)
    lin = nn.Linear(12, 12)
    model = nn.Sequential(lin, nn.ReLU(), lin)  # one module under two names: ALIAS, 1.2
    dz.prune_(model, dz.PruneConfig(sparsity=0.9))
    path = tmp_path / "t.dzip"
    dz.save(model, path, index_bits=2)
    seen = _same(path)
    assert seen["minor"] == 2
    assert sorted(seen["encodings"]) == [0, 3, 5, 5]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_spec_decoder_rounds_shared_values_from_float32(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    model = _Net().to(dtype)
    dz.quantize_(model, dz.QuantizeConfig(bits=4))
    path = tmp_path / "h.dzip"
    dz.save(model, path, coder="ans")
    seen = _same(path)
    assert 1 in seen["encodings"]


@pytest.mark.parametrize("use_lzma", [False, True])
@pytest.mark.parametrize(("cell_bits", "hashes"), [(5, 3), (10, 2)])
def test_spec_decoder_bloomier(tmp_path: Path, use_lzma: bool, cell_bits: int, hashes: int) -> None:
    torch.manual_seed(3)
    model = _Net()
    dz.prune_(model, dz.PruneConfig(sparsity=0.8))
    dz.quantize_(model, dz.QuantizeConfig(bits=3))
    config = dz.WeightlessConfig(cell_bits=cell_bits, hashes=hashes, lzma=use_lzma, seed=2**64 - 2)
    dz.weightless_(model, config)
    path = tmp_path / "b.dzip"
    dz.save(model, path)
    seen = _same(path)
    assert seen["minor"] == 1
    assert 4 in seen["encodings"]


# ------------------------------------------------------------------ refusals and tolerances


def _split(data: bytes) -> dict[str, Any]:
    """A file as its header fields, directory entries (parts included) and metadata."""
    minor, flags = struct.unpack_from("<HI", data, 10)
    d_off, d_len, m_off, m_len, count = struct.unpack_from("<QQQQI", data, 24)
    d, pos, entries = data[d_off : d_off + d_len], 0, []
    for _ in range(count):
        (n_len,) = struct.unpack_from("<H", d, pos)
        head = d[pos + 2 : pos + 6 + n_len]  # name, encoding, dtype, rank, part count
        rank, n_parts = head[-2], head[-1]
        shape = d[pos + 6 + n_len : pos + 6 + n_len + 8 * rank]
        pos += 6 + n_len + 8 * rank
        offset, _crc = struct.unpack_from("<QI", d, pos)
        params = d[pos + 12 : pos + 13 + d[pos + 12]]
        pos += 12 + len(params)
        lens = struct.unpack_from(f"<{n_parts}Q", d, pos)
        pos += 8 * n_parts
        parts, at = [], offset
        for length in lens:
            parts.append(data[at : at + length])
            at += length
        entries.append(
            {
                "head": n_len.to_bytes(2, "little") + head,
                "shape": shape,
                "params": params,
                "parts": parts,
            }
        )
    return {"minor": minor, "flags": flags, "entries": entries, "meta": data[m_off : m_off + m_len]}


def _join(f: dict[str, Any]) -> bytes:
    """The file :func:`_split` took apart, offsets, lengths and checksums redone."""
    regions, directory = b"", b""
    for e in f["entries"]:
        region = b"".join(e["parts"])
        directory += (
            e["head"] + e["shape"] + struct.pack("<QI", 72 + len(regions), zlib.crc32(region))
        )
        directory += e["params"] + struct.pack(f"<{len(e['parts'])}Q", *map(len, e["parts"]))
        regions += region
    d_off = 72 + len(regions)
    m_off = d_off + len(directory)
    header = b"\x89DZIP\r\n\x1a" + struct.pack(
        "<HHIQQQQQIII",
        1,
        f["minor"],
        f["flags"],
        m_off + len(f["meta"]),
        d_off,
        len(directory),
        m_off,
        len(f["meta"]),
        len(f["entries"]),
        zlib.crc32(directory),
        zlib.crc32(f["meta"]),
    )
    return header + struct.pack("<I", zlib.crc32(header)) + regions + directory + f["meta"]


def test_split_join_is_the_identity(tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = _Net()
    dz.prune_(model, dz.PruneConfig(sparsity=0.8))
    path = tmp_path / "i.dzip"
    dz.save(model, path, metadata={"k": "v"})
    data = path.read_bytes()
    assert _join(_split(data)) == data


def test_newer_minor_with_known_encodings_is_read(tmp_path: Path) -> None:
    path = tmp_path / "n.dzip"
    dz.save({"b": torch.tensor([1.0, -2.0])}, path)
    f = _split(path.read_bytes())
    f["minor"] = 7
    path.write_bytes(_join(f))
    assert torch.equal(dz.load_state_dict(path)["b"], torch.tensor([1.0, -2.0]))


def _with_metadata(path: Path, meta: bytes) -> None:
    dz.save({"b": torch.zeros(2)}, path)
    f = _split(path.read_bytes())
    f["meta"] = meta
    path.write_bytes(_join(f))


@pytest.mark.parametrize(
    "meta",
    [b'{"user":{"a":"\\ud800"}}', b'{"\\udfff":1}', b'{"r":[1,{"x":"a\\ud83d"}]}'],
)
def test_metadata_with_unpaired_surrogate_is_corrupt(tmp_path: Path, meta: bytes) -> None:
    # json.loads accepts the escape, but the string cannot be encoded as UTF-8 again: the
    # reader accepted it and deepzip.format.api.to_safetensors (`deepzip decompress`) then
    # crashed with UnicodeEncodeError
    path = tmp_path / "u.dzip"
    _with_metadata(path, meta)
    with pytest.raises(dz.CorruptFileError, match="unpaired surrogate"):
        dz.load_state_dict(path)


def test_metadata_with_paired_surrogate_escape_is_read(tmp_path: Path) -> None:
    from deepzip.format import DzipReader

    path = tmp_path / "p.dzip"
    _with_metadata(path, b'{"user":{"a":"\\ud83d\\ude00"}}')
    with DzipReader(path) as reader:
        assert reader.metadata["user"]["a"] == "\U0001f600"


def test_bloomier_lzma_bytes_after_end_marker_are_corrupt(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(40, 30))
    dz.prune_(model, dz.PruneConfig(sparsity=0.8))
    dz.quantize_(model, dz.QuantizeConfig(bits=3))
    dz.weightless_(model, dz.WeightlessConfig(cell_bits=6, lzma=True))
    path = tmp_path / "z.dzip"
    dz.save(model, path)
    f = _split(path.read_bytes())
    entry = next(e for e in f["entries"] if e["head"][-4] == 4)  # BLOOMIER
    part = entry["parts"][1]
    assert part[3] == 0  # writers compress only when it is smaller: a random table is not
    t = part[4]
    pos = 14
    for _ in range(2):  # n_positions, cells
        m, pos = _varint(part, pos)
    _, pos = _varint(part, pos)  # values
    bits = np.unpackbits(np.frombuffer(part[pos:], np.uint8), bitorder="little")[: m * t]
    cells = (bits.reshape(m, t).astype(np.uint16) << np.arange(t, dtype=np.uint16)).sum(axis=1)
    payload = lzma.compress(
        cells.astype(np.uint8).tobytes(),  # t <= 8: one byte per cell (section 6.5)
        format=lzma.FORMAT_RAW,
        filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 4 << 20}],
    )
    head = bytes([*part[:3], 1, *part[4:pos]])

    def varint(v: int) -> bytes:
        out = b""
        while v >= 0x80:
            out += bytes([v & 0x7F | 0x80])
            v >>= 7
        return out + bytes([v])

    original = dz.load_state_dict(path)["0.weight"]
    # the same table LZMA-compressed by the spec's rules reads back the same weights
    entry["parts"][1] = head + varint(len(payload)) + payload
    path.write_bytes(_join(f))
    assert torch.equal(dz.load_state_dict(path)["0.weight"], original)
    # one complete LZMA2 stream and nothing after it, even within payload_len
    entry["parts"][1] = head + varint(len(payload) + 4) + payload + b"JUNK"
    path.write_bytes(_join(f))
    with pytest.raises(dz.CorruptFileError, match=r"'0\.weight'.*LZMA"):
        dz.load_state_dict(path)
    # and no stream cut before its end marker
    entry["parts"][1] = head + varint(len(payload) - 1) + payload[:-1]
    path.write_bytes(_join(f))
    with pytest.raises(dz.CorruptFileError, match=r"'0\.weight'.*LZMA"):
        dz.load_state_dict(path)


def test_ans_model_padding_must_be_zero(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = _Net()
    dz.quantize_(model, dz.QuantizeConfig(bits=3))
    path = tmp_path / "a.dzip"
    dz.save(model, path, coder="ans", layout="dense")
    f = _split(path.read_bytes())
    entry = next(e for e in f["entries"] if e["head"][-4] == 1)
    stream = entry["parts"][1]
    assert stream[0] == 2  # ANS
    pos = 1
    for _ in range(2):
        _, pos = _varint(stream, pos)
    model_len, pos = _varint(stream, pos)
    _, pos = _varint(stream, pos)
    bits = _Bits(stream[pos : pos + model_len])
    bits.read(5)
    _table(bits)
    assert bits.padding_is_zero()
    if bits.pos % 8 == 0:
        pytest.skip("this model has no padding bits")
    last = pos + model_len - 1
    entry["parts"][1] = stream[:last] + bytes([stream[last] | 1]) + stream[last + 1 :]
    path.write_bytes(_join(f))
    with pytest.raises(dz.CorruptFileError, match="padding"):
        dz.load_state_dict(path)
