"""Review regressions for the entropy coders (ANS streams whose tail costs nothing, ...)."""

from __future__ import annotations

import numpy as np

from deepzip.coding import ans
from deepzip.coding.streams import EncodedStream, decode_symbols, encode_symbols


def test_an_ans_stream_ending_in_a_run_of_its_first_symbol_decodes() -> None:
    # Four equally frequent symbols, every 0 at the end: the stack coder starts empty and
    # pushing symbol 0 (rank 0) on an empty coder leaves it empty, so the run of 0s costs no
    # bits: 1.5 bits per symbol where each costs 2. The reader must not reject the payload
    # as too short for the count (it did: "cannot hold 16000 symbols").
    rng = np.random.default_rng(0)
    n = 4000
    symbols = np.r_[rng.permutation(np.repeat([1, 2, 3], n)), np.zeros(n, dtype=np.int64)]
    for coder in ("ans", "auto"):
        stream = encode_symbols(symbols, 4, coder=coder)
        assert stream.coder.name == "ANS"  # smaller than Huffman's 2 bits per symbol
        assert 8 * len(stream.payload) < 2 * symbols.size
        parsed = EncodedStream.from_bytes(stream.to_bytes(), max_count=symbols.size, what="t")
        np.testing.assert_array_equal(decode_symbols(parsed, what="t"), symbols)


def test_a_trailing_run_of_the_first_symbol_leaves_the_ans_payload_unchanged() -> None:
    w = np.array([8, 4, 4])
    symbols = np.array([0, 1, 2, 0, 0, 1] * 50, dtype=np.uint8)
    longer = np.r_[symbols, np.zeros(30000, dtype=np.uint8)]
    payload = ans.encode(symbols, w, 4)
    assert ans.encode(longer, w, 4) == payload
    np.testing.assert_array_equal(ans.decode(payload, w, 4, longer.size), longer)
