"""Behaviour of the sparse runtime that mutation testing found unchecked (review 33).

Every expected value comes from a dense torch reference or from the layout's definition,
never from the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from runtime_helpers import make_shared
from torch import nn
from torch.nn import functional as F

import deepzip.runtime.sparse as sparse_mod
from deepzip.errors import InvalidTensorError
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime import (
    SparseConv,
    SparseLinear,
    build_shared_csr,
    check_shared,
    sparse_conv_unsupported,
)
from deepzip.runtime.kernels import Kernels, kernels, set_threads


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- check_shared


def _full(shape: tuple[int, ...], dtype: torch.dtype, value: int = 0) -> torch.Tensor:
    return torch.full(shape, value, dtype=dtype)


@pytest.mark.parametrize(
    ("shared", "message"),
    [
        # an empty codebook with nothing surviving: no index check can catch it
        (SharedTensor(torch.zeros(0), _full((2, 2), torch.uint8), _full((2, 2), torch.bool)),
         "1..256"),
        (SharedTensor(torch.arange(4), _full((2, 2), torch.uint8), _full((2, 2), torch.bool, 1)),
         "1-D float"),
        # a 0/1 mask of the right shape, but not bool
        (SharedTensor(torch.zeros(2), _full((2, 2), torch.uint8), _full((2, 2), torch.uint8, 1)),
         "mask must be bool"),
    ],
)  # fmt: skip
def test_check_shared_rejects_what_the_layout_cannot_hold(
    shared: SharedTensor, message: str
) -> None:
    with pytest.raises(InvalidTensorError, match=message):
        check_shared("w", shared)


# ---------------------------------------------------------------- layout


def test_a_group_of_whole_blocks_gets_no_padding_block() -> None:
    # row 0: 8 weights of code 0 (one block); row 1: 16 of code 1 and 3 of code 0
    indices = torch.zeros(2, 24, dtype=torch.uint8)
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[0, :8] = True
    mask[1, :19] = True
    indices[1, :16] = 1
    a = build_shared_csr(SharedTensor(torch.tensor([0.5, -2.0]), indices, mask))
    assert a.row_ptr.tolist() == [0, 8, 8 + 8 + 16]  # ceil(8/8), ceil(3/8) + ceil(16/8) blocks
    assert a.block_code.tolist() == [0, 0, 1, 1]
    assert a.cols.numel() == 32


def test_density_counts_surviving_weights_and_is_zero_for_an_empty_layer() -> None:
    shared = make_shared((6, 10), 0.5, seed=1)
    layer = SparseLinear.from_shared(shared)
    assert layer.density == int(shared.mask.sum()) / 60
    empty = SparseLinear(build_shared_csr(make_shared((0, 5), 0.5)))
    assert empty.density == 0.0
    assert isinstance(empty.density, float)


# ---------------------------------------------------------------- matmul_t and errors


def test_matmul_t_rejects_a_wrong_shape_and_an_unnamed_layer_is_named_by_class() -> None:
    layer = SparseLinear(build_shared_csr(make_shared((4, 9), 0.5)))  # no name
    with pytest.raises(InvalidTensorError, match=r"^SparseLinear: expected an input of 9 rows"):
        layer.matmul_t(torch.randn(9))  # 1-D, even of the right length
    with pytest.raises(InvalidTensorError, match=r"^SparseLinear: expected an input of 9 rows"):
        layer.matmul_t(torch.randn(8, 3))
    with pytest.raises(InvalidTensorError, match=r"^SparseLinear: expected a floating-point"):
        layer(torch.ones(2, 9, dtype=torch.int64))


def test_matmul_t_keeps_trailing_dimensions_and_adds_the_bias() -> None:
    shared = make_shared((7, 12), 0.5, seed=2)
    bias = torch.randn(7, generator=torch.Generator().manual_seed(3))
    xt = torch.randn(12, 2, 3, generator=torch.Generator().manual_seed(4))
    expected = torch.einsum("rc,cab->rab", shared.dense(), xt) + bias[:, None, None]
    for backend in ("numba", "torch"):
        layer = SparseLinear.from_shared(shared, backend=backend)
        with torch.no_grad():
            _close(layer.matmul_t(xt, bias), expected)


@pytest.mark.parametrize("backend", ["numba", "auto"])
def test_a_bfloat16_module_multiplies_in_float32(backend: str) -> None:
    shared = make_shared((16, 40), 0.3, k=8, seed=5)
    bias = torch.randn(16, generator=torch.Generator().manual_seed(6))
    layer = SparseLinear.from_shared(shared, bias, backend=backend).to(torch.bfloat16)  # type: ignore[arg-type]
    x = torch.randn(40, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    # the reference: the bfloat16 buffers and input, multiplied in float32
    cb = shared.codebook.to(torch.bfloat16).float()
    weight = cb[shared.indices.long()] * shared.mask
    ref = weight @ x.float() + bias.to(torch.bfloat16).float()
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2)


def test_the_compiled_path_follows_a_replaced_buffer() -> None:
    shared = make_shared((10, 30), 0.4, k=8, seed=8)
    layer = SparseLinear.from_shared(shared, backend="numba")
    x = torch.randn(30, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        _close(layer(x), shared.dense() @ x)
        layer.codebook = 3 * layer.codebook  # a new buffer (nn.Module.__setattr__)
        _close(layer(x), 3 * shared.dense() @ x)


def test_a_single_output_feature_gets_its_bias() -> None:
    # a one-value bias: the kernels must not take "no bias" for a bias of length 1
    shared = make_shared((1, 20), 0.6, k=4, seed=12)
    bias = torch.tensor([0.75])
    layer = SparseLinear.from_shared(shared, bias, backend="numba")
    x = torch.randn(3, 20, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        _close(layer(x[0]), F.linear(x[0], shared.dense(), bias))  # one vector: spmv
        _close(layer(x), F.linear(x, shared.dense(), bias))  # a batch: spmm


def test_a_scalar_input_is_refused_by_name() -> None:
    layer = SparseLinear.from_shared(make_shared((4, 1), 0.5), name="fc.weight")
    with pytest.raises(InvalidTensorError, match=r"^fc\.weight: expected inputs of shape"):
        layer(torch.tensor(1.0))


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_the_gradient_of_a_float64_input_matches_the_dense_one(backend: str) -> None:
    shared = make_shared((9, 14), 0.5, k=8, seed=14)
    layer = SparseLinear.from_shared(shared, backend=backend)  # type: ignore[arg-type]
    x = torch.randn(14, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    x.requires_grad_()
    weights = torch.arange(9, dtype=torch.float64)
    (layer(x) * weights).sum().backward()
    assert x.grad is not None
    assert x.grad.dtype == torch.float64
    _close(x.grad, shared.dense().double().t() @ weights)


def test_a_float64_module_loading_a_state_dict_multiplies_by_the_new_codebook() -> None:
    # a float64 codebook reaches the kernels as a float32 copy: loading must drop that copy
    shared = make_shared((8, 24), 0.5, k=8, seed=22)
    layer = SparseLinear.from_shared(shared, backend="numba").double()
    x = torch.randn(24, dtype=torch.float64, generator=torch.Generator().manual_seed(23))
    dense = shared.dense().double()
    with torch.no_grad():
        _close(layer(x), dense @ x)
        state = layer.state_dict()
        layer.load_state_dict({**state, "codebook": -2 * state["codebook"]})
        _close(layer(x), -2 * dense @ x)


# ---------------------------------------------------------------- serial or parallel kernels


@pytest.fixture
def recorded_kernels(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Which compiled kernel each product calls (the real kernels still compute)."""
    calls: list[str] = []
    real = kernels()

    def record(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            calls.append(name)
            return fn(*args)

        return call

    fake = Kernels(*(record(name, fn) for name, fn in zip(Kernels._fields, real, strict=True)))
    monkeypatch.setattr(sparse_mod, "kernels", lambda: fake)
    threads = torch.get_num_threads()
    try:
        yield calls
    finally:
        torch.set_num_threads(threads)


def test_the_thread_pool_runs_only_enough_work_on_several_threads(
    recorded_kernels: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = make_shared((24, 50), 0.5, k=4, seed=10)
    layer = SparseLinear.from_shared(shared, backend="numba")
    work = layer.cols.numel()  # entries × one right-hand column
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(11))
    cases = [  # (torch threads, threshold, right-hand columns, kernel expected)
        (2, work, 1, "spmv"),  # exactly the threshold: parallel
        (2, work + 1, 1, "spmv_serial"),
        (1, 1, 1, "spmv_serial"),  # one thread: never the pool
        (2, 3 * work, 3, "spmm"),
        (2, 3 * work + 1, 3, "spmm_serial"),
        (1, 1, 3, "spmm_serial"),
    ]
    for threads, threshold, n, name in cases:
        torch.set_num_threads(threads)
        monkeypatch.setattr(sparse_mod, "_PARALLEL_MIN_WORK", threshold)
        recorded_kernels.clear()
        with torch.no_grad():
            y = layer(x[0]) if n == 1 else layer(x)
        assert recorded_kernels == [name], (threads, threshold, n)
        _close(y, (x[0] if n == 1 else x) @ shared.dense().t())


def test_set_threads_caps_at_the_pool_and_at_least_one() -> None:
    import numba

    pool = int(vars(numba.config)["NUMBA_NUM_THREADS"])
    before = numba.get_num_threads()
    try:
        assert set_threads(0) == 1
        assert numba.get_num_threads() == 1
        assert set_threads(-5) == 1
        assert set_threads(pool + 7) == pool
        assert numba.get_num_threads() == pool
    finally:
        numba.set_num_threads(before)


# ---------------------------------------------------------------- convolutions


def _conv_pair(conv: nn.Conv1d | nn.Conv2d, seed: int) -> tuple[nn.Conv1d | nn.Conv2d, SparseConv]:
    """``conv`` with its weight replaced by a decoded shared one, and its sparse form."""
    shared = make_shared(tuple(conv.weight.shape), 0.5, k=16, seed=seed)
    sparse = SparseConv.from_conv(conv, shared, backend="numba")
    with torch.no_grad():
        conv.weight.copy_(shared.dense())
    return conv, sparse


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv1d(2, 3, kernel_size=5, padding="same"),  # total 4: 2 left, 2 right
        lambda: nn.Conv1d(2, 3, kernel_size=3, dilation=3, padding="same"),  # total 6
        lambda: nn.Conv2d(2, 3, kernel_size=(3, 5), dilation=(2, 1), padding="same"),
        lambda: nn.Conv2d(2, 3, kernel_size=(5, 3), padding="same", padding_mode="reflect"),
    ],
)
def test_odd_same_padding_matches_the_dense_convolution(
    make: Callable[[], nn.Conv1d | nn.Conv2d],
) -> None:
    torch.manual_seed(16)
    conv, sparse = _conv_pair(make(), seed=17)
    spatial = (9, 10) if isinstance(conv, nn.Conv2d) else (11,)
    x = torch.randn(2, 2, *spatial, generator=torch.Generator().manual_seed(18))
    with torch.no_grad():
        expected = conv(x)
        actual = sparse(x)
    assert actual.shape == expected.shape == (x.shape[0], 3, *x.shape[2:])
    _close(actual, expected)


def test_a_convolution_subclass_has_no_sparse_form() -> None:
    class Scaled(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    conv = Scaled(2, 3, 3)
    assert "not exactly a Conv1d or Conv2d" in str(sparse_conv_unsupported(conv))
    with pytest.raises(InvalidTensorError, match=r"^c\.weight: Scaled is not exactly"):
        SparseConv.from_conv(conv, make_shared((3, 2, 3, 3), 0.5), name="c.weight")


def test_inputs_of_the_wrong_rank_are_refused_by_name() -> None:
    torch.manual_seed(19)
    _, conv2d = _conv_pair(nn.Conv2d(3, 4, 3), seed=20)
    _, conv1d = _conv_pair(nn.Conv1d(3, 4, 3), seed=21)
    conv2d.name, conv1d.name = "c2.weight", "c1.weight"
    with pytest.raises(InvalidTensorError, match=r"^c2\.weight: expected a 2-D input with 3"):
        conv2d(torch.randn(1, 1, 3, 8, 8))  # 5-D, its channel axis happens to hold 3
    with pytest.raises(InvalidTensorError, match=r"^c1\.weight: expected a 1-D input with 3"):
        conv1d(torch.randn(3))  # a bare vector of the channel count
