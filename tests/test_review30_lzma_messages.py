"""Review 30: a Weightless filter's LZMA table that is not exactly one stream of the table's
length is refused with a message that says what is wrong (junk after the end marker read
"decodes to 180 bytes, expected exactly 180")."""

from __future__ import annotations

import lzma

import numpy as np
import pytest

from deepzip.coding.bloomier import _LZMA_FILTERS, _lzma_decode
from deepzip.errors import CorruptFileError

TABLE = bytes(range(180))


def _packed(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def test_a_whole_stream_of_the_table_length_decodes() -> None:
    assert _lzma_decode(_packed(TABLE), 180, "t").tobytes() == TABLE
    assert isinstance(_lzma_decode(_packed(TABLE), 180, "t"), np.ndarray)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (_packed(TABLE) + b"\x00\x01", r"t: 2 byte\(s\) after the end of the LZMA2 stream"),
        (_packed(TABLE + b"x"), r"t: the LZMA table decodes to more than 180 bytes"),
        (_packed(TABLE[:100]), r"t: the LZMA table decodes to 100 bytes, expected exactly 180"),
        (_packed(TABLE)[:-1], r"t: the LZMA table ends after \d+ of 180 bytes without the"),
    ],
)
def test_each_bad_stream_says_what_is_wrong(payload: bytes, match: str) -> None:
    with pytest.raises(CorruptFileError, match=match):
        _lzma_decode(payload, 180, "t")
