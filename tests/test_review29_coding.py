"""Review 29 of the entropy coders and bit-level coding (deepzip.coding).

Regressions: the compiled code packer wrote past its output when told a wrong total (heap
corruption, then an abort: ``huffman.encode`` with counts that were not the symbols'
histogram), ``unpack_fixed`` read a non-uint8 array element by element instead of as its
bytes, ``check_lengths`` passed a negative code length that ``decode`` then tripped over with
an IndexError, and ``estimated_size`` overflowed int64 on counts that sum past 2**63 (a plain
ValueError from the varint writer instead of a ConfigError). Plus edge round trips and the
compiled kernels against numba's pure-Python mode (``NUMBA_DISABLE_JIT=1``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deepzip.coding import bitio, huffman
from deepzip.coding._jit import kernels
from deepzip.coding.sparse_index import decode_relative, encode_relative, filler_count
from deepzip.coding.streams import (
    EncodedStream,
    decode_symbols,
    encode_symbols,
    estimated_size,
)
from deepzip.errors import ConfigError, CorruptFileError
from huffman_reference import reference_huffman_cost

# ------------------------------------------------------------------ the code packer's bounds


def test_the_pack_kernel_never_writes_past_its_output() -> None:
    # 32 symbols of 8 bits each need 32 bytes; the output is a 4-byte view of a larger buffer
    # whose other bytes must survive (the kernel runs without bounds checks)
    buffer = np.full(64, 0xAA, dtype=np.uint8)
    symbols = np.arange(32, dtype=np.uint8)
    codes = np.arange(256, dtype=np.uint32)
    lengths = np.full(256, 8, dtype=np.uint8)
    written = kernels().pack_codes(symbols, codes, lengths, buffer[:4])
    assert written == 32  # what the codes take, reported though not written
    np.testing.assert_array_equal(buffer[:4], [0, 1, 2, 3])
    assert (buffer[4:] == 0xAA).all()


@pytest.mark.parametrize(
    ("symbols", "codes", "lengths", "total", "match"),
    [
        (np.zeros(1000, np.uint8), [0, 1], [1, 1], 8, "does not match"),  # total too small
        (np.zeros(10, np.uint8), [0, 1], [1, 1], 800, "does not match"),  # total too large
        (np.array([0, 5], np.uint8), [0, 1], [1, 1], 2, "has no code"),
        (np.array([0, 1], np.uint8), [0, 1], [1, 33], 34, "at most 32"),
        (np.array([0, 1], np.uint8), [0, 2], [1, 1], 2, "fit in its length"),
        (np.array([0, 1], np.uint8), [0, 1, 2], [1, 1], 2, "3 codes but 2 lengths"),
        (np.array([0, 1], np.uint8), [0, 1], [1, 1], -1, "total_bits"),
    ],
)
def test_pack_codes_rejects_inconsistent_arguments(
    symbols: np.ndarray, codes: list[int], lengths: list[int], total: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        bitio.pack_codes(symbols, np.array(codes), np.array(lengths), total)


def test_huffman_encode_with_counts_of_other_symbols_raises_instead_of_corrupting() -> None:
    # Run apart: before the fix the packer wrote 1.25 MB past a 9-byte buffer and the process
    # aborted in malloc (or went on with a corrupted heap).
    script = textwrap.dedent(
        """
        import numpy as np
        from deepzip.coding import huffman
        lengths = np.array([1, 1], dtype=np.uint8)
        for _ in range(3):
            try:
                huffman.encode(np.zeros(10_000_000, np.uint8), lengths, np.array([1, 1]))
            except ValueError as exc:
                assert "1250000 bytes" in str(exc), exc
            else:
                raise SystemExit("no error")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


# ----------------------------------------------------------------------- unpack_fixed input


def test_unpack_fixed_reads_an_array_as_its_bytes() -> None:
    wide = np.array([0x0201, 0x0403], dtype="<u2")
    np.testing.assert_array_equal(
        bitio.unpack_fixed(wide, 4, 8), bitio.unpack_fixed(wide.tobytes(), 4, 8)
    )
    grid = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    np.testing.assert_array_equal(bitio.unpack_fixed(grid, 4, 8), [1, 2, 3, 4])
    strided = np.arange(8, dtype=np.uint8)[::2]
    np.testing.assert_array_equal(bitio.unpack_fixed(strided, 4, 8), [0, 2, 4, 6])
    with pytest.raises(CorruptFileError, match="need 5 bytes, only 4"):
        bitio.unpack_fixed(wide, 5, 8)


# ------------------------------------------------------------------------- Huffman lengths


def test_check_lengths_rejects_a_negative_length() -> None:
    with pytest.raises(CorruptFileError, match="negative Huffman code length -1"):
        huffman.check_lengths(np.array([1, 1, -1]), what="t")
    with pytest.raises(CorruptFileError, match="negative"):
        huffman.decode(b"\x55", np.array([1, 1, -1]), 8, what="t")


def _package_merge_cost(counts: np.ndarray, limit: int) -> int:
    """Optimal cost of codes of at most ``limit`` bits (package-merge), a lower bound."""
    weights = sorted(int(c) for c in counts if c > 0)
    n = len(weights)
    leaves = [(w, (i,)) for i, w in enumerate(weights)]
    level = list(leaves)
    for _ in range(limit - 1):
        packages = [
            (level[i][0] + level[i + 1][0], level[i][1] + level[i + 1][1])
            for i in range(0, len(level) - 1, 2)
        ]
        level = sorted(leaves + packages, key=lambda t: t[0])
    depth = [0] * n
    for _, ids in level[: 2 * n - 2]:
        for i in ids:
            depth[i] += 1
    return sum(w * d for w, d in zip(weights, depth, strict=True))


@pytest.mark.parametrize("limit", [huffman.MAX_CODE_LENGTH, 12, 8])
def test_limited_lengths_are_complete_and_never_beat_the_optimum(limit: int) -> None:
    rng = np.random.default_rng(limit)
    fib = [1, 1]
    while len(fib) < 60:
        fib.append(fib[-1] + fib[-2])
    cases = [np.array(fib, dtype=np.int64), np.array([1, 1, 2**40, 3, 2**50], dtype=np.int64)]
    cases += [(2.0 ** rng.uniform(0, 40, int(rng.integers(2, 60)))).astype(np.int64)]
    for counts in cases:
        lengths = huffman.code_lengths(counts, limit).astype(np.int64)
        assert lengths.min() >= 1
        assert lengths.max() <= limit
        assert sum(1 << (limit - int(n)) for n in lengths) == 1 << limit  # Kraft sum 1
        cost = sum(int(c) * int(n) for c, n in zip(counts, lengths, strict=True))
        assert cost >= _package_merge_cost(counts, limit)
        if lengths.max() < limit:
            assert cost == reference_huffman_cost(counts)


# --------------------------------------------------------------------- estimated_size total


def test_estimated_size_rejects_counts_whose_total_overflows() -> None:
    for counts in ([2**62, 2**62], [2**61] * 3, [2.0**62, 2.0**62]):
        for coder in ("raw", "huffman", "ans", "auto"):
            with pytest.raises(ConfigError, match="sum to less than 2\\*\\*58"):
                estimated_size(np.array(counts), coder=coder)  # type: ignore[arg-type]
    # just below the cap every coder still answers, Huffman exactly (one bit per symbol)
    big = np.array([2**57, 2**57 - 1])
    # coder byte, varints of 2, 2**58 - 1, 3 and 2**55 (1 + 9 + 1 + 8), a 3-byte table
    assert estimated_size(big, coder="huffman") == 1 + 19 + 3 + 2**55


# ------------------------------------------------------------------------ edge round trips


@pytest.mark.parametrize("coder", ["raw", "huffman", "ans", "auto"])
@pytest.mark.parametrize("alphabet", [1, 2, 256, 257, 65536])
def test_edge_streams_round_trip(coder: str, alphabet: int) -> None:
    top = alphabet - 1
    rare = np.zeros(200_000, dtype=np.int64)
    rare[-1] = top  # one rare symbol, last
    cases = [
        np.zeros(0, dtype=np.int64),
        np.array([top]),
        np.full(2_000_000, top),  # one symbol repeated: no payload except RAW's
        rare,
        np.arange(alphabet) if alphabet > 1 else np.zeros(3, dtype=np.int64),
    ]
    for symbols in cases:
        stream = encode_symbols(symbols, alphabet, coder=coder)  # type: ignore[arg-type]
        if symbols.size and coder in ("huffman", "ans") and np.unique(symbols).size == 1:
            assert stream.payload == b""
        back = EncodedStream.from_bytes(stream.to_bytes(), max_count=max(1, symbols.size), what="t")
        np.testing.assert_array_equal(decode_symbols(back, what="t"), symbols)


@pytest.mark.parametrize("width", [1, 5, 8, 16])
def test_relative_index_at_and_past_the_gap_limit(width: int) -> None:
    limit = (1 << width) - 1
    for numel in (limit + 1, limit + 2, 2 * limit + 3, 5 << width):
        for where in (limit - 1, limit, limit + 1, numel - 1):
            if not 0 <= where < numel:
                continue
            mask = np.zeros(numel, dtype=bool)
            mask[where] = True  # only this position survives (all-zero before it)
            index = encode_relative(mask, np.array([2]), width, filler=3)
            assert index.entries == 1 + filler_count(mask, width) == 1 + (where >> width)
            assert int(index.gaps.max()) <= limit
            pos, vals = decode_relative(index, numel, filler=3, what="t")
            np.testing.assert_array_equal(pos, [where])
            np.testing.assert_array_equal(vals, [2])
        empty = encode_relative(np.zeros(numel, dtype=bool), np.zeros(0, np.int64), width, filler=3)
        assert empty.entries == 0
        assert decode_relative(empty, numel, filler=3, what="t")[0].size == 0


# --------------------------------------------------------- compiled vs pure-Python kernels

_DIGEST_SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from deepzip.coding import bitio
    from deepzip.coding.streams import decode_symbols, encode_symbols
    digest = hashlib.sha256()
    rng = np.random.default_rng(5)
    for alphabet in (2, 3, 17, 256, 257, 4000, 65536):
        used = min(alphabet, 300)
        symbols = rng.choice(used, 3000, p=rng.dirichlet(np.full(used, 0.3)))
        symbols = np.minimum(symbols * (alphabet // used), alphabet - 1)
        for coder in ("raw", "huffman"):
            stream = encode_symbols(symbols, alphabet, coder=coder)
            digest.update(stream.to_bytes())
            digest.update(decode_symbols(stream).astype("<u4").tobytes())
    for width in range(33):
        values = rng.integers(0, 1 << width, 101, dtype=np.uint64)
        writer = bitio.BitWriter()
        writer.write(1, 3)
        writer.write_fixed(values, width)
        digest.update(bitio.pack_fixed(values, width) + writer.getvalue())
        reader = bitio.BitReader(writer.getvalue(), what="t")
        reader.read(3)
        digest.update(reader.read_fixed(101, width, dtype=np.uint64).astype("<u8").tobytes())
    print(digest.hexdigest())
    """
)


def test_compiled_kernels_match_numbas_pure_python_mode() -> None:
    """The numba kernels and the same functions run as Python (``NUMBA_DISABLE_JIT=1``, the
    way to run without compiling) give identical bytes and symbols."""
    digests = []
    for disable in ("0", "1"):
        env = {**os.environ, "NUMBA_DISABLE_JIT": disable}
        done = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        digests.append(done.stdout.strip())
    assert digests[0] == digests[1]
    assert len(bytes.fromhex(digests[0])) == hashlib.sha256().digest_size
