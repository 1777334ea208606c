"""Bloomier filter: exact keys, false positives vs theory, peeling retries, bytes, hostile input."""

from __future__ import annotations

import lzma
import struct
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepzip.coding import bloomier as bl
from deepzip.coding.bloomier import BloomierFilter, build_filter, cell_count, hash_positions
from deepzip.errors import BloomierBuildError, ConfigError, CorruptFileError, InvalidTensorError

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def _problem(
    n_positions: int, n_keys: int, k_values: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = rng.choice(n_positions, size=n_keys, replace=False)
    return keys, rng.integers(0, k_values, size=n_keys)


# ------------------------------------------------------------------ a reference of the spec


def _splitmix(z: int) -> int:
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _spec_hash(x: int, seed: int, k: int, m: int, t: int) -> tuple[list[int], int]:
    """The cells and mask of position ``x``, as docs/format.md defines them (pure Python)."""
    seeds = [_splitmix(seed + (i + 1) * GOLDEN) for i in range(k + 1)]
    seg = m // k
    cells = []
    for i in range(k):
        h = _splitmix(x * GOLDEN + seeds[i])
        cells.append(i * seg + (((h >> 32) * seg) >> 32))
    return cells, _splitmix(x * GOLDEN + seeds[k]) >> (64 - t)


def _spec_table(payload: bytes, m: int, t: int) -> list[int]:
    """Cells of a bit-packed table: t bits each, cell 0 first, least significant bit first."""
    bits = int.from_bytes(payload, "little")
    return [(bits >> (i * t)) & ((1 << t) - 1) for i in range(m)]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# --------------------------------------------------------------------------- exact decoding


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_positions=st.integers(1, 3000),
    density=st.floats(0.0, 1.0),
    cell_bits=st.integers(1, 16),
    hashes=st.integers(2, 5),
    seed=st.integers(0, M64),
    data_seed=st.integers(0, 2**32 - 1),
)
def test_every_key_decodes_to_its_value(
    n_positions: int, density: float, cell_bits: int, hashes: int, seed: int, data_seed: int
) -> None:
    k_values = int(np.random.default_rng(data_seed).integers(1, (1 << cell_bits) + 1))
    keys, values = _problem(n_positions, int(density * n_positions), k_values, data_seed)
    # each k's default ratio, just above its peeling threshold (deepzip.config.BLOOMIER_RATIO)
    f = build_filter(
        keys,
        values,
        n_positions=n_positions,
        num_values=k_values,
        cell_bits=cell_bits,
        hashes=hashes,
        seed=seed,
        max_attempts=64,
    )
    np.testing.assert_array_equal(f.lookup(keys), values)
    indices, mask = f.decode_indices()
    assert mask[keys].all()
    np.testing.assert_array_equal(indices[keys], values)
    assert f.cells == cell_count(keys.size, hashes=hashes)
    again = BloomierFilter.from_bytes(f.to_bytes(compress=data_seed % 2 == 0))
    np.testing.assert_array_equal(again.decode_all(), f.decode_all())


def test_hashes_and_table_follow_the_spec() -> None:
    keys, values = _problem(5000, 600, 6, seed=3)
    f = build_filter(keys, values, n_positions=5000, num_values=6, cell_bits=5, seed=77)
    data = f.to_bytes()
    assert data[:2] == b"BF"
    assert data[2:6] == bytes([1, 0, 5, 3])  # version, flags, t, k
    assert struct.unpack_from("<Q", data, 6)[0] == f.seed
    head = data[:14] + _varint(5000) + _varint(f.cells) + _varint(6)
    assert data[: len(head)] == head
    table = _spec_table(data[len(head) :], f.cells, 5)
    assert len(data) - len(head) == -(-f.cells * 5 // 8)
    cells, mask = hash_positions(keys, seed=f.seed, hashes=3, cells=f.cells, cell_bits=5)
    for j in range(0, 600, 37):
        spec_cells, spec_mask = _spec_hash(int(keys[j]), f.seed, 3, f.cells, 5)
        assert cells[j].tolist() == spec_cells
        assert int(mask[j]) == spec_mask
    for x, v in zip(keys.tolist(), values.tolist(), strict=True):
        spec_cells, spec_mask = _spec_hash(x, f.seed, 3, f.cells, 5)
        acc = spec_mask
        for c in spec_cells:
            acc ^= table[c]
        assert acc == v


def test_golden_bytes() -> None:
    keys = np.array([0, 3, 4, 9, 15, 16, 22, 31])
    values = np.array([1, 0, 2, 2, 1, 0, 1, 2])
    f = build_filter(keys, values, n_positions=32, num_values=3, cell_bits=4, seed=5)
    head = "4246" + "01" + "00" + "04" + "03" + "0500000000000000"  # magic, v1, flags, t, k, seed
    sizes = "20" + "2a" + "03"  # varints: 32 positions, 42 cells, K = 3
    table = "00000059000561000008c000000000000000000000"  # 42 cells x 4 bits, 8 owned
    assert f.to_bytes().hex() == head + sizes + table


def test_cell_count() -> None:
    assert cell_count(1000) == 1263  # ceil(1.23 * 1000 + 32) = 1262, rounded up to 3 * 421
    assert cell_count(0) == 33
    assert cell_count(0, hashes=4) == 32
    assert cell_count(100, hashes=2, ratio=2.5) == 282
    # each k's own default ratio: 1.32 for k = 4, 2.5 for k = 2
    assert cell_count(1000, hashes=4) == 1352  # ceil(1.32 * 1000 + 32), a multiple of 4
    assert cell_count(100, hashes=2) == 282
    assert cell_count(1000, hashes=3, ratio=None) == 1263


# ------------------------------------------------------------------- false positives


@pytest.mark.parametrize(
    ("cell_bits", "k_values"),
    [(4, 4), (6, 8), (8, 32), (10, 4), (5, 3), (3, 8), (12, 256)],
)
def test_false_positive_rate_matches_theory(cell_bits: int, k_values: int) -> None:
    """A non-key reads a uniformly random t-bit value: a false positive iff it is below K."""
    n_positions, n_keys = 200_000, 12_000
    keys, values = _problem(n_positions, n_keys, k_values, seed=cell_bits)
    f = build_filter(
        keys, values, n_positions=n_positions, num_values=k_values, cell_bits=cell_bits, seed=1
    )
    non_keys = np.ones(n_positions, dtype=bool)
    non_keys[keys] = False
    decoded = f.decode_all()[non_keys]
    n = decoded.size
    p = k_values / 2**cell_bits
    rate = float((decoded < k_values).mean())
    assert f.expected_false_positive_rate == p
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(rate - p) <= 5 * sigma + 1e-12, (rate, p, sigma)
    # the values themselves are uniform over 0 .. 2**t - 1 (chi-square, far tail)
    counts = np.bincount(decoded, minlength=2**cell_bits)
    expected = n / 2**cell_bits
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = 2**cell_bits - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), chi2


def test_zero_keys_still_decode_uniformly() -> None:
    f = build_filter(
        np.array([], dtype=np.int64),
        np.array([], dtype=np.int64),
        n_positions=40_000,
        num_values=2,
        cell_bits=3,
    )
    rate = float((f.decode_all() < 2).mean())
    assert abs(rate - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 40_000)


# -------------------------------------------------------------------------- peeling


def test_failed_peeling_is_retried_with_the_next_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    real_peel = bl._peel
    calls: list[int] = []

    def flaky_peel(cells: np.ndarray, m: int) -> object:
        calls.append(m)
        return None if len(calls) < 3 else real_peel(cells, m)

    monkeypatch.setattr(bl, "_peel", flaky_peel)
    keys, values = _problem(10_000, 900, 16, seed=0)
    f = build_filter(keys, values, n_positions=10_000, num_values=16, cell_bits=6, seed=40)
    assert len(calls) == 3
    assert f.attempts == 3
    assert f.seed == 42
    np.testing.assert_array_equal(f.lookup(keys), values)
    again = BloomierFilter.from_bytes(f.to_bytes())
    np.testing.assert_array_equal(again.lookup(keys), values)


def test_peeling_below_the_threshold_fails_with_a_typed_error() -> None:
    keys, values = _problem(50_000, 5000, 4, seed=1)
    with pytest.raises(BloomierBuildError, match=r"fc1\.weight.*3 seeds.*5000 keys"):
        build_filter(
            keys,
            values,
            n_positions=50_000,
            num_values=4,
            cell_bits=4,
            ratio=1.0,
            max_attempts=3,
            name="fc1.weight",
        )


def test_natural_peeling_failures_near_the_threshold_are_retried() -> None:
    """Just above the threshold with few keys, some seeds fail; construction still succeeds."""
    keys, values = _problem(2000, 150, 4, seed=2)
    attempts = []
    for seed in range(40):
        f = build_filter(
            keys,
            values,
            n_positions=2000,
            num_values=4,
            cell_bits=4,
            ratio=1.05,
            seed=seed * 1000,
            max_attempts=64,
        )
        attempts.append(f.attempts)
        np.testing.assert_array_equal(f.lookup(keys), values)
    assert max(attempts) > 1


def test_large_layers_build() -> None:
    keys, values = _problem(1_200_000, 250_000, 32, seed=4)
    f = build_filter(keys, values, n_positions=1_200_000, num_values=32, cell_bits=8)
    np.testing.assert_array_equal(f.lookup(keys), values)


# ------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cell_bits": 0}, ConfigError, "cell_bits"),
        ({"cell_bits": 17}, ConfigError, "cell_bits"),
        ({"num_values": 17, "cell_bits": 4}, ConfigError, "num_values"),
        ({"hashes": 9}, ConfigError, "hashes"),
        ({"ratio": 0.9}, ConfigError, "ratio"),
        ({"seed": -1}, ConfigError, "seed"),
        ({"max_attempts": 0}, ConfigError, "max_attempts"),
        ({"keys": np.array([1, 1, 2])}, InvalidTensorError, "distinct"),
        ({"keys": np.array([1, 2, 100])}, InvalidTensorError, r"\[0, 100\)"),
        ({"keys": np.array([-1, 2, 3])}, InvalidTensorError, r"\[0, 100\)"),
        ({"values": np.array([0, 1, 4])}, InvalidTensorError, r"values must lie in \[0, 4\)"),
        ({"values": np.array([0, 1])}, InvalidTensorError, "3 keys but 2 values"),
        ({"keys": np.array([[1, 2, 3]])}, InvalidTensorError, "1-D"),
        ({"keys": np.array([1.0, 2.0, 3.0])}, InvalidTensorError, "integers"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object], error: type, match: str) -> None:
    args: dict[str, object] = {
        "keys": np.array([1, 2, 3]),
        "values": np.array([0, 1, 3]),
        "n_positions": 100,
        "num_values": 4,
        "cell_bits": 4,
        "name": "conv.weight",
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        build_filter(**args)  # type: ignore[arg-type]


def test_lookup_checks_positions() -> None:
    f = build_filter(np.array([3]), np.array([0]), n_positions=10, num_values=1, cell_bits=2)
    with pytest.raises(InvalidTensorError, match=r"\[0, 10\)"):
        f.lookup(np.array([10]))
    with pytest.raises(InvalidTensorError, match="integers"):
        f.lookup(np.array([1.0]))
    assert f.lookup(np.array([[3, 3]])).shape == (1, 2)


# ------------------------------------------------------------------------- serialisation


def test_lzma_table_round_trip_and_choice() -> None:
    keys, values = _problem(300_000, 20_000, 4, seed=5)
    f = build_filter(keys, values, n_positions=300_000, num_values=4, cell_bits=8)
    plain, squeezed = f.to_bytes(), f.to_bytes(compress=True)
    assert plain[3] == 0  # the flag says which form follows
    assert squeezed[3] == 1
    assert len(squeezed) < len(plain)  # the unowned cells are zero: LZMA finds them
    again = BloomierFilter.from_bytes(squeezed)
    np.testing.assert_array_equal(again.table, f.table)
    assert again.to_bytes(compress=True) == squeezed  # deterministic
    # a near-incompressible table (t = 2) is stored packed even when LZMA is asked for
    g = build_filter(keys, values, n_positions=300_000, num_values=4, cell_bits=2)
    assert g.to_bytes(compress=True) == g.to_bytes()


def test_from_bytes_checks_the_number_of_positions() -> None:
    f = build_filter(np.array([3]), np.array([0]), n_positions=10, num_values=1, cell_bits=2)
    with pytest.raises(CorruptFileError, match="covers 10 positions, the tensor has 11"):
        BloomierFilter.from_bytes(f.to_bytes(), n_positions=11, name="fc2.weight")


def _header(
    *,
    magic: bytes = b"BF",
    version: int = 1,
    flags: int = 0,
    t: int = 4,
    k: int = 3,
    seed: int = 0,
    n_positions: int = 100,
    m: int = 33,
    num_values: int = 4,
) -> bytes:
    return (
        struct.pack("<2sBBBBQ", magic, version, flags, t, k, seed)
        + _varint(n_positions)
        + _varint(m)
        + _varint(num_values)
    )


def _valid(m: int = 33, t: int = 4) -> bytes:
    return _header(m=m, t=t) + bytes(-(-m * t // 8))


def test_hand_made_filter_parses() -> None:
    f = BloomierFilter.from_bytes(_valid())
    assert (f.cells, f.cell_bits, f.hashes, f.num_values, f.n_positions) == (33, 4, 3, 4, 100)
    assert not f.table.any()


_CORRUPT = [
    (b"", "shorter than the filter header"),
    (_valid()[:10], "shorter than the filter header"),
    (_header(magic=b"BX") + bytes(17), "bad magic"),
    (_header(version=2) + bytes(17), "unknown filter version 2"),
    (_header(flags=4) + bytes(17), "unknown flag bits"),
    (_header(t=0) + bytes(17), "t = 0"),
    (_header(t=17) + bytes(17), "t = 17"),
    (_header(k=0) + bytes(17), "k = 0"),
    (_header(k=9) + bytes(17), "k = 9"),
    (_header(num_values=0) + bytes(17), "num_values = 0"),
    (_header(num_values=17) + bytes(17), "num_values = 17"),
    (_header(m=34) + bytes(17), "multiple of k"),
    (_header(m=0), "multiple of k"),
    (_header(m=3 * 10**6) + bytes(17), "at most"),
    (_header(n_positions=1 << 41) + bytes(17), "exceeds"),
    (_valid()[:-1], "needs 17 bytes, 16 follow"),
    (_valid() + b"\x00", "needs 17 bytes, 18 follow"),
    (_header(m=33, t=3) + bytes(12) + b"\x80", "padding bits"),
    (_valid()[:14], "truncated while reading n_positions"),
    (_valid()[:14] + b"\x80" * 11, "longer than 10 bytes"),
    (_valid()[:14] + b"\xe4\x00" + _varint(33) + _varint(4) + bytes(17), "not minimally"),
    (_header(flags=1) + _varint(5) + b"junk!", "does not decode"),
    (_header(flags=1) + _varint(9) + b"junk!", "payload length 9 but 5"),
    (
        _header(flags=1, m=30_000, n_positions=30_000) + _varint(4) + b"\x00\x00\x00\x00",
        "claim to expand",
    ),
]


@pytest.mark.parametrize(("data", "match"), _CORRUPT)
def test_corrupt_filters_are_rejected(data: bytes, match: str) -> None:
    with pytest.raises(CorruptFileError, match=match) as info:
        BloomierFilter.from_bytes(data, name="fc1.weight")
    assert "fc1.weight" in str(info.value)


def _lzma_filter(cells: bytes, m: int, t: int = 4, n_positions: int = 100) -> bytes:
    payload = lzma.compress(cells, format=lzma.FORMAT_RAW, filters=bl._LZMA_FILTERS)
    return _header(flags=1, m=m, t=t, n_positions=n_positions) + _varint(len(payload)) + payload


def test_corrupt_lzma_tables_are_rejected() -> None:
    with pytest.raises(CorruptFileError, match="expected exactly 33"):
        BloomierFilter.from_bytes(_lzma_filter(bytes(32), 33))
    with pytest.raises(CorruptFileError, match="expected exactly 33"):
        BloomierFilter.from_bytes(_lzma_filter(bytes(40), 33))
    with pytest.raises(CorruptFileError, match="wider than t = 4 bits"):
        BloomierFilter.from_bytes(_lzma_filter(bytes(32) + b"\x10", 33))
    ok = BloomierFilter.from_bytes(_lzma_filter(bytes(32) + b"\x0f", 33))
    assert int(ok.table[-1]) == 15


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_damaged_filters_fail_only_with_corrupt_file_error(data: st.DataObject) -> None:
    keys, values = _problem(3000, 300, 4, seed=9)
    f = build_filter(keys, values, n_positions=3000, num_values=4, cell_bits=6)
    blob = bytearray(f.to_bytes(compress=data.draw(st.booleans())))
    action = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if action == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del blob[data.draw(st.integers(0, len(blob) - 1)) :]
    else:
        blob += data.draw(st.binary(min_size=1, max_size=8))
    try:
        parsed = BloomierFilter.from_bytes(bytes(blob))
    except CorruptFileError:
        return
    parsed.decode_all()  # a flipped table bit still parses: it must still decode


# -------------------------------------------------------------------------- memory


def _peak(fn: Callable[[], object]) -> int:
    """Bytes Python and numpy allocated at the peak of ``fn()`` (what existed before excluded)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tables_use_the_narrowest_dtype() -> None:
    keys, values = _problem(3000, 300, 2, seed=2)
    for t, dtype in [(1, np.uint8), (5, np.uint8), (8, np.uint8), (9, np.uint16), (16, np.uint16)]:
        f = build_filter(keys, values, n_positions=3000, num_values=2, cell_bits=t)
        assert f.table.dtype == dtype, t
        for compress in (False, True):
            again = BloomierFilter.from_bytes(f.to_bytes(compress=compress))
            assert again.table.dtype == dtype, (t, compress)
            np.testing.assert_array_equal(again.table, f.table)
            np.testing.assert_array_equal(again.decode_all(), f.decode_all())


@pytest.mark.parametrize("t", [1, 3, 5, 8, 11, 16])
def test_tables_longer_than_an_unpacking_step_unpack_exactly(t: int) -> None:
    m = bl._CHUNK + 13  # two steps, the last one not a whole number of bytes
    cells = np.random.default_rng(t).integers(0, 1 << t, m).astype(np.uint16)
    data = _header(t=t, k=1, n_positions=1 << 16, m=m, num_values=1) + bl._pack(cells, t)
    np.testing.assert_array_equal(BloomierFilter.from_bytes(data).table, cells)


def test_decoding_does_not_copy_the_table_per_block() -> None:
    """Each block of positions reads the table in place: memory follows the block, not ``m``."""
    n = 4096
    m = 16 * n + 32  # the largest table a filter of n positions may have
    f = BloomierFilter.from_bytes(_header(t=8, k=1, n_positions=n, m=m, num_values=1) + bytes(m))
    assert _peak(lambda: sum(int(v.sum()) for _, v in f.decode_blocks(256))) < m


def test_unpacking_a_table_needs_about_one_byte_per_cell() -> None:
    m = 1 << 22
    data = _header(t=3, k=1, n_positions=m // 16, m=m, num_values=1) + bytes(3 * m // 8)
    assert _peak(lambda: BloomierFilter.from_bytes(data)) < 4 * m  # 1 + 3/8 + a step's bits


def test_an_lzma_table_is_decoded_without_a_second_copy() -> None:
    m = 1 << 24
    cells = np.zeros(m, dtype=np.uint8)
    cells[: m // 32] = np.random.default_rng(0).integers(0, 256, m // 32, dtype=np.uint8)
    fast = [{"id": lzma.FILTER_LZMA2, "preset": 1, "dict_size": 1 << 22}]  # same decoder
    payload = lzma.compress(cells.tobytes(), format=lzma.FORMAT_RAW, filters=fast)
    data = _header(flags=1, t=8, k=1, n_positions=m // 16, m=m, num_values=256)
    data += _varint(len(payload)) + payload
    f = BloomierFilter.from_bytes(data)
    np.testing.assert_array_equal(f.table, cells)
    # the table once, the decoder's 4 MiB dictionary and one step (no bytes object of m too)
    assert _peak(lambda: BloomierFilter.from_bytes(data)) < 2 * m


def test_the_largest_table_a_builder_makes_is_the_largest_a_reader_takes() -> None:
    """``ratio`` is at most MAX_RATIO cells per key and keys are positions: the reader's cap."""
    n, k = 50, 3
    f = build_filter(
        np.arange(n), np.zeros(n, dtype=np.int64), n_positions=n, num_values=1, cell_bits=4,
        hashes=k, ratio=bl.MAX_RATIO,
    )  # fmt: skip
    cap = cell_count(n, hashes=k, ratio=bl.MAX_RATIO)
    assert f.cells == cap
    assert BloomierFilter.from_bytes(f.to_bytes()).cells == cap
    with pytest.raises(CorruptFileError, match=f"at most {cap} for {n} positions"):
        BloomierFilter.from_bytes(_header(n_positions=n, m=cap + k, t=4) + bytes(cap))


def test_a_table_the_reader_would_refuse_is_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    # the reader refuses m // k >= 2**32 (format.md 6.5); the builder made such a table (over
    # about 10**10 keys, so the cell count is faked here)
    monkeypatch.setattr(bl, "cell_count", lambda n, hashes, ratio: hashes << 32)
    keys = np.arange(4, dtype=np.int64)
    with pytest.raises(ConfigError, match=r"fc: 4 keys need 12884901888 cells, 4294967296 per"):
        build_filter(keys, keys % 2, n_positions=8, num_values=2, cell_bits=2, name="fc")
