"""Session 32, from mutation testing of coding/streams.py: the symbol table's layout choice
and the reader's checks of a crafted (hostile) table, each of which a mutant survived."""

from __future__ import annotations

import numpy as np
import pytest

from deepzip.coding.bitio import BitWriter
from deepzip.coding.streams import (
    Coder,
    EncodedStream,
    _table_bits,
    decode_symbols,
    encode_symbols,
)
from deepzip.errors import CorruptFileError


def _table(sparse: int, vbits: int, n: int, gaps: list[int] | None, vals: list[int]) -> bytes:
    """A Huffman model: a symbol table as docs/format.md section 7 lays it out."""
    w = BitWriter()
    w.write(sparse, 1)
    w.write(vbits - 1, 5)
    w.write(n - 1, 16)
    if gaps is not None:
        w.write_gammas(np.array(gaps))
    w.write_fixed(np.array(vals), vbits)
    return w.getvalue()


def test_table_bits_by_hand() -> None:
    # one used symbol at 19 of 20, value 1: dense = 22 + 20·1 = 42 bits; sparse = 22 +
    # gamma(20) (2·4 + 1 = 9 bits) + 1·1 = 32 bits
    assert _table_bits(np.array([0] * 19 + [1])) == (True, 1, 32)
    # used 2 and 4 (values 3, 1; 2 bits each): dense = 22 + 5·2 = 32; sparse = 22 + gamma(3)
    # + gamma(2) (3 + 3) + 2·2 = 32: a tie keeps the dense table
    assert _table_bits(np.array([0, 0, 3, 0, 1])) == (False, 2, 32)
    # used 0 and 1 (values 5, 4; 3 bits each): dense = 22 + 2·3 = 28; sparse = 22 + gamma(1)
    # + gamma(1) (1 + 1) + 2·3 = 30
    assert _table_bits(np.array([5, 4])) == (False, 3, 28)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (_table(1, 1, 2, [1, 4], [1, 1]), "symbol table names symbol 4, alphabet size is 4"),
        (_table(1, 1, 2, [1, 5], [1, 1]), "symbol table names symbol 5, alphabet size is 4"),
        (_table(1, 1, 2, [1, 3], [1, 0]), "sparse symbol table has a zero value"),
        (_table(0, 2, 3, None, [1, 1, 0]), "dense symbol table ends with an unused symbol"),
        (_table(1, 1, 2, [1, 1 << 17], [1, 1]), "symbol table gap has 17 leading zeros"),
    ],
)
def test_a_crafted_symbol_table_is_refused_naming_the_stream(model: bytes, match: str) -> None:
    stream = EncodedStream(Coder.HUFFMAN, 4, 3, model, b"\x00")
    with pytest.raises(CorruptFileError, match=f"^layer 'x': {match}"):
        decode_symbols(stream, what="layer 'x'")


def test_an_alphabet_of_256_decodes_to_uint8_and_257_to_uint16() -> None:
    for size, dtype in ((256, np.uint8), (257, np.uint16)):
        symbols = np.arange(size, dtype=np.int64) % size
        for coder in ("huffman", "ans", "raw"):
            out = decode_symbols(encode_symbols(symbols, size, coder=coder))
            assert out.dtype == dtype
            assert np.array_equal(out, symbols)


def test_a_stream_needs_a_coder_member() -> None:
    with pytest.raises(TypeError, match="coder must be a Coder, got 0"):
        EncodedStream(0, 4, 0, b"", b"")  # type: ignore[arg-type]
