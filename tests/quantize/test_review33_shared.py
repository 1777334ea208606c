"""Trainable shared weights: behaviour that mutation testing of quantize/shared.py found
unchecked (review 33). Expected values are written out by hand."""

from __future__ import annotations

import pytest
import torch

from deepzip.errors import InvalidTensorError
from deepzip.quantize.shared import SharedWeight

# codebook entry 0: one member; entry 1: three; entry 2: one member that is pruned, so none
INDICES = torch.tensor([[0, 1], [1, 1], [2, 0]], dtype=torch.uint8)
MASK = torch.tensor([[True, True], [True, True], [False, False]])
GRAD = torch.tensor([[1.0, 2.0], [4.0, 6.0], [8.0, 16.0]])


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("sum", [1.0, 12.0, 0.0]),
        # each entry's members' mean: a single member's own gradient, an empty entry's 0
        ("mean", [1.0, 4.0, 0.0]),
    ],
)
def test_codebook_gradient_of_single_and_empty_entries(rule: str, expected: list[float]) -> None:
    sw = SharedWeight(torch.tensor([-1.0, 0.5, 2.0]), INDICES, MASK, grad=rule)  # type: ignore[arg-type]
    out = sw(torch.zeros(3, 2))
    assert out.tolist() == [[-1.0, 0.5], [0.5, 0.5], [0.0, 0.0]]
    out.backward(GRAD)
    assert sw.codebook.grad is not None
    assert sw.codebook.grad.tolist() == expected


@pytest.mark.parametrize("which", ["indices", "mask"])
def test_one_buffer_made_under_inference_mode(which: str) -> None:
    """A buffer replaced by an inference tensor (no version counter) while the other is a
    plain tensor: the forward still follows it."""
    sw = SharedWeight(torch.tensor([-1.0, 0.5, 2.0]), INDICES, MASK)
    with torch.inference_mode():
        if which == "indices":
            replacement = torch.tensor([[2, 2], [0, 1], [1, 1]], dtype=torch.uint8)
        else:
            replacement = torch.tensor([[False, True], [True, False], [True, True]])
    assert replacement.is_inference()
    setattr(sw, which, replacement)
    indices = sw.indices.long()
    expected = torch.tensor([-1.0, 0.5, 2.0])[indices] * sw.mask
    assert torch.equal(sw(torch.zeros(3, 2)), expected)


@pytest.mark.parametrize("k", [0, 257])
def test_a_codebook_of_no_or_too_many_entries_is_refused(k: int) -> None:
    indices = torch.zeros(2, 2, dtype=torch.uint8)
    mask = torch.zeros(2, 2, dtype=torch.bool)  # (nothing kept: no index is out of range)
    with pytest.raises(InvalidTensorError, match=rf"1\.\.256 entries, got shape \({k},\)"):
        SharedWeight(torch.zeros(k), indices, mask)


def test_an_integer_codebook_is_refused() -> None:
    indices = torch.zeros(2, 2, dtype=torch.uint8)
    with pytest.raises(
        InvalidTensorError, match=r"1-D floating point .* got shape \(2,\) torch.int64"
    ):
        SharedWeight(torch.tensor([1, 2]), indices, torch.ones(2, 2, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.bool])
def test_indices_that_are_not_integers_are_refused(dtype: torch.dtype) -> None:
    indices = torch.zeros(2, 2, dtype=dtype)  # (zeros: every value in range)
    with pytest.raises(InvalidTensorError, match=rf"indices must be integers, got {dtype}"):
        SharedWeight(torch.tensor([0.5, 1.5]), indices, torch.ones(2, 2, dtype=torch.bool))


@pytest.mark.parametrize("bad", [-1, 2])
def test_indices_outside_the_codebook_are_refused(bad: int) -> None:
    """-1 would wrap to 255 in the uint8 buffer; 2 (= k) would read the +0.0 that stands for a
    pruned position."""
    indices = torch.tensor([[0, 1], [bad, 0]])
    with pytest.raises(
        InvalidTensorError, match=rf"in \[0, 2\) for a codebook of 2 entries, got {bad}$"
    ):
        SharedWeight(torch.tensor([0.5, 1.5]), indices, torch.ones(2, 2, dtype=torch.bool))
