from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.prune.masks import global_magnitude_masks, quality_mask, sparsity_mask


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    sparsity=st.floats(0.0, 0.999, allow_nan=False),
    seed=st.integers(0, 2**16),
)
def test_sparsity_mask_removes_exact_count_of_smallest(n: int, sparsity: float, seed: int) -> None:
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    keep = sparsity_mask(w, sparsity)
    assert keep.dtype == torch.bool
    assert int((~keep).sum()) == round(sparsity * n)
    if keep.any() and (~keep).any():
        assert w[keep].abs().min() >= w[~keep].abs().max()


def test_pruned_positions_never_come_back() -> None:
    w = torch.tensor([5.0, 0.1, 3.0, 0.2, 4.0, 0.3])
    first = torch.tensor([False, True, True, True, True, True])  # the largest was pruned
    keep = sparsity_mask(w, 0.5, first)
    assert not keep[0]
    assert int(keep.sum()) == 3
    assert keep.tolist() == [False, False, True, False, True, True]


def test_quality_mask_uses_std_threshold() -> None:
    w = torch.tensor([[-2.0, 0.5], [1.0, -0.9]])
    keep = quality_mask(w, quality=1.0, std=1.0)
    assert keep.tolist() == [[True, False], [True, False]]


def test_global_ranks_across_tensors() -> None:
    weights = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([10.0, 20.0, 0.5])}
    masks = global_magnitude_masks(weights, 0.5)
    assert masks["a"].tolist() == [False, False, True]
    assert masks["b"].tolist() == [True, True, False]


def test_ties_are_deterministic_by_position() -> None:
    w = torch.ones(10)
    assert sparsity_mask(w, 0.3).tolist() == [False] * 3 + [True] * 7


@pytest.mark.parametrize("bad", [-0.01, 1.0, 2.0, float("nan")])
def test_bad_sparsity(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        sparsity_mask(torch.randn(4), bad)


def test_nan_weights_name_the_tensor() -> None:
    w = torch.tensor([1.0, float("nan"), 2.0, float("inf")])
    with pytest.raises(InvalidTensorError, match=r"fc1\.weight: 2 non-finite value\(s\).*index 1"):
        sparsity_mask(w, 0.5, name="fc1.weight")
    with pytest.raises(InvalidTensorError, match="big"):
        global_magnitude_masks({"big": w}, 0.5)
