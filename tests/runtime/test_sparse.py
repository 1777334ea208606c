"""The value-grouped CSR: layout invariants, exact decoding, byte count, input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_helpers import make_shared

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime import SharedCSRArrays, SparseLinear, build_shared_csr, check_shared
from deepzip.runtime.kernels import BLOCK, MAX_BLOCKS


def decode(a: SharedCSRArrays) -> torch.Tensor:
    """Rebuild the dense matrix from the arrays with plain Python loops (the test's oracle)."""
    out = torch.zeros(a.rows, a.columns, dtype=torch.float32)
    cols = a.cols.numpy()
    if cols.dtype == np.int16:
        cols = cols.view(np.uint16)
    for r in range(a.rows):
        p = int(a.row_ptr[r])
        for g in range(int(a.group_ptr[r]), int(a.group_ptr[r + 1])):
            value = float(a.codebook[int(a.group_code[g])])
            for _ in range(BLOCK * int(a.group_blocks[g])):
                c = int(cols[p])
                p += 1
                if c != a.columns:
                    assert out[r, c] == 0, "a weight stored twice"
                    out[r, c] = value
        assert p == int(a.row_ptr[r + 1])
    return out


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    columns=st.integers(1, 70),
    density=st.floats(0.0, 1.0),
    k=st.integers(1, 256),
    seed=st.integers(0, 2**16),
)
def test_layout_decodes_to_the_dense_weight(
    rows: int, columns: int, density: float, k: int, seed: int
) -> None:
    shared = make_shared((rows, columns), density, k=k, seed=seed)
    a = build_shared_csr(shared)
    assert (a.rows, a.columns) == (rows, columns)
    assert a.nnz == int(shared.mask.sum())
    torch.testing.assert_close(decode(a), shared.dense(), rtol=0, atol=0)
    # groups: one per (row, code) present, codes ascending within a row
    for r in range(rows):
        codes = a.group_code[int(a.group_ptr[r]) : int(a.group_ptr[r + 1])].tolist()
        present = sorted(set(shared.indices[r][shared.mask[r]].tolist()))
        assert codes == present
    assert a.cols.numel() == BLOCK * int(a.group_blocks.long().sum())
    assert int(a.row_ptr[-1]) == a.cols.numel()


def test_higher_dimensional_weights_flatten_to_rows() -> None:
    shared = make_shared((6, 3, 2, 5), 0.4, k=256, seed=3)
    a = build_shared_csr(shared)
    assert (a.rows, a.columns) == (6, 30)
    torch.testing.assert_close(decode(a), shared.dense().reshape(6, 30), rtol=0, atol=0)


def test_long_groups_are_split_at_255_blocks() -> None:
    columns = MAX_BLOCKS * BLOCK * 2 + 100  # 4180 weights of one code in one row
    mask = torch.ones(2, columns, dtype=torch.bool)
    indices = torch.zeros(2, columns, dtype=torch.uint8)
    indices[1, ::2] = 1
    shared = SharedTensor(torch.tensor([-0.5, 0.25]), indices, mask)
    a = build_shared_csr(shared)
    blocks = a.group_blocks.tolist()
    # row 0: 4180 = 2040 + 2040 + 100 entries; row 1: two codes of 2090 = 2040 + 50 each
    assert blocks == [255, 255, 13, 255, 7, 255, 7]
    assert a.group_code.tolist() == [0, 0, 0, 0, 0, 1, 1]
    torch.testing.assert_close(decode(a), shared.dense(), rtol=0, atol=0)


def test_byte_count_covers_every_array() -> None:
    shared = make_shared((64, 900), 0.09, k=32, seed=1)
    a = build_shared_csr(shared)
    groups = a.group_code.numel()
    expected = 8 * (64 + 1) * 2 + 2 * groups + 2 * a.cols.numel() + 4 * 32
    assert a.nbytes == expected
    assert a.cols.dtype == torch.int16  # 900 columns fit in 16 bits
    assert SparseLinear(a).weight_nbytes == expected


def test_wide_matrices_use_32_bit_columns() -> None:
    shared = make_shared((2, 70_000), 0.001, k=4, seed=2)
    a = build_shared_csr(shared)
    assert a.cols.dtype == torch.int32
    torch.testing.assert_close(decode(a), shared.dense(), rtol=0, atol=0)


@pytest.mark.parametrize("columns", [2048, 9216])
def test_memory_at_the_papers_density_is_under_a_fifth_of_dense(columns: int) -> None:
    shared = make_shared((64, columns), 0.09, k=32, seed=4)
    a = build_shared_csr(shared)
    assert a.nbytes * 5 < 64 * columns * 4
    if columns == 9216:  # fc6's rows: ~26 weights per group, little padding
        assert a.nbytes < 2.6 * a.nnz


def test_empty_rows_and_an_all_pruned_matrix() -> None:
    shared = make_shared((5, 7), 0.0, seed=0)
    a = build_shared_csr(shared)
    assert a.nnz == 0
    assert a.cols.numel() == 0
    assert a.row_ptr.tolist() == [0] * 6
    assert torch.equal(decode(a), torch.zeros(5, 7))


@pytest.mark.parametrize(
    ("shared", "message"),
    [
        (SharedTensor(torch.zeros(2, 2), torch.zeros(3, 3, dtype=torch.uint8),
                      torch.ones(3, 3, dtype=torch.bool)), "codebook must be 1-D"),
        (SharedTensor(torch.zeros(300), torch.zeros(3, 3, dtype=torch.uint8),
                      torch.ones(3, 3, dtype=torch.bool)), "1..256"),
        (SharedTensor(torch.tensor([0.0, math.nan]), torch.zeros(3, 3, dtype=torch.uint8),
                      torch.ones(3, 3, dtype=torch.bool)), "NaN or inf"),
        (SharedTensor(torch.zeros(2), torch.zeros(3, 3, dtype=torch.int64),
                      torch.ones(3, 3, dtype=torch.bool)), "uint8"),
        (SharedTensor(torch.zeros(2), torch.zeros(3, 3, dtype=torch.uint8),
                      torch.ones(3, 2, dtype=torch.bool)), "mask must be bool"),
        (SharedTensor(torch.zeros(2), torch.zeros(3, dtype=torch.uint8),
                      torch.ones(3, dtype=torch.bool)), "at least 2 dimensions"),
        (SharedTensor(torch.zeros(2), torch.full((3, 3), 2, dtype=torch.uint8),
                      torch.ones(3, 3, dtype=torch.bool)), "reaches 2"),
    ],
)  # fmt: skip
def test_malformed_shared_tensors_are_rejected_by_name(shared: SharedTensor, message: str) -> None:
    with pytest.raises(InvalidTensorError, match=message) as info:
        check_shared("enc.fc9.weight", shared)
    assert "enc.fc9.weight" in str(info.value)


def test_an_index_past_the_codebook_at_a_pruned_position_is_ignored() -> None:
    indices = torch.full((2, 2), 7, dtype=torch.uint8)
    mask = torch.tensor([[True, False], [False, False]])
    indices[0, 0] = 1
    check_shared("w", SharedTensor(torch.tensor([0.0, 1.0]), indices, mask))


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backend"):
        SparseLinear(build_shared_csr(make_shared((2, 2), 0.5)), backend="cuda")  # type: ignore[arg-type]
