"""A second look at review 29's changes (shared weights, coding, quantize_): the shared
weight's forward is one pass over the weight again (the +0.0 fill after the gather doubled
it), the code packer checks its total bit for bit and refuses a symbol without a code (a
total a few bits off, or a symbol of length 0, gave a silently corrupt stream), an
importance that is not a real tensor is a typed error naming the layer, and
``benchmark_layers`` refuses a runtime override that matches no layer, as
``load_compressed`` does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import deepzip as dz
from deepzip.coding import bitio, huffman
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.incremental.parametrization import SymmetricSharedWeight
from deepzip.quantize.shared import SharedWeight
from deepzip.runtime.bench import benchmark_layers
from deepzip.runtime.load import load_compressed
from deepzip.runtime.policy import RuntimeOverride, RuntimePolicy

# ------------------------------------------------------------ the shared weight's forward


class _WeightSizedOps(TorchDispatchMode):
    """Records every op whose output has ``numel`` elements (a pass over the weight)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel = numel
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.ops.append(str(func))
        return out


def _layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    codebook = torch.tensor([-1.5, -0.25, 0.5, 2.0])
    indices = torch.randint(0, 4, (40, 30), dtype=torch.uint8)
    mask = torch.rand(40, 30) > 0.4
    mask[0, 0] = False
    indices[0, 0] = 0  # a pruned position pointing at a negative entry
    indices[mask & (indices == 2)] = 1  # entry 2 has no member
    return codebook, indices, mask


def test_shared_forward_is_one_pass_over_the_weight() -> None:
    codebook, indices, mask = _layer()
    sw = SharedWeight(codebook, indices, mask)
    weight = torch.zeros(40, 30)
    sw(weight)  # the cached plan is built outside the count
    with _WeightSizedOps(weight.numel()) as mode:
        sw(weight)
    # the gather alone (a fill of the pruned positions after it took as long again)
    assert len(mode.ops) == 1, mode.ops


@pytest.mark.parametrize("grad", ["sum", "mean"])
def test_shared_forward_and_gradient_are_exact(grad: str) -> None:
    codebook, indices, mask = _layer()
    sw = SharedWeight(codebook, indices, mask, grad=grad)  # type: ignore[arg-type]
    out = sw(torch.zeros(40, 30))
    expected = torch.where(mask, codebook[indices.long()], torch.zeros(()))
    assert torch.equal(out.view(torch.int32), expected.view(torch.int32))  # +0.0 bit for bit
    assert not bool(torch.signbit(out[~mask]).any())
    g = torch.randn(40, 30)
    out.backward(g)
    members = indices.long()[mask]
    sums = torch.zeros(4, dtype=torch.float64).index_add_(0, members, g[mask].double())
    if grad == "mean":
        sums = sums / torch.bincount(members, minlength=4).clamp(min=1)
    assert sw.codebook.grad is not None
    torch.testing.assert_close(sw.codebook.grad, sums.float(), rtol=0, atol=1e-6)
    assert float(sw.codebook.grad[2]) == 0.0  # the entry with no member


def test_shared_forward_with_every_position_pruned_and_a_tied_codebook() -> None:
    sw = SharedWeight(
        torch.tensor([-1.0, 1.0]),
        torch.zeros(3, 2, dtype=torch.uint8),
        torch.zeros(3, 2, dtype=torch.bool),
    )
    out = sw(torch.zeros(3, 2, dtype=torch.float16))
    assert out.dtype == torch.float16
    assert not bool(torch.signbit(out).any())
    assert not bool(out.any())
    out.float().sum().backward()
    assert sw.codebook.grad is not None
    assert not bool(sw.codebook.grad.any())
    tied = SymmetricSharedWeight(
        torch.tensor([-0.5, 0.5]),
        torch.tensor([0, 1, 0], dtype=torch.uint8),
        torch.tensor([True, True, False]),
    )
    w = tied(torch.zeros(3))
    assert w.tolist() == [-0.5, 0.5, 0.0]
    assert not bool(torch.signbit(w[2]))


def test_shared_plan_follows_a_mask_changed_in_place() -> None:
    codebook, indices, mask = _layer()
    sw = SharedWeight(codebook, indices, mask)
    sw(torch.zeros(40, 30))
    with torch.no_grad():
        sw.mask[5] = False
    out = sw(torch.zeros(40, 30))
    assert not bool(out[5].any())
    assert not bool(torch.signbit(out[5]).any())


# ------------------------------------------------------------------------- the packer


def test_pack_codes_checks_the_total_bit_for_bit() -> None:
    codes, lengths = np.array([0, 1], np.uint32), np.array([1, 1], np.uint8)
    # three 1-bit codes and two announced: the same byte count, not the same stream
    with pytest.raises(ValueError, match="does not match the codes \\(3 bits"):
        bitio.pack_codes(np.zeros(3, np.uint8), codes, lengths, 2)
    assert bitio.pack_codes(np.array([1, 0, 1], np.uint8), codes, lengths, 3) == b"\xa0"


def test_pack_codes_refuses_a_symbol_of_length_zero() -> None:
    codes, lengths = np.array([0, 1, 0], np.uint32), np.array([1, 1, 0], np.uint8)
    with pytest.raises(ValueError, match="length 0"):
        bitio.pack_codes(np.array([0, 2], np.uint8), codes, lengths, 1)


def test_huffman_encode_refuses_counts_a_few_bits_off() -> None:
    lengths = huffman.code_lengths(np.array([1, 1]))
    with pytest.raises(ValueError, match="does not match"):
        huffman.encode(np.zeros(3, np.uint8), lengths, np.array([1, 1]))


def test_huffman_encode_refuses_a_symbol_without_a_code() -> None:
    counts = np.array([1, 1, 0])
    lengths = huffman.code_lengths(counts)
    with pytest.raises(ValueError, match="no code"):
        huffman.encode(np.array([0, 2], np.uint8), lengths, counts)
    one = huffman.code_lengths(np.array([0, 4, 0]))  # a one-symbol code writes nothing
    assert huffman.encode(np.full(4, 1, np.uint8), one, np.array([0, 4, 0])) == b""
    with pytest.raises(ValueError, match="no code"):
        huffman.encode(np.array([1, 1, 0, 1], np.uint8), one, np.array([0, 4, 0]))


def test_huffman_round_trip_unchanged() -> None:
    rng = np.random.default_rng(0)
    symbols = rng.geometric(0.2, 5000).clip(max=31).astype(np.uint8)
    counts = np.bincount(symbols, minlength=32)
    lengths = huffman.code_lengths(counts)
    payload = huffman.encode(symbols, lengths, counts)
    assert len(payload) == (huffman.encoded_bits(counts, lengths) + 7) // 8
    np.testing.assert_array_equal(huffman.decode(payload, lengths, symbols.size), symbols)


# ------------------------------------------------------------------ quantize_ importance


def test_complex_importance_is_a_typed_error_naming_the_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6))
    before = model[0].weight.detach().clone()
    importance = {"0.weight": torch.ones(6, 8, dtype=torch.complex64)}
    with pytest.raises(InvalidTensorError, match=r"0\.weight: importance must be a real"):
        dz.quantize_(model, dz.QuantizeConfig(bits=2, importance="fisher"), importance=importance)
    assert torch.equal(model[0].weight, before)  # nothing changed


# ------------------------------------------------------------------ benchmark_layers policy


def test_benchmark_layers_refuses_an_override_that_matches_no_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    dz.prune_(model, dz.PruneConfig(sparsity=0.5))
    dz.quantize_(model, dz.QuantizeConfig(bits=4))
    path = tmp_path / "m.dzip"
    dz.save(model, path)
    fresh = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    policy = RuntimePolicy(overrides=(RuntimeOverride("nomatch*", "sparse"),))
    # load_compressed (and so benchmark_model) refuses it; benchmark_layers reported forms as
    # if it had been honoured
    with pytest.raises(ConfigError, match=r"'nomatch\*' matches no compressed layer"):
        load_compressed(path, fresh, policy=policy)
    with pytest.raises(ConfigError, match=r"'nomatch\*' matches no compressed layer"):
        benchmark_layers(path, fresh, torch.randn(2, 16), policy=policy, repeats=1, warmup=0)
    good = RuntimePolicy(overrides=(RuntimeOverride("2", "sparse"),))
    timings = benchmark_layers(path, fresh, torch.randn(2, 16), policy=good, repeats=1, warmup=0)
    assert [t.policy_form for t in timings] == ["dense", "sparse"]
