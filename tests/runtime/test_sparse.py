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
from deepzip.runtime.kernels import BLOCK


def decode(a: SharedCSRArrays) -> torch.Tensor:
    """Rebuild the dense matrix from the arrays with plain Python loops (the test's oracle)."""
    out = torch.zeros(a.rows, a.columns, dtype=torch.float32)
    cols = a.cols.numpy()
    if cols.dtype == np.int16:
        cols = cols.view(np.uint16)
    for r in range(a.rows):
        start, end = int(a.row_ptr[r]), int(a.row_ptr[r + 1])
        assert start % BLOCK == 0
        assert end % BLOCK == 0
        for p in range(start, end):
            value = float(a.codebook[int(a.block_code[p // BLOCK])])
            c = int(cols[p])
            if c != a.columns:
                assert out[r, c] == 0, "a weight stored twice"
                out[r, c] = value
    return out


def row_groups(a: SharedCSRArrays, r: int) -> list[tuple[int, list[int]]]:
    """``(code, columns)`` of each run of equal block codes in row ``r``, padding dropped."""
    cols = a.cols.numpy()
    if cols.dtype == np.int16:
        cols = cols.view(np.uint16)
    runs: list[tuple[int, list[int]]] = []
    for b in range(int(a.row_ptr[r]) // BLOCK, int(a.row_ptr[r + 1]) // BLOCK):
        code = int(a.block_code[b])
        block = [int(c) for c in cols[BLOCK * b : BLOCK * (b + 1)]]
        real = [c for c in block if c != a.columns]
        # padding only ends a group: once it starts, the block holds nothing else
        assert block == real + [a.columns] * (BLOCK - len(real))
        if runs and runs[-1][0] == code:
            assert len(runs[-1][1]) % BLOCK == 0, "a group continues after padding"
            runs[-1][1].extend(real)
        else:
            runs.append((code, real))
    return runs


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
    # groups: one per (row, code) present, codes ascending within a row, each padded to
    # fewer than BLOCK extra entries, columns ascending within a group
    for r in range(rows):
        groups = row_groups(a, r)
        present = sorted(set(shared.indices[r][shared.mask[r]].tolist()))
        assert [code for code, _ in groups] == present
        for code, columns_of in groups:
            assert columns_of == sorted(columns_of)
            assert len(columns_of) == int((shared.indices[r][shared.mask[r]] == code).sum())
    assert a.cols.numel() == BLOCK * a.block_code.numel()
    assert int(a.row_ptr[-1]) == a.cols.numel()


def test_higher_dimensional_weights_flatten_to_rows() -> None:
    shared = make_shared((6, 3, 2, 5), 0.4, k=256, seed=3)
    a = build_shared_csr(shared)
    assert (a.rows, a.columns) == (6, 30)
    torch.testing.assert_close(decode(a), shared.dense().reshape(6, 30), rtol=0, atol=0)


def test_long_groups_fill_many_blocks() -> None:
    columns = 4180  # 4180 weights of one code in one row: 522.5 blocks
    mask = torch.ones(2, columns, dtype=torch.bool)
    indices = torch.zeros(2, columns, dtype=torch.uint8)
    indices[1, ::2] = 1
    shared = SharedTensor(torch.tensor([-0.5, 0.25]), indices, mask)
    a = build_shared_csr(shared)
    # row 0: one group of 4180 -> 523 blocks; row 1: two codes of 2090 -> 262 blocks each
    assert a.row_ptr.tolist() == [0, 523 * BLOCK, (523 + 2 * 262) * BLOCK]
    assert a.block_code.tolist() == [0] * 523 + [0] * 262 + [1] * 262
    torch.testing.assert_close(decode(a), shared.dense(), rtol=0, atol=0)


def test_byte_count_covers_every_array() -> None:
    shared = make_shared((64, 900), 0.09, k=32, seed=1)
    a = build_shared_csr(shared)
    expected = 8 * (64 + 1) + a.block_code.numel() + 2 * a.cols.numel() + 4 * 32
    assert a.block_code.numel() * BLOCK == a.cols.numel()
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
        assert a.nbytes < 2.7 * a.nnz


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


def test_the_torch_csr_copy_is_a_valid_csr_with_the_same_product() -> None:
    shared = make_shared((40, 300), 0.3, k=8, seed=3)  # many groups per row
    layer = SparseLinear.from_shared(shared, backend="torch")
    csr = layer._torch_csr(torch.device("cpu"))
    crow, col = csr.crow_indices(), csr.col_indices()
    for r in range(layer.rows):  # within a row the columns ascend, as MKL and cuSPARSE want
        row = col[int(crow[r]) : int(crow[r + 1])]
        assert bool((row[1:] > row[:-1]).all()), f"row {r}: {row.tolist()}"
    torch.sparse_csr_tensor(  # raises when an invariant is broken
        crow, col, csr.values(), size=tuple(csr.shape), check_invariants=True
    )
    torch.testing.assert_close(csr.to_dense(), shared.dense())
    x = torch.randn(5, 300)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ shared.dense().t(), rtol=1e-5, atol=1e-5)


def test_loading_a_state_dict_drops_the_float_csr_copy() -> None:
    shared = make_shared((16, 50), 0.4, seed=4)
    layer = SparseLinear.from_shared(shared)
    x = torch.randn(4, 50)
    with torch.no_grad():
        layer(x)  # a batch builds the float CSR copy
        assert layer.cache_nbytes > 0
        state = layer.state_dict()
        layer.load_state_dict({**state, "codebook": 2 * state["codebook"]})
        assert layer.cache_nbytes == 0
        batch = layer(x)
        single = torch.stack([layer(row) for row in x])
    expected = x @ (2 * shared.dense()).t()
    torch.testing.assert_close(batch, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, expected, rtol=1e-5, atol=1e-5)
