"""Stage 3 of Deep Compression: entropy coding.

Bit I/O, canonical length-limited Huffman codes, ANS (via ``constriction``), the relative
sparse index, and :func:`encode_symbols` / :func:`decode_symbols`, which code a symbol stream
with the best coder and serialise it. Nothing is compiled at import: the numba kernels are
built on first use.
"""

from __future__ import annotations

from deepzip.coding.sparse_index import RelativeIndex, decode_relative, encode_relative
from deepzip.coding.streams import (
    MAX_ALPHABET,
    Coder,
    CoderName,
    EncodedStream,
    decode_symbols,
    encode_symbols,
    entropy_bits,
    symbol_counts,
)

__all__ = [
    "MAX_ALPHABET",
    "Coder",
    "CoderName",
    "EncodedStream",
    "RelativeIndex",
    "decode_relative",
    "decode_symbols",
    "encode_relative",
    "encode_symbols",
    "entropy_bits",
    "symbol_counts",
]
