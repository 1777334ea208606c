"""Fuzzing of the .dzip reader: no input may raise anything but a format error.

Random edits are tried both as they are (the checksums catch them) and with every checksum
recomputed afterwards, which drives the mutated bytes past the CRCs into the header, directory,
parameter, stream and sparse-index validation.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from dzip_craft import FORMAT_ERRORS, entry_fields, fix_crcs, read_all
from fuzz_dzip import fuzz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dzip_golden import EVERY_ENCODING

_N = len(EVERY_ENCODING)
_FIELDS = entry_fields(EVERY_ENCODING)
_INTERESTING = [0, 1, 2, 3, 7, 8, 15, 16, 255, 256, 257, 4095, 65535, 2**31, 2**32 - 1, 2**63]


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one file every example overwrites (Hypothesis refuses the function-scoped
    ``tmp_path``; pytest's retention policy removes this directory later)."""
    return tmp_path_factory.mktemp("fuzz") / "fuzz.dzip"


def _try(path: Path, data: bytes) -> bool:
    """Read everything; ``True`` if the file was accepted, ``False`` on a format error."""
    path.write_bytes(data)
    try:
        read_all(path)
    except FORMAT_ERRORS:
        return False
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, _N - 1), st.integers(0, 255)), min_size=1, max_size=6),
    fix=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, _N)),
)
def test_random_byte_edits(
    path: Path, edits: list[tuple[int, int]], fix: bool, cut: int | None
) -> None:
    data = bytearray(EVERY_ENCODING)
    for offset, value in edits:
        data[offset] = value
    out = fix_crcs(data) if fix else bytes(data)
    _try(path, out if cut is None else out[:cut])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entry=st.integers(0, len(_FIELDS) - 1),
    field=st.sampled_from(
        [
            "name_length",
            "encoding",
            "dtype",
            "rank",
            "part_count",
            "shape",
            "data_offset",
            "params_length",
            "params",
            "part_lengths",
        ]
    ),
    value=st.one_of(st.sampled_from(_INTERESTING), st.integers(0, 2**64 - 1)),
)
def test_directory_fields_with_fixed_checksums(
    path: Path, entry: int, field: str, value: int
) -> None:
    data = bytearray(EVERY_ENCODING)
    offset = _FIELDS[entry][field]
    width = {"name_length": 2, "shape": 8, "data_offset": 8, "part_lengths": 8}.get(field, 1)
    fmt = {1: "<B", 2: "<H", 8: "<Q"}[width]
    struct.pack_into(fmt, data, offset, value % (1 << (8 * width)))
    _try(path, fix_crcs(data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    garbage=st.binary(min_size=0, max_size=200),
    at=st.integers(0, _N),
    fix=st.booleans(),
)
def test_inserted_garbage(path: Path, garbage: bytes, at: int, fix: bool) -> None:
    data = EVERY_ENCODING[:at] + garbage + EVERY_ENCODING[at:]
    _try(path, fix_crcs(data) if fix else data)


def test_seeded_region_fuzz(tmp_path: Path) -> None:
    """500 seeded random edits inside the tensor regions, checksums fixed: the stream and
    sparse-index decoders see hostile bytes directly. A fixed count, not a time budget: every
    run reads the same files, however fast the machine."""
    rng = np.random.default_rng(1234)
    regions_end = struct.unpack_from("<Q", EVERY_ENCODING, 24)[0]
    tried = accepted = 0
    for _ in range(500):
        data = bytearray(EVERY_ENCODING)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(72, regions_end))] = int(rng.integers(0, 256))
        accepted += _try(tmp_path / "fuzz.dzip", fix_crcs(data))
        tried += 1
    assert tried == 500
    assert 0 < accepted < tried  # edited codebook values decode; most edits are caught


def test_mutation_campaign_on_realistic_files(tmp_path: Path) -> None:
    """600 mutated files from ``fuzz_dzip.py`` (no time budget, so the same 600 on every run):
    Huffman and ANS streams at several gap widths, sparse floats, and Bloomier tables packed
    and LZMA-compressed."""
    result = fuzz(0.0, seed=7, min_trials=600, out=tmp_path)
    assert result.findings == [], "\n".join(trace for _, trace in result.findings)
    assert result.tried == 600
    assert 0 < result.accepted < result.tried  # edited codebooks decode; most edits are caught
