"""Bloomier filter: a lossy map from a tensor's flat positions to small integers (Weightless).

Reagen et al. (ICML 2018) store a pruned, clustered layer as a Bloomier filter instead of a
sparse index. The filter is a table of ``m`` cells of ``t`` bits. A position ``x`` is hashed to
``k`` cells, one in each of ``k`` equal segments of the table, and to a ``t``-bit mask; the
filter's value at ``x`` is the XOR of those ``k`` cells and the mask. For a stored position (a
*key*: a surviving weight) that value is its cluster index, exactly. For any other position the
value is a uniformly random ``t``-bit number, because the mask hash is independent of the
table: it reads as a cluster index (a *false positive*) when it is below the number of clusters
``K``, and as a zero weight otherwise. The false-positive rate over the non-keys is therefore
``K / 2**t`` (``2**(r - t)`` for ``K = 2**r`` clusters). No position is stored at all.

Construction peels the hypergraph whose vertices are cells and whose edges are the keys' ``k``
cells: repeatedly take every key that has a cell no other remaining key touches (that cell is
the key's own), remove those keys, and go on until no key remains. Values are then assigned in
reverse peeling order: each key sets its own cell so that its XOR comes out right; no key peeled
before it (assigned after it) touches that cell, so the assignment is never undone. Peeling
succeeds with high probability when ``m >= 1.23 n`` for ``k = 3``; when it fails the filter is
rebuilt with the next seed, a bounded number of times. Cells that no key owns are zero.

Hashes are explicit 64-bit integer arithmetic (splitmix64) in numpy ``uint64`` with
wrap-around, so encoding and decoding give the same result on every machine. Lookup is
vectorised over all positions of a layer.

The serialised form (see ``docs/format.md``) holds ``t``, ``k``, ``m``, the seed, the number of
positions and of values, and the table bit-packed, optionally compressed with LZMA.
"""

from __future__ import annotations

import lzma
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from deepzip.coding import varint
from deepzip.config import BLOOMIER_RATIO
from deepzip.errors import BloomierBuildError, ConfigError, CorruptFileError, InvalidTensorError

__all__ = [
    "DEFAULT_HASHES",
    "DEFAULT_RATIO",
    "MAX_CELL_BITS",
    "MAX_HASHES",
    "MAX_RATIO",
    "SLACK_CELLS",
    "BloomierFilter",
    "build_filter",
    "cell_count",
    "expected_false_positive_rate",
    "hash_positions",
]

DEFAULT_HASHES = 3
"""Hash functions (cells per position); 3 needs the fewest cells per key."""
DEFAULT_RATIO = BLOOMIER_RATIO[DEFAULT_HASHES]
"""Cells per key for ``k = 3``: 1.23, just above the peeling threshold 1.222 (plus
``SLACK_CELLS``). Every ``k`` has its own default, :data:`deepzip.config.BLOOMIER_RATIO`."""
SLACK_CELLS = 32
"""Cells added to ``ratio * n`` so that small filters peel reliably too."""
MAX_CELL_BITS = 16
MAX_HASHES = 8
MAX_RATIO = 16.0
MAX_POSITIONS = 1 << 40
"""Largest number of positions (weights) one filter may cover."""
MAX_TABLE_BYTES = 1 << 31
"""Largest unpacked table a reader accepts (2 GiB)."""

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_MAGIC = b"BF"
_VERSION = 1
_FLAG_LZMA = 0x01
_HEADER = struct.Struct("<2sBBBBQ")  # magic, version, flags, t, k, seed
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 22}]
_LZMA_MAX_EXPANSION = 64  # a legitimate table is near-random: LZMA cannot shrink it this much
_CHUNK = 1 << 20  # positions hashed, or cells unpacked, per step (bounds the temporaries)

_U64 = npt.NDArray[np.uint64]
_I64 = npt.NDArray[np.int64]
_Cells = npt.NDArray[np.unsignedinteger[Any]]
"""A table: ``uint8`` cells when ``t <= 8``, else ``uint16`` (see :func:`_cell_dtype`)."""


def _cell_dtype(cell_bits: int) -> type[np.uint8] | type[np.uint16]:
    """The narrowest dtype that holds a ``cell_bits``-bit cell."""
    return np.uint8 if cell_bits <= 8 else np.uint16


def _splitmix64(x: int) -> int:
    """The splitmix64 finaliser on a Python int (mod 2**64)."""
    z = x & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix(z: _U64) -> _U64:
    """The splitmix64 finaliser on a ``uint64`` array (wrapping arithmetic), in place."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def _derived_seeds(seed: int, k: int) -> list[int]:
    """Seeds of the ``k`` cell hashes and (last) the mask hash, derived from one 64-bit seed."""
    return [_splitmix64(seed + (i + 1) * _GOLDEN) for i in range(k + 1)]


def hash_positions(
    positions: npt.NDArray[np.integer], *, seed: int, hashes: int, cells: int, cell_bits: int
) -> tuple[_I64, npt.NDArray[np.uint32]]:
    """The ``k`` cells and the mask of each position.

    Position ``x`` is hashed with ``h_i = splitmix64(x * 0x9E3779B97F4A7C15 + s_i)`` (64-bit
    wrap-around), where ``s_0..s_k`` are derived from ``seed``. Cell ``i`` lies in segment ``i``
    of the table: ``i * L + ((h_i >> 32) * L >> 32)`` with ``L = cells / hashes``; the mask is
    the top ``cell_bits`` bits of ``h_k``.

    Args:
        positions: 1-D non-negative integers.
        seed: the filter's 64-bit seed.
        hashes: ``k``.
        cells: ``m``, a multiple of ``k``.
        cell_bits: ``t``.

    Returns:
        ``(cells, mask)``: ``int64`` of shape ``(n, k)`` and ``uint32`` of shape ``(n,)``.
    """
    seg = cells // hashes
    seeds = _derived_seeds(seed, hashes)
    x = np.asarray(positions).astype(np.uint64) * np.uint64(_GOLDEN)
    out = np.empty((x.shape[0], hashes), dtype=np.int64)
    seg64 = np.uint64(seg)
    for i in range(hashes):
        h = _mix(x + np.uint64(seeds[i]))
        out[:, i] = ((h >> np.uint64(32)) * seg64 >> np.uint64(32)).astype(np.int64) + i * seg
    m = _mix(x + np.uint64(seeds[hashes])) >> np.uint64(64 - cell_bits)
    return out, m.astype(np.uint32)


def cell_count(n_keys: int, *, hashes: int = DEFAULT_HASHES, ratio: float | None = None) -> int:
    """Cells ``m`` for ``n_keys`` keys: ``ceil(ratio * n + 32)``, rounded up to a multiple of k.

    ``ratio=None`` is ``k``'s default (:data:`deepzip.config.BLOOMIER_RATIO`).
    """
    if ratio is None:
        ratio = BLOOMIER_RATIO[hashes]
    raw = math.ceil(ratio * n_keys + SLACK_CELLS)
    return hashes * max(1, -(-raw // hashes))


def expected_false_positive_rate(num_values: int, cell_bits: int) -> float:
    """``K / 2**t``: the probability that a non-key decodes as one of ``K`` values."""
    return num_values / float(1 << cell_bits)


def _check_params(num_values: int, cell_bits: int, hashes: int, where: str) -> None:
    for key, value, lo, hi in (
        ("cell_bits", cell_bits, 1, MAX_CELL_BITS),
        ("hashes", hashes, 1, MAX_HASHES),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{where}: {key} must be an integer from {lo} to {hi}, got {value!r}")
    if (
        isinstance(num_values, bool)
        or not isinstance(num_values, int)
        or not 1 <= num_values <= 1 << cell_bits
    ):
        raise ConfigError(
            f"{where}: num_values must be an integer from 1 to 2**cell_bits = {1 << cell_bits}, "
            f"got {num_values!r}"
        )


@dataclass(frozen=True, eq=False)
class BloomierFilter:
    """A built filter: look positions up, serialise it.

    Attributes:
        n_positions: size of the position domain (the layer's number of weights).
        num_values: ``K``; a filter value ``>= K`` means "no key here" (a zero weight).
        cell_bits: ``t``, bits per cell (1..16).
        hashes: ``k``, cells per position.
        seed: the 64-bit seed the hashes were derived from.
        table: the ``m`` cells, read-only, in the narrowest dtype: ``uint8`` when ``t <= 8``,
            else ``uint16``.
        attempts: how many seeds construction tried (1 when the first one peeled); not stored.
    """

    n_positions: int
    num_values: int
    cell_bits: int
    hashes: int
    seed: int
    table: _Cells
    attempts: int = field(default=1, compare=False)

    @property
    def cells(self) -> int:
        """``m``, the number of cells."""
        return int(self.table.shape[0])

    @property
    def table_bits(self) -> int:
        """``m * t``: the size of the table in bits."""
        return self.cells * self.cell_bits

    @property
    def expected_false_positive_rate(self) -> float:
        """``K / 2**t``."""
        return expected_false_positive_rate(self.num_values, self.cell_bits)

    def lookup(self, positions: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
        """The raw filter value (``0 .. 2**t - 1``) at each position (any shape).

        Raises:
            InvalidTensorError: a position outside ``[0, n_positions)``.
        """
        pos = np.asarray(positions)
        if pos.dtype.kind not in "iu":
            raise InvalidTensorError(f"positions must be integers, got dtype {pos.dtype}")
        flat = pos.reshape(-1)
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= self.n_positions):
            raise InvalidTensorError(
                f"positions must lie in [0, {self.n_positions}), got range "
                f"[{int(flat.min())}, {int(flat.max())}]"
            )
        out = np.empty(flat.shape[0], dtype=np.int64)
        for start in range(0, flat.shape[0], _CHUNK):
            block = flat[start : start + _CHUNK]
            out[start : start + block.shape[0]] = self._values(block)
        return out.reshape(pos.shape)

    def _values(self, positions: npt.NDArray[np.integer]) -> _I64:
        """The values at a block of valid positions (memory proportional to the block only)."""
        cells, mask = hash_positions(
            positions,
            seed=self.seed,
            hashes=self.hashes,
            cells=self.cells,
            cell_bits=self.cell_bits,
        )
        acc = mask.astype(np.int64)
        for i in range(self.hashes):
            acc ^= self.table[cells[:, i]]  # gathered in the table's dtype: no copy of the table
        return acc

    def decode_blocks(self, block: int = _CHUNK) -> Iterator[tuple[int, npt.NDArray[np.int64]]]:
        """``(start, values)`` for consecutive blocks of positions, in order (bounded memory)."""
        for start in range(0, self.n_positions, block):
            stop = min(start + block, self.n_positions)
            yield start, self._values(np.arange(start, stop, dtype=np.int64))

    def decode_all(self) -> npt.NDArray[np.int64]:
        """The raw value at every position ``0 .. n_positions - 1`` (``int64``)."""
        return self.lookup(np.arange(self.n_positions, dtype=np.int64))

    def decode_indices(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """``(indices, mask)`` over all positions: ``mask = value < K``, indices 0 where not."""
        values = self.decode_all()
        mask = values < self.num_values
        return np.where(mask, values, 0), mask

    def decodes_to(self, mask: npt.ArrayLike, indices: npt.ArrayLike) -> bool:
        """Whether the filter decodes to exactly ``mask`` (kept positions, flat C order) and,
        there, ``indices``: checked block by block (bounded memory)."""
        want_mask = np.asarray(mask, dtype=np.bool_).reshape(-1)
        want_indices = np.asarray(indices).reshape(-1)
        if want_mask.size != self.n_positions or want_indices.size != self.n_positions:
            return False
        for start, values in self.decode_blocks():
            kept = values < self.num_values
            stop = start + values.size
            if not np.array_equal(kept, want_mask[start:stop]) or not np.array_equal(
                values[kept], want_indices[start:stop][kept]
            ):
                return False
        return True

    # ------------------------------------------------------------------ serialisation

    def to_bytes(self, *, compress: bool = False) -> bytes:
        """The serialised filter (layout in ``docs/format.md``).

        Args:
            compress: compress the table with LZMA (raw LZMA2 stream, fixed settings) over one
                byte per cell (``t <= 8``) or two little-endian bytes (``t > 8``); kept only if
                smaller than the bit-packed table, so the flag in the header says which.
        """
        packed = _pack(self.table, self.cell_bits)
        flags = 0
        payload = packed
        if compress:
            squeezed = lzma.compress(
                _cell_bytes(self.table, self.cell_bits),
                format=lzma.FORMAT_RAW,
                filters=_LZMA_FILTERS,
            )
            if len(squeezed) + varint.encoded_len(len(squeezed)) < len(packed):
                flags, payload = _FLAG_LZMA, squeezed
        head = _HEADER.pack(_MAGIC, _VERSION, flags, self.cell_bits, self.hashes, self.seed)
        parts = [
            head,
            varint.encode(self.n_positions),
            varint.encode(self.cells),
            varint.encode(self.num_values),
        ]
        if flags & _FLAG_LZMA:
            parts.append(varint.encode(len(payload)))
        parts.append(payload)
        return b"".join(parts)

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        name: str = "Bloomier filter",
        n_positions: int | None = None,
    ) -> BloomierFilter:
        """Parse a serialised filter, treating ``data`` as hostile.

        Every field is checked before anything is allocated: magic, version, flags, ``t``,
        ``k``, ``K``, ``m`` (a multiple of ``k``, bounded by the number of positions), the
        payload length, trailing bytes, zero padding bits; an LZMA payload must decompress to
        exactly the table's size and may not expand more than 64-fold.

        Args:
            data: the bytes written by :meth:`to_bytes`.
            name: what the error messages call the filter (e.g. the tensor's name).
            n_positions: when given, the number of positions the filter must cover.

        Raises:
            CorruptFileError: anything malformed, naming ``name`` and the bad value.
        """
        buf = memoryview(bytes(data))
        if len(buf) < _HEADER.size:
            raise CorruptFileError(f"{name}: {len(buf)} bytes is shorter than the filter header")
        magic, version, flags, t, k, seed = _HEADER.unpack_from(buf, 0)
        if magic != _MAGIC:
            raise CorruptFileError(f"{name}: bad magic {bytes(magic)!r}, expected {_MAGIC!r}")
        if version != _VERSION:
            raise CorruptFileError(f"{name}: unknown filter version {version}")
        if flags & ~_FLAG_LZMA:
            raise CorruptFileError(f"{name}: unknown flag bits 0x{flags:02x}")
        if not 1 <= t <= MAX_CELL_BITS:
            raise CorruptFileError(f"{name}: cell width t = {t} is outside 1..{MAX_CELL_BITS}")
        if not 1 <= k <= MAX_HASHES:
            raise CorruptFileError(f"{name}: hash count k = {k} is outside 1..{MAX_HASHES}")
        pos = _HEADER.size
        n_pos, pos = varint.read(buf, pos, name, "n_positions")
        m, pos = varint.read(buf, pos, name, "cells")
        num_values, pos = varint.read(buf, pos, name, "num_values")
        if n_pos > MAX_POSITIONS:
            raise CorruptFileError(f"{name}: n_positions = {n_pos} exceeds {MAX_POSITIONS}")
        if n_positions is not None and n_pos != n_positions:
            raise CorruptFileError(
                f"{name}: the filter covers {n_pos} positions, the tensor has {n_positions}"
            )
        if not 1 <= num_values <= 1 << t:
            raise CorruptFileError(
                f"{name}: num_values = {num_values} is outside 1..2**t = {1 << t}"
            )
        max_cells = cell_count(n_pos, hashes=k, ratio=MAX_RATIO)
        if m < k or m % k or m > max_cells or m // k >= 1 << 32:
            raise CorruptFileError(
                f"{name}: cells m = {m} must be a positive multiple of k = {k} and at most "
                f"{max_cells} for {n_pos} positions"
            )
        packed_len = -(-m * t // 8)
        unpacked_len = m * (1 if t <= 8 else 2)
        if unpacked_len > MAX_TABLE_BYTES:
            raise CorruptFileError(f"{name}: a table of {m} cells exceeds {MAX_TABLE_BYTES} bytes")
        if flags & _FLAG_LZMA:
            payload_len, pos = varint.read(buf, pos, name, "payload length")
            if payload_len != len(buf) - pos:
                raise CorruptFileError(
                    f"{name}: LZMA payload length {payload_len} but {len(buf) - pos} bytes follow"
                )
            if unpacked_len > _LZMA_MAX_EXPANSION * payload_len + 4096:
                raise CorruptFileError(
                    f"{name}: {payload_len} LZMA bytes claim to expand to {unpacked_len}"
                )
            raw = _lzma_decode(bytes(buf[pos:]), unpacked_len, name)
            table = _from_cell_bytes(raw, m, t, name)
        else:
            if len(buf) - pos != packed_len:
                raise CorruptFileError(
                    f"{name}: the table of {m} cells × {t} bits needs {packed_len} bytes, "
                    f"{len(buf) - pos} follow"
                )
            table = _unpack(np.frombuffer(buf[pos:], dtype=np.uint8), m, t, name)
        table.setflags(write=False)
        return cls(int(n_pos), int(num_values), int(t), int(k), int(seed), table)


def build_filter(
    keys: npt.NDArray[np.integer],
    values: npt.NDArray[np.integer],
    *,
    n_positions: int,
    num_values: int,
    cell_bits: int,
    hashes: int = DEFAULT_HASHES,
    ratio: float | None = None,
    seed: int = 0,
    max_attempts: int = 16,
    name: str = "Bloomier filter",
) -> BloomierFilter:
    """Build a filter mapping each key (a position) to its value.

    Args:
        keys: distinct positions in ``[0, n_positions)`` (1-D integers).
        values: one value in ``[0, num_values)`` per key.
        n_positions: size of the position domain (the layer's number of weights).
        num_values: ``K``; lookups of non-keys give a value ``>= K`` with probability
            ``1 - K / 2**t``.
        cell_bits: ``t``, 1..16, with ``K <= 2**t``.
        hashes: ``k``, 1..8 (3 needs the fewest cells).
        ratio: cells per key, ``m = ceil(ratio * n + 32)`` rounded up to a multiple of ``k``.
            Peeling needs ``ratio`` above about 1.222 for ``k = 3`` (2 for 2, 1.295 for 4,
            1.425 for 5, 1.570 for 6, 1.719 for 7, 1.870 for 8). ``None``: ``k``'s default,
            :data:`deepzip.config.BLOOMIER_RATIO` (1.23 for ``k = 3``).
        seed: first seed tried (0 .. 2**64 - 1); attempt ``j`` uses ``seed + j``.
        max_attempts: seeds tried before giving up.
        name: names the layer in error messages.

    Returns:
        The filter; ``filter.attempts`` says how many seeds were tried.

    Raises:
        ConfigError: a parameter out of range.
        InvalidTensorError: keys not distinct or out of range, values out of range, length
            mismatch.
        BloomierBuildError: peeling failed for ``max_attempts`` seeds (raise ``ratio``).
    """
    _check_params(num_values, cell_bits, hashes, name)
    if ratio is None:
        ratio = BLOOMIER_RATIO[hashes]
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, (int, float))
        or not (1.0 <= ratio <= MAX_RATIO)
    ):
        raise ConfigError(f"{name}: ratio must be a number in [1, {MAX_RATIO}], got {ratio!r}")
    if (
        isinstance(n_positions, bool)
        or not isinstance(n_positions, int)
        or not (0 <= n_positions <= MAX_POSITIONS)
    ):
        raise ConfigError(
            f"{name}: n_positions must be an integer in [0, {MAX_POSITIONS}], got {n_positions!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MASK64:
        raise ConfigError(f"{name}: seed must be an integer in [0, 2**64), got {seed!r}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError(f"{name}: max_attempts must be an integer >= 1, got {max_attempts!r}")
    key_arr = _int_vector(keys, f"{name}: keys")
    val_arr = _int_vector(values, f"{name}: values")
    if key_arr.shape != val_arr.shape:
        raise InvalidTensorError(f"{name}: {key_arr.shape[0]} keys but {val_arr.shape[0]} values")
    if key_arr.size:
        if int(key_arr.min()) < 0 or int(key_arr.max()) >= n_positions:
            raise InvalidTensorError(
                f"{name}: keys must lie in [0, {n_positions}), got range "
                f"[{int(key_arr.min())}, {int(key_arr.max())}]"
            )
        if int(val_arr.min()) < 0 or int(val_arr.max()) >= num_values:
            raise InvalidTensorError(
                f"{name}: values must lie in [0, {num_values}), got range "
                f"[{int(val_arr.min())}, {int(val_arr.max())}]"
            )
        if np.unique(key_arr).shape[0] != key_arr.shape[0]:
            raise InvalidTensorError(f"{name}: keys must be distinct positions")
    m = cell_count(key_arr.shape[0], hashes=hashes, ratio=ratio)
    if m // hashes >= 1 << 32:  # the reader's limit (format.md 6.5): refuse, do not write it
        raise ConfigError(
            f"{name}: {key_arr.shape[0]} keys need {m} cells, {m // hashes} per segment; a "
            f"segment holds fewer than 2**32 (use more hashes or encode a smaller layer)"
        )
    for attempt in range(max_attempts):
        s = (seed + attempt) & _MASK64
        cells, mask = hash_positions(key_arr, seed=s, hashes=hashes, cells=m, cell_bits=cell_bits)
        rounds = _peel(cells, m)
        if rounds is None:
            continue
        table = _assign(rounds, cells, mask.astype(np.int64) ^ val_arr, m, cell_bits)
        table.setflags(write=False)
        return BloomierFilter(n_positions, num_values, cell_bits, hashes, s, table, attempt + 1)
    raise BloomierBuildError(
        f"{name}: peeling failed for {max_attempts} seeds ({seed} .. {seed + max_attempts - 1}) "
        f"with {key_arr.shape[0]} keys in {m} cells (ratio {ratio}, k = {hashes}); "
        "raise the ratio or max_attempts"
    )


def _int_vector(x: npt.NDArray[np.integer], what: str) -> _I64:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise InvalidTensorError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidTensorError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InvalidTensorError(f"{what}: value {int(arr.max())} is too large")
    return arr.astype(np.int64)


def _peel(cells: _I64, m: int) -> list[tuple[_I64, _I64]] | None:
    """Peel in rounds: ``[(keys, own cells), ...]`` in peeling order, or ``None`` on failure.

    Each cell keeps its degree and the XOR of the ids of the keys touching it, so a cell of
    degree one names its key. In one round every key owning a cell of degree one is removed at
    once (that cell is its own); two keys of one round never touch each other's own cell. Only
    the cells whose degree dropped in a round are examined in the next one.
    """
    n, k = cells.shape
    flat = cells.reshape(-1)
    ids = np.repeat(np.arange(n, dtype=np.int64), k)
    count = np.bincount(flat, minlength=m)
    xor_ids = np.zeros(m, dtype=np.int64)
    np.bitwise_xor.at(xor_ids, flat, ids)
    frontier = np.flatnonzero(count == 1)
    rounds: list[tuple[_I64, _I64]] = []
    peeled = 0
    while frontier.shape[0]:
        frontier = frontier[count[frontier] == 1]
        keys, first = np.unique(xor_ids[frontier], return_index=True)
        if keys.shape[0] == 0:
            break
        rounds.append((keys, frontier[first]))
        peeled += keys.shape[0]
        touched = cells[keys].reshape(-1)
        np.subtract.at(count, touched, 1)
        np.bitwise_xor.at(xor_ids, touched, np.repeat(keys, k))
        frontier = np.unique(touched[count[touched] == 1])
    return rounds if peeled == n else None


def _assign(rounds: list[tuple[_I64, _I64]], cells: _I64, target: _I64, m: int, t: int) -> _Cells:
    """Set each key's own cell, last-peeled keys first, so that its XOR equals ``target``."""
    table = np.zeros(m, dtype=np.int64)
    for keys, own in reversed(rounds):
        acc = target[keys].copy()
        for i in range(cells.shape[1]):
            acc ^= table[cells[keys, i]]  # the own cell is still zero
        table[own] = acc
    return table.astype(_cell_dtype(t))


# ------------------------------------------------------------------------------ bit packing


def _pack(table: _Cells, t: int) -> bytes:
    """``t`` bits per cell, cell 0 first, least significant bit first within bytes."""
    bits = (table.astype(np.uint32)[:, None] >> np.arange(t, dtype=np.uint32)) & 1
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def _unpack(data: npt.NDArray[np.uint8], m: int, t: int, name: str) -> _Cells:
    """The ``m`` cells of the packed ``data`` (exactly ``ceil(m * t / 8)`` bytes).

    Whole bytes (``t = 8`` or ``16``) are used in place; other widths are unpacked
    ``_CHUNK`` cells at a time (a multiple of 8, so each step starts on a byte), with one
    temporary byte per bit of the step only.
    """
    tail = m * t % 8
    if tail and int(data[-1]) >> tail:
        raise CorruptFileError(f"{name}: padding bits after the table are not zero")
    if t == 8:
        return data
    if t == 16:
        return data.view(np.dtype("<u2")).astype(np.uint16, copy=False)
    out = np.empty(m, dtype=_cell_dtype(t))
    for start in range(0, m, _CHUNK):
        stop = min(start + _CHUNK, m)
        chunk = data[start * t // 8 : -(-stop * t // 8)]
        bits = np.unpackbits(chunk, count=(stop - start) * t, bitorder="little")
        # each row of t bits packed back into its own 1 or 2 bytes, least significant first
        cells = np.packbits(bits.reshape(-1, t), axis=1, bitorder="little")
        out[start:stop] = cells[:, 0] if t <= 8 else cells.view(np.dtype("<u2"))[:, 0]
    return out


def _cell_bytes(table: _Cells, t: int) -> bytes:
    return (table.astype(np.uint8) if t <= 8 else table.astype("<u2")).tobytes()


def _from_cell_bytes(raw: npt.NDArray[np.uint8], m: int, t: int, name: str) -> _Cells:
    arr = raw if t <= 8 else raw.view(np.dtype("<u2"))
    if arr.shape[0] != m:
        raise CorruptFileError(f"{name}: LZMA table holds {arr.shape[0]} cells, expected {m}")
    if int(arr.max(initial=0)) >= 1 << t:
        raise CorruptFileError(f"{name}: a cell holds {int(arr.max())}, wider than t = {t} bits")
    return arr.astype(_cell_dtype(t), copy=False)


def _lzma_decode(payload: bytes, expected: int, name: str) -> npt.NDArray[np.uint8]:
    """The raw LZMA2 ``payload``, which must decode to exactly ``expected`` bytes.

    Decoded a piece at a time into one array (``decompress`` in one call would hold the table
    twice), and never more than one byte past ``expected`` (to tell a longer stream).
    """
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    out = np.empty(expected, dtype=np.uint8)
    got, data = 0, payload
    try:
        while not dec.eof:
            piece = dec.decompress(data, max_length=min(_CHUNK, expected - got + 1))
            data = b""
            if not piece or got + len(piece) > expected:  # out of input, or too long
                got += len(piece)
                break
            out[got : got + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            got += len(piece)
    except lzma.LZMAError as exc:
        raise CorruptFileError(f"{name}: the LZMA table does not decode ({exc})") from exc
    if got > expected:
        raise CorruptFileError(
            f"{name}: the LZMA table decodes to more than {expected} bytes, expected exactly "
            f"{expected}"
        )
    if not dec.eof:
        raise CorruptFileError(
            f"{name}: the LZMA table ends after {got} of {expected} bytes without the LZMA2 "
            "end marker (a truncated stream)"
        )
    if got != expected:
        raise CorruptFileError(
            f"{name}: the LZMA table decodes to {got} bytes, expected exactly {expected}"
        )
    if dec.unused_data:
        raise CorruptFileError(
            f"{name}: {len(dec.unused_data)} byte(s) after the end of the LZMA2 stream"
        )
    return out
