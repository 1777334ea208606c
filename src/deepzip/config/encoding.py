"""How a ``.dzip`` file codes its streams: the coder and the relative index's gap width.

These sit below ``deepzip.coding`` and ``deepzip.format``, which import them.
"""

from __future__ import annotations

from typing import Literal

from deepzip.config._base import _check_choice
from deepzip.errors import ConfigError

CoderName = Literal["auto", "huffman", "ans", "raw"]
"""How streams are entropy coded: each stream's smaller of Huffman and ANS (``"auto"``), one of
them, or fixed-width packing (``"raw"``)."""
CODER_NAMES: tuple[CoderName, ...] = ("auto", "huffman", "ans", "raw")
LayoutName = Literal["auto", "sparse", "dense"]


def check_coder(coder: object, where: str = "coder") -> CoderName:
    """``coder`` if it is a :data:`CoderName`, else a ``ConfigError`` naming ``where``."""
    _check_choice(where, coder, CODER_NAMES)
    return coder  # type: ignore[return-value]


IndexBitsSpec = int | Literal["auto", "paper"]
"""A relative index's gap width: 1..16 bits, ``"auto"`` (the width that makes each tensor
smallest) or ``"paper"`` (Deep Compression's 8 bits for convolutions, 5 otherwise)."""

# deepzip.format.dzip_spec's MIN_GAP_WIDTH..MAX_GAP_WIDTH (config sits below format; a test
# holds the two equal)
INDEX_BITS_RANGE = (1, 16)


def check_index_bits(where: str, value: object) -> IndexBitsSpec:
    """``value`` if it is an :data:`IndexBitsSpec`, else a ``ConfigError`` naming ``where``."""
    if value in ("auto", "paper"):
        return value
    low, high = INDEX_BITS_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"{where} must be an integer from {low} to {high}, 'auto' or 'paper', got {value!r}"
        )
    return value
