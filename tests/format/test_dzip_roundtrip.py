"""Property-based round trips through a whole .dzip file: every encoding, bit-exact."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip.format import DzipReader, DzipWriter, read_compressed
from deepzip.format.dzip_spec import DTYPE_IDS
from deepzip.quantize.shared import SharedTensor

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
CODERS = ("huffman", "ans", "auto", "raw")


@st.composite
def shapes(draw: st.DrawFn, max_numel: int = 3000) -> tuple[int, ...]:
    """Rank 0..5; sizes include 0 and 1; at most ``max_numel`` elements."""
    rank = draw(st.integers(0, 5))
    dims = []
    for _ in range(rank):
        budget = max(1, max_numel // max(1, math.prod(dims)))
        dims.append(draw(st.integers(0, min(budget, 60))))
    return tuple(dims)


def _bits(t: torch.Tensor) -> bytes:
    """The tensor's raw bytes (bit-exact comparison, NaN payloads and -0.0 included)."""
    c = t.contiguous()
    if c.numel() == 0:
        return b""
    if c.dtype == torch.bool:
        c = c.view(torch.uint8)
    return c.reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module")
def dzip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file for every example of a module: each example overwrites it (an atomic replace).

    Hypothesis refuses function-scoped fixtures such as ``tmp_path`` (one per call, not per
    example). pytest's retention policy removes this directory later; ``mkdtemp`` left one
    behind per example.
    """
    return tmp_path_factory.mktemp("roundtrip") / "t.dzip"


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes(),
    dtype=st.sampled_from(sorted(DTYPE_IDS, key=str)),
    seed=st.integers(0, 2**32 - 1),
)
def test_raw_any_dtype_bit_exact(
    dzip_path: Path, shape: tuple[int, ...], dtype: torch.dtype, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    item = torch.empty((), dtype=dtype).element_size()
    raw = rng.integers(0, 256, n * item, dtype=np.uint8)
    if dtype == torch.bool:
        raw &= 1
    if n:
        tensor = torch.from_numpy(raw).view(dtype).reshape(shape)
    else:
        tensor = torch.empty(shape, dtype=dtype)
    path = dzip_path
    with DzipWriter(path) as w:
        w.add_raw("t", tensor)
    with DzipReader(path) as r:
        back = r.tensor("t")
    assert back.dtype == dtype
    assert tuple(back.shape) == shape
    assert _bits(back) == _bits(tensor)


@st.composite
def shared_tensors(draw: st.DrawFn) -> tuple[SharedTensor, float]:
    shape = draw(shapes())
    k = draw(st.one_of(st.integers(1, 4), st.integers(1, 256), st.just(256)))
    sparsity = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    g = torch.Generator().manual_seed(seed)
    codebook = torch.sort(torch.randn(k, generator=g)).values
    # skewed indices so the entropy coders have something to do
    logits = torch.randn(k, generator=g) * 2
    idx = torch.multinomial(torch.softmax(logits, 0), max(1, math.prod(shape)), True, generator=g)
    idx = idx[: math.prod(shape)].reshape(shape).to(torch.uint8)
    mask = torch.rand(shape, generator=g) >= sparsity
    return SharedTensor(codebook, idx * mask, mask), sparsity


@settings(max_examples=80, deadline=None)
@given(
    case=shared_tensors(),
    dtype=st.sampled_from(FLOATS),
    coder=st.sampled_from(CODERS),
    layout=st.sampled_from(["auto", "dense", "sparse"]),
    width=st.integers(1, 16),
)
def test_shared_bit_exact(
    dzip_path: Path,
    case: tuple[SharedTensor, float],
    dtype: torch.dtype,
    coder: str,
    layout: str,
    width: int,
) -> None:
    shared, _ = case
    path = dzip_path
    with DzipWriter(path) as w:
        rec = w.add_shared(
            "w",
            shared,
            dtype=dtype,
            gap_width=width,
            layout=layout,  # type: ignore[arg-type]
            coder=coder,  # type: ignore[arg-type]
        )
    if layout == "sparse":
        assert rec.encoding == "shared_sparse"
    elif layout == "dense" or bool(shared.mask.all()):
        assert rec.encoding == "shared_dense"
    if coder != "auto":
        assert {p.coder for p in rec.parts if p.coder is not None} == {coder}
    # the spec decodes a pruned element as +0.0 (SharedTensor.dense() gives -0.0 there when
    # codebook[0] < 0: numerically equal, but not the same bits)
    kept_values = shared.codebook[shared.indices.long()]
    expected = torch.where(shared.mask, kept_values, torch.zeros(())).to(dtype)
    with DzipReader(path) as r:
        back = r.tensor("w")
        got = r.shared("w")
    assert back.dtype == dtype
    assert back.shape == shared.indices.shape
    assert _bits(back) == _bits(expected)
    assert torch.equal(back, shared.dense().to(dtype))
    assert torch.equal(got.mask, shared.mask)
    assert torch.equal(got.indices, shared.indices)  # pruned positions hold 0 on both sides
    assert torch.equal(got.codebook, shared.codebook)
    assert rec.kept == int(shared.mask.sum())


@settings(max_examples=50, deadline=None)
@given(
    shape=shapes(),
    dtype=st.sampled_from(FLOATS),
    sparsity=st.sampled_from([0.0, 0.3, 0.9, 0.999, 1.0]),
    coder=st.sampled_from(CODERS),
    width=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_sparse_float_bit_exact(
    dzip_path: Path,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    sparsity: float,
    coder: str,
    width: int,
    seed: int,
) -> None:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g).to(dtype)
    mask = torch.rand(shape, generator=g) >= sparsity
    path = dzip_path
    with DzipWriter(path) as w:
        w.add_sparse_float("s", t, mask, gap_width=width, coder=coder)  # type: ignore[arg-type]
    with DzipReader(path) as r:
        back = r.tensor("s")
    assert back.dtype == dtype
    assert _bits(back) == _bits(torch.where(mask, t, torch.zeros((), dtype=dtype)))


@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_gaps_longer_than_several_fillers(tmp_path: Path, width: int) -> None:
    """Survivors separated by runs needing 0, 1, several and many fillers; first and last."""
    n = 5000
    mask = torch.zeros(n, dtype=torch.bool)
    pos = [0, 1, 2 + (1 << width), 3 + 5 * (1 << width), 4000, n - 1]
    mask[pos] = True
    idx = torch.zeros(n, dtype=torch.uint8)
    idx[pos] = torch.tensor([0, 1, 2, 1, 0, 2], dtype=torch.uint8)
    shared = SharedTensor(torch.tensor([-1.0, 0.5, 2.0]), idx, mask)
    path = tmp_path / "t.dzip"
    with DzipWriter(path) as w:
        rec = w.add_shared("w", shared, gap_width=width, layout="sparse")
        w.add_sparse_float("f", shared.dense(), mask, gap_width=width)
    gaps = rec.part("gaps")
    assert gaps is not None
    assert gaps.symbols is not None
    assert gaps.symbols > len(pos)  # fillers were needed and are counted in the stream
    with DzipReader(path) as r:
        assert torch.equal(r.tensor("w"), shared.dense())
        assert torch.equal(r.tensor("f"), shared.dense())
        assert torch.equal(r.shared("w").mask, mask)


def test_many_tensors_in_state_dict_order(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    names = [f"layer{i}.weight" for i in (3, 1, 2, 0)]  # deliberately not sorted
    path = tmp_path / "t.dzip"
    with DzipWriter(path, metadata={"user": {"k": "v"}}) as w:
        for i, name in enumerate(names):
            if i % 2:
                w.add_raw(name, torch.randn(3, 4, generator=g))
            else:
                idx = torch.randint(0, 4, (3, 4), generator=g, dtype=torch.uint8)
                w.add_shared(name, SharedTensor(torch.arange(4.0), idx, torch.ones(3, 4).bool()))
    c = read_compressed(path)
    assert c.order == names
    assert set(c.shared) == {names[0], names[2]}
    assert set(c.raw) == {names[1], names[3]}
    assert c.dtypes == dict.fromkeys(names, torch.float32)
    assert c.metadata == {"user": {"k": "v"}}
