"""Symbol streams: one entry point that codes an array of small integers with the best coder,
and a self-describing, hostile-input-safe serialisation.

Byte layout of a serialised :class:`EncodedStream` (``to_bytes``; integers are unsigned LEB128
varints: 7 bits per byte, least significant group first, high bit set on every byte but the
last, at most 10 bytes, no superfluous trailing ``0x80``/``0x00`` groups, at most
``2**64 - 1``; ``deepzip.coding.varint``):

====================  ==========================================================================
field                 meaning
====================  ==========================================================================
``coder``   (1 byte)  0 = RAW, 1 = HUFFMAN, 2 = ANS
``alphabet`` (varint) alphabet size ``A``, ``1 <= A <= 65536``; symbols are in ``[0, A)``
``count``   (varint)  number of symbols ``n``
``model_len`` (varint) bytes of the model
``payload_len`` (varint) bytes of the payload
``model``             ``model_len`` bytes
``payload``           ``payload_len`` bytes; the stream ends here (no trailing bytes)
====================  ==========================================================================

An empty stream (``n == 0``) has an empty model and an empty payload, whatever the coder.
Bit fields below are MSB-first and each model or payload is zero-padded to a whole byte.

**RAW**: the model is empty; the payload is the ``n`` symbols in ``w = bit_length(A - 1)`` bits
each (0 bits when ``A == 1``), exactly ``ceil(n * w / 8)`` bytes. Every symbol must be ``< A``.

**HUFFMAN**: the model is a *symbol table* (below) of code lengths (``1..24``) of the used
symbols. The code is canonical: the used symbols sorted by ``(length, symbol)`` get
consecutive codes, shifted left whenever the length grows (as in DEFLATE). The lengths must
form a complete prefix code (Kraft sum exactly 1), or be a single symbol of length 1, whose
stream has an empty payload (the symbol repeats ``n`` times). The payload is the
concatenated codes, exactly ``ceil(bits / 8)`` bytes.

**ANS**: the model is ``precision`` (5 bits, ``0..24``) followed by a symbol table of integer
weights that sum to exactly ``2**precision``. One used symbol: ``precision == 0``, weight 1,
empty payload. Otherwise the payload is the output of constriction's stack ``AnsCoder`` as
little-endian 32-bit words (see :mod:`deepzip.coding.ans`).

**Symbol table** (a bit stream, zero-padded to a byte after its last field):

* ``kind`` (1 bit): 0 = dense, 1 = sparse;
* ``vbits - 1`` (5 bits): the width of each value, ``1..32``;
* ``n - 1`` (16 bits): the number of entries, ``1 <= n <= A``;
* sparse only: ``n`` Elias-gamma codes of ``gap + 1``, where ``gap`` is the number of unused
  symbols between consecutive used symbols (the first gap counts from symbol 0); an Elias-gamma
  code of ``v >= 1`` is ``floor(log2 v)`` zero bits followed by ``v`` in binary;
* ``n`` values of ``vbits`` bits. Dense: entry ``i`` is symbol ``i``, value 0 means unused,
  and the last value is non-zero. Sparse: entry ``i`` is the ``i``-th used symbol, and every
  value is non-zero.

The writer picks the smaller table (ties: dense) and the smallest ``vbits``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from deepzip.coding import ans, huffman, portable_math, varint
from deepzip.coding._jit import kernels
from deepzip.coding.bitio import BitReader, BitWriter, pack_fixed, unpack_fixed
from deepzip.config import CoderName, check_coder
from deepzip.errors import ConfigError, CorruptFileError, InvalidTensorError

__all__ = [
    "MAX_ALPHABET",
    "Coder",
    "CoderName",
    "EncodedStream",
    "decode_symbols",
    "encode_symbols",
    "entropy_bits",
    "estimated_size",
    "symbol_counts",
]

MAX_ALPHABET = 1 << 16
"""The largest alphabet a stream may have."""

_ANS_PRECISION_BITS = 5  # the field before an ANS model's symbol table


class Coder(enum.IntEnum):
    """How a stream's payload is coded (the first byte of a serialised stream)."""

    RAW = 0
    """Fixed-width bit packing, ``bit_length(alphabet_size - 1)`` bits per symbol."""
    HUFFMAN = 1
    """Canonical, length-limited Huffman code; the model stores the code lengths."""
    ANS = 2
    """Asymmetric numeral systems (constriction); the model stores quantized frequencies."""


# ----------------------------------------------------------------------- symbol tables


def _table_bits(values: np.ndarray) -> tuple[bool, int, int]:
    """(sparse?, vbits, table bits) of the smaller table for per-symbol values (0 = unused)."""
    used = np.flatnonzero(values)
    vbits = max(1, int(values.max()).bit_length())
    dense = 22 + (int(used[-1]) + 1) * vbits
    gaps = np.diff(used, prepend=-1)  # gap + 1 per used symbol
    # floor(log2 g) + 1 = the exponent frexp gives (exact for g < 2**53, unlike np.log2)
    gamma = int(np.sum(2 * np.frexp(gaps)[1].astype(np.int64) - 1))
    sparse = 22 + gamma + used.size * vbits
    return sparse < dense, vbits, min(dense, sparse)


def _write_table(writer: BitWriter, values: np.ndarray) -> None:
    """Append the symbol table of ``values`` (one per symbol, 0 = unused, at least one used)."""
    is_sparse, vbits, _ = _table_bits(values)
    used = np.flatnonzero(values)
    writer.write(int(is_sparse), 1)
    writer.write(vbits - 1, 5)
    if is_sparse:
        writer.write(used.size - 1, 16)
        writer.write_gammas(np.diff(used, prepend=-1))
        writer.write_fixed(values[used], vbits)
    else:
        n = int(used[-1]) + 1
        writer.write(n - 1, 16)
        writer.write_fixed(values[:n], vbits)


def _read_table(reader: BitReader, alphabet_size: int) -> np.ndarray:
    """Read a symbol table; returns int64 values per symbol (length ``alphabet_size``)."""
    what = reader.what
    is_sparse = reader.read(1, "symbol table kind")
    vbits = reader.read(5, "symbol table value width") + 1
    n = reader.read(16, "symbol table size") + 1
    if n > alphabet_size:
        raise CorruptFileError(
            f"{what}: symbol table has {n} entries for an alphabet of {alphabet_size}"
        )
    values = np.zeros(alphabet_size, dtype=np.int64)
    if is_sparse:
        symbols = np.empty(n, dtype=np.int64)
        prev = -1
        for i in range(n):
            prev += reader.read_gamma(17, "symbol table gap")
            if prev >= alphabet_size:
                raise CorruptFileError(
                    f"{what}: symbol table names symbol {prev}, alphabet size is {alphabet_size}"
                )
            symbols[i] = prev
        vals = reader.read_fixed(n, vbits, "symbol table values").astype(np.int64)
        if not vals.all():
            raise CorruptFileError(f"{what}: sparse symbol table has a zero value")
        values[symbols] = vals
    else:
        values[:n] = reader.read_fixed(n, vbits, "symbol table values")
        if values[n - 1] == 0:
            raise CorruptFileError(f"{what}: dense symbol table ends with an unused symbol")
    return values


# ------------------------------------------------------------------------ the stream


def _serialised_size(alphabet_size: int, count: int, model_len: int, payload_len: int) -> int:
    """``len(to_bytes())`` of a stream with these fields."""
    varints = (alphabet_size, count, model_len, payload_len)
    return 1 + sum(varint.encoded_len(v) for v in varints) + model_len + payload_len


def _raw_width(alphabet_size: int) -> int:
    return (alphabet_size - 1).bit_length()


def _symbol_dtype(alphabet_size: int) -> type[np.unsignedinteger]:
    return np.uint8 if alphabet_size <= 256 else np.uint16


@dataclass(frozen=True)
class EncodedStream:
    """A coded stream of ``count`` symbols from ``[0, alphabet_size)``.

    Attributes:
        coder: how the payload is coded.
        alphabet_size: ``1..65536``.
        count: number of symbols.
        model: what the decoder needs besides the payload (Huffman: code lengths; ANS:
            quantized frequencies; RAW: empty), in the layout of the module docstring.
        payload: the coded symbols.
    """

    coder: Coder
    alphabet_size: int
    count: int
    model: bytes
    payload: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.coder, Coder):
            raise TypeError(f"coder must be a Coder, got {self.coder!r}")
        if not 1 <= self.alphabet_size <= MAX_ALPHABET:
            raise ValueError(
                f"alphabet_size must be in [1, {MAX_ALPHABET}], got {self.alphabet_size}"
            )
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")

    def _header(self) -> bytes:
        """Coder byte and the four varints."""
        return (
            bytes([int(self.coder)])
            + varint.encode(self.alphabet_size)
            + varint.encode(self.count)
            + varint.encode(len(self.model))
            + varint.encode(len(self.payload))
        )

    @property
    def nbytes(self) -> int:
        """The serialised size, ``len(self.to_bytes())``."""
        return _serialised_size(self.alphabet_size, self.count, len(self.model), len(self.payload))

    def to_bytes(self) -> bytes:
        """The self-describing serialisation (module docstring); deterministic."""
        return self._header() + self.model + self.payload

    @classmethod
    def read_from(
        cls, buf: bytes | memoryview, offset: int = 0, *, max_count: int, what: str
    ) -> tuple[EncodedStream, int]:
        """Parse one stream that starts at ``offset``; returns it and the offset just after it.

        Every field is validated (see :meth:`from_bytes`); bytes after the stream are left for
        the caller.
        """
        view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else memoryview(buf)
        if max_count < 0:
            raise ValueError(f"max_count must be >= 0, got {max_count}")
        if offset >= len(view):
            raise CorruptFileError(f"{what}: stream is empty (no coder byte)")
        code = view[offset]
        if code not in {int(c) for c in Coder}:
            raise CorruptFileError(f"{what}: unknown coder {code}")
        coder = Coder(code)
        pos = offset + 1
        alphabet_size, pos = varint.read(view, pos, what, "alphabet size")
        if not 1 <= alphabet_size <= MAX_ALPHABET:
            raise CorruptFileError(
                f"{what}: alphabet size {alphabet_size} is outside [1, {MAX_ALPHABET}]"
            )
        count, pos = varint.read(view, pos, what, "symbol count")
        if count > max_count:
            raise CorruptFileError(
                f"{what}: declared symbol count {count} exceeds the cap {max_count}"
            )
        model_len, pos = varint.read(view, pos, what, "model length")
        payload_len, pos = varint.read(view, pos, what, "payload length")
        left = len(view) - pos
        if model_len > left or payload_len > left - model_len:
            raise CorruptFileError(
                f"{what}: declared model ({model_len} bytes) and payload ({payload_len} bytes) "
                f"exceed the {left} bytes present"
            )
        model = bytes(view[pos : pos + model_len])
        pos += model_len
        _check_payload_size(coder, alphabet_size, count, model, payload_len, what)
        payload = bytes(view[pos : pos + payload_len])
        pos += payload_len
        stream = cls(coder, alphabet_size, count, model, payload)
        return stream, pos

    @classmethod
    def from_bytes(cls, buf: bytes | memoryview, *, max_count: int, what: str) -> EncodedStream:
        """Parse exactly one serialised stream (hostile input).

        Validates the coder, the alphabet size, the count (at most ``max_count``), both lengths
        against the bytes present, the model, and the payload size the model implies, before
        anything proportional to the count is allocated.

        Args:
            buf: the serialised stream and nothing else.
            max_count: the largest symbol count the caller accepts.
            what: names the stream in error messages, e.g. ``"tensor 'fc1.weight' index
                stream"``.

        Raises:
            CorruptFileError: any field is invalid; the message names ``what`` and the value.
        """
        stream, end = cls.read_from(buf, 0, max_count=max_count, what=what)
        if end != len(buf):
            raise CorruptFileError(f"{what}: {len(buf) - end} trailing bytes after the stream")
        return stream


def _parse_model(
    coder: Coder, alphabet_size: int, count: int, model: bytes, what: str
) -> tuple[np.ndarray, int]:
    """Validate a model; returns (per-symbol lengths or weights, ANS precision or 0)."""
    if count == 0 or coder is Coder.RAW:
        if model:
            kind = "an empty stream" if count == 0 else "a RAW stream"
            raise CorruptFileError(
                f"{what}: {kind} must have an empty model, got {len(model)} bytes"
            )
        return np.zeros(0, dtype=np.int64), 0
    reader = BitReader(model, what=what)
    if coder is Coder.HUFFMAN:
        values = _read_table(reader, alphabet_size)
        reader.finish()
        huffman.check_lengths(values, what=what)
        return values, 0
    precision = reader.read(_ANS_PRECISION_BITS, "ANS precision")
    values = _read_table(reader, alphabet_size)
    reader.finish()
    used = values[values > 0]
    if precision > ans.MAX_PRECISION:
        raise CorruptFileError(f"{what}: ANS precision {precision} exceeds {ans.MAX_PRECISION}")
    if used.size == 1 and (precision != 0 or int(used[0]) != 1):
        raise CorruptFileError(
            f"{what}: a one-symbol ANS model must have precision 0 and weight 1, "
            f"got precision {precision} and weight {int(used[0])}"
        )
    total = int(used.sum())
    if total != 1 << precision:
        raise CorruptFileError(
            f"{what}: ANS weights sum to {total}, must be 2**{precision} = {1 << precision}"
        )
    return values, precision


def _check_payload_size(
    coder: Coder, alphabet_size: int, count: int, model: bytes, payload_len: int, what: str
) -> tuple[np.ndarray, int]:
    """Check the model and the payload size it implies (before the payload is copied).

    Returns what :func:`_parse_model` returns.
    """
    values, precision = _parse_model(coder, alphabet_size, count, model, what)
    if count == 0:
        if payload_len:
            raise CorruptFileError(f"{what}: an empty stream must have no payload")
        return values, precision
    if coder is Coder.RAW:
        need = (count * _raw_width(alphabet_size) + 7) // 8
        if payload_len != need:
            raise CorruptFileError(
                f"{what}: RAW payload is {payload_len} bytes, {count} symbols of "
                f"{_raw_width(alphabet_size)} bits need {need}"
            )
    elif coder is Coder.HUFFMAN:
        huffman.check_payload_size(payload_len, values, count, what=what)
    else:
        ans.check_payload_size(payload_len, values, precision, count, what=what)
    return values, precision


def symbol_counts(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    """The int64 histogram of integer ``symbols`` (any shape) over ``[0, alphabet_size)``.

    Returns:
        ``alphabet_size`` counts; entry ``s`` is how often symbol ``s`` occurs.

    Raises:
        ConfigError: a bad ``alphabet_size``.
        InvalidTensorError: non-integer symbols or symbols out of range.
    """
    return _histogram(_checked_symbols(symbols, alphabet_size), alphabet_size)


def _histogram(sym: np.ndarray, alphabet_size: int) -> np.ndarray:
    """:func:`symbol_counts` of symbols already checked by :func:`_checked_symbols`."""
    counts = np.zeros(alphabet_size, dtype=np.int64)
    if sym.size:
        kernels().histogram(sym, counts)
    return counts


def entropy_bits(symbols: np.ndarray, alphabet_size: int) -> float:
    """Zeroth-order entropy of the stream in total bits: ``-sum c * log2(c / n)``."""
    sym = _checked_symbols(symbols, alphabet_size)
    counts = _histogram(sym, alphabet_size)
    n = int(counts.sum())
    if n == 0:
        return 0.0
    c = counts[counts > 0].astype(np.float64)
    return 0.0 - portable_math.sum_of_products(c, portable_math.log2(c / n))


def _checked_symbols(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    """Validate ``alphabet_size`` and the symbols; return them flat as uint8/uint16."""
    if isinstance(alphabet_size, bool) or not isinstance(alphabet_size, (int, np.integer)):
        raise ConfigError(f"alphabet_size must be an integer, got {alphabet_size!r}")
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise ConfigError(f"alphabet_size must be in [1, {MAX_ALPHABET}], got {alphabet_size}")
    arr = np.asarray(symbols)
    if arr.dtype.kind not in "ui":
        raise InvalidTensorError(f"symbols must be integers, got dtype {arr.dtype}")
    flat = np.ascontiguousarray(arr.reshape(-1))
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= alphabet_size:
            raise InvalidTensorError(
                f"symbols must be in [0, {alphabet_size}), got range [{lo}, {hi}]"
            )
    return flat.astype(_symbol_dtype(alphabet_size), copy=False)


def _huffman_model(counts: np.ndarray) -> tuple[np.ndarray, bytes]:
    lengths = huffman.code_lengths(counts)
    writer = BitWriter()
    _write_table(writer, lengths.astype(np.int64))
    return lengths, writer.getvalue()


def _huffman_model_len(lengths: np.ndarray) -> int:
    """``len`` of :func:`_huffman_model`'s bytes, without writing them."""
    return (_table_bits(lengths.astype(np.int64))[2] + 7) // 8


def _ans_weights(counts: np.ndarray) -> tuple[int, np.ndarray]:
    return ans.choose_precision(counts, lambda w: _ANS_PRECISION_BITS + _table_bits(w)[2])


def _ans_model(counts: np.ndarray) -> tuple[np.ndarray, int, bytes]:
    precision, weights = _ans_weights(counts)
    writer = BitWriter()
    writer.write(precision, _ANS_PRECISION_BITS)
    _write_table(writer, weights)
    return weights, precision, writer.getvalue()


def _ans_model_len(weights: np.ndarray) -> int:
    """``len`` of :func:`_ans_model`'s bytes, without writing them."""
    return (_ANS_PRECISION_BITS + _table_bits(weights)[2] + 7) // 8


def encode_symbols(
    symbols: np.ndarray, alphabet_size: int, *, coder: CoderName = "auto"
) -> EncodedStream:
    """Entropy-code integer symbols in ``[0, alphabet_size)``.

    Args:
        symbols: an integer array of any shape (flattened in C order).
        alphabet_size: ``1..65536``; fixes the RAW width and the decoded dtype.
        coder: ``"huffman"``, ``"ans"``, ``"raw"``, or ``"auto"``: the coder whose
            serialised stream is smallest (ties go to the simpler coder, raw < huffman < ans).

    Returns:
        The stream; deterministic for the same symbols, alphabet and coder.

    Raises:
        ConfigError: a bad ``alphabet_size`` or ``coder``.
        InvalidTensorError: non-integer symbols or symbols out of range.
    """
    check_coder(coder)
    sym = _checked_symbols(symbols, alphabet_size)
    alphabet_size = int(alphabet_size)  # a numpy integer is taken: the stream holds an int
    count = int(sym.size)
    if count == 0:
        kind = {"auto": Coder.RAW, "raw": Coder.RAW, "huffman": Coder.HUFFMAN, "ans": Coder.ANS}
        return EncodedStream(kind[coder], alphabet_size, 0, b"", b"")

    def raw() -> EncodedStream:
        payload = pack_fixed(sym, _raw_width(alphabet_size))
        return EncodedStream(Coder.RAW, alphabet_size, count, b"", payload)

    if coder == "raw":
        return raw()
    counts = _histogram(sym, alphabet_size)
    lengths, hmodel = _huffman_model(counts)

    def huff() -> EncodedStream:
        payload = huffman.encode(sym, lengths, counts)
        return EncodedStream(Coder.HUFFMAN, alphabet_size, count, hmodel, payload)

    if coder == "huffman":
        return huff()
    weights, precision, amodel = _ans_model(counts)
    ans_stream = EncodedStream(
        Coder.ANS, alphabet_size, count, amodel, ans.encode(sym, weights, precision)
    )
    if coder == "ans":
        return ans_stream
    # auto: RAW and Huffman sizes are known without coding; ANS was coded above
    raw_len = (count * _raw_width(alphabet_size) + 7) // 8
    huff_len = (huffman.encoded_bits(counts, lengths) + 7) // 8
    sizes = [
        _serialised_size(alphabet_size, count, 0, raw_len),
        _serialised_size(alphabet_size, count, len(hmodel), huff_len),
        ans_stream.nbytes,
    ]
    best = min(range(3), key=lambda i: (sizes[i], i))
    return (raw, huff, lambda: ans_stream)[best]()


_ANS_TAIL_BITS = 20
"""What constriction's stack coder writes beyond the ideal code length, about: 15 to 53 bits
over 600 random streams (median 31, with the rounding up to whole 32-bit words); 20 makes
``estimated_size``'s payload exact for 95% of them and one word (4 bytes) off for the rest,
and the payload length's varint a byte off with it where the two lengths straddle 128 (or
16,384, ...)."""


_MAX_TOTAL_COUNT = 1 << 58
"""The largest symbol count (exclusive) :func:`estimated_size` takes: ``24 * 2**58`` bits, the
longest Huffman payload, stays below ``2**63``."""


def _checked_counts(counts: np.ndarray) -> np.ndarray:
    """Validate :func:`estimated_size`'s counts; return them as int64."""
    c = np.asarray(counts)
    if c.ndim != 1:
        raise ConfigError(f"counts must be 1-D, got shape {c.shape}")
    if not 1 <= c.size <= MAX_ALPHABET:
        raise ConfigError(f"alphabet size must be in [1, {MAX_ALPHABET}], got {c.size}")
    if c.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(c) | (c != np.floor(c)) | (c >= 2.0**63))
        if bad.size:
            i = int(bad[0])
            raise ConfigError(f"counts must be whole numbers, got counts[{i}] = {c[i].item()!r}")
    elif c.dtype.kind not in "ui":
        raise ConfigError(f"counts must be integers, got dtype {c.dtype}")
    elif c.dtype.kind == "u" and int(c.max()) > np.iinfo(np.int64).max:
        i = int(np.argmax(c))
        raise ConfigError(f"counts must be below 2**63, got counts[{i}] = {int(c[i])}")
    if int(c.min()) < 0:
        i = int(np.argmin(c))
        raise ConfigError(f"counts must be non-negative, got counts[{i}] = {c[i].item()!r}")
    out = c.astype(np.int64)
    # the sizes are summed in int64 (Huffman's bits up to 24 per symbol): cap the total
    if int(out.max()) * out.size >= _MAX_TOTAL_COUNT:
        total = sum(int(x) for x in out[out > 0])
        if total >= _MAX_TOTAL_COUNT:
            raise ConfigError(f"counts must sum to less than 2**58, got {total}")
    return out


def estimated_size(counts: np.ndarray, *, coder: CoderName = "auto", quick: bool = False) -> int:
    """The serialised size, in bytes, :func:`encode_symbols` would give these symbol counts.

    Without coding the symbols: exact for RAW and Huffman; for ANS the ideal code length
    under its quantised model, plus :data:`_ANS_TAIL_BITS` for the coder's state, in 32-bit
    words (exact for most streams, else 4 bytes off, 5 where the payload length's varint
    changes size). The order of the symbols is not known here: a stream that ends in a run
    of its smallest symbol codes that run for nothing under ANS (see
    ``deepzip.coding.ans.check_payload_size``), so its real size can be smaller.

    Args:
        counts: how many times each symbol of the alphabet occurs (its length is the
            alphabet's size, ``1..65536``).
        coder: as for :func:`encode_symbols`.
        quick: estimate ANS more cheaply, from the stream's entropy and Huffman's model (its
            own model, whose weights are costly to choose, is not built).

    Raises:
        ConfigError: a bad ``coder`` or alphabet size, or counts that are not 1-D,
            non-negative and integer-valued (integers, or floats with whole values), or that
            sum to ``2**58`` or more.
    """
    check_coder(coder)
    c = _checked_counts(counts)
    alphabet_size = int(c.size)
    count = int(c.sum())
    if count == 0:
        return _serialised_size(alphabet_size, 0, 0, 0)
    sizes = []
    if coder in ("auto", "raw"):
        raw_len = (count * _raw_width(alphabet_size) + 7) // 8
        sizes.append(_serialised_size(alphabet_size, count, 0, raw_len))
    if coder == "raw":
        return sizes[0]
    # the models' sizes are counted, not written (_table_bits is what _write_table writes)
    lengths = huffman.code_lengths(c)
    hmodel_len = _huffman_model_len(lengths)
    if coder in ("auto", "huffman"):
        huff_len = (huffman.encoded_bits(c, lengths) + 7) // 8
        sizes.append(_serialised_size(alphabet_size, count, hmodel_len, huff_len))
    if coder in ("auto", "ans"):
        used = c[c > 0]
        if quick and used.size > 1:
            entropy = 0.0 - portable_math.sum_of_products(used, portable_math.log2(used / count))
            bits, model_len = entropy, hmodel_len
        else:
            precision, weights = _ans_weights(c)
            bits, model_len = ans.estimated_bits(c, weights, precision), _ans_model_len(weights)
        # one used symbol (precision 0) has no payload
        ans_len = 4 * math.ceil((bits + _ANS_TAIL_BITS) / 32) if used.size > 1 else 0
        sizes.append(_serialised_size(alphabet_size, count, model_len, ans_len))
    return min(sizes)


def decode_symbols(stream: EncodedStream, *, what: str = "stream") -> np.ndarray:
    """Decode a stream back into its symbols.

    Returns:
        A 1-D uint8 array when ``alphabet_size <= 256``, else uint16.

    Raises:
        CorruptFileError: the model or payload is invalid (never another exception type for
            bad data), naming ``what``.
    """
    alphabet_size, count = stream.alphabet_size, stream.count
    dtype = _symbol_dtype(alphabet_size)
    values, precision = _check_payload_size(
        stream.coder, alphabet_size, count, stream.model, len(stream.payload), what
    )
    if count == 0:
        return np.empty(0, dtype=dtype)
    if stream.coder is Coder.RAW:
        width = _raw_width(alphabet_size)
        out = unpack_fixed(stream.payload, count, width, dtype=dtype, what=what)
        if out.size and int(out.max()) >= alphabet_size:
            raise CorruptFileError(
                f"{what}: RAW symbol {int(out.max())} is outside the alphabet of {alphabet_size}"
            )
        used_bits = count * width
        if used_bits % 8 and stream.payload[-1] & ((1 << (8 - used_bits % 8)) - 1):
            raise CorruptFileError(f"{what}: non-zero padding bits")
        return out
    if stream.coder is Coder.HUFFMAN:
        return huffman.decode(stream.payload, values, count, dtype=dtype, what=what)
    return ans.decode(stream.payload, values, precision, count, dtype=dtype, what=what)
