"""Weight sharing (review 29): pruned positions are +0.0, the centroid gradient is the exact
per-cluster sum, float64 weights and importance beyond float32 are refused by name before any
layer changes, and an all-zero layer that was never pruned is not called pruned."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.importance import fisher_diagonal
from deepzip.quantize.shared import SharedTensor, SharedWeight, attach_shared, get_shared


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def _negative_zeros(t: torch.Tensor) -> int:
    return int(((t == 0) & torch.signbit(t)).sum())


def test_pruned_positions_are_positive_zero_everywhere(tmp_path: Path) -> None:
    model = _mlp()
    dz.prune_(model, dz.PruneConfig(sparsity=0.7))
    dz.quantize_(model, dz.QuantizeConfig(bits=4))
    shared = get_shared(model[0])
    assert shared is not None
    assert float(shared.codebook.detach()[0]) < 0  # index 0 at every pruned position
    assert _negative_zeros(model[0].weight) == 0  # the forward pass
    assert _negative_zeros(model[0].parametrizations.weight.original) == 0  # the state dict
    assert _negative_zeros(shared.export().dense()) == 0
    path = tmp_path / "m.dzip"
    dz.save(model, path)
    loaded = dz.load_state_dict(path)
    dz.strip_(model)
    for name, value in model.state_dict().items():
        # the stripped model is the saved one, bit for bit (a -0.0 differed from +0.0)
        assert torch.equal(value.view(torch.int32), loaded[name].view(torch.int32)), name


def test_dense_of_a_shared_tensor_keeps_pruned_positions_positive_zero() -> None:
    shared = SharedTensor(
        torch.tensor([-1.0, 2.0]),
        torch.tensor([0, 0, 1], dtype=torch.uint8),
        torch.tensor([True, False, True]),
    )
    dense = shared.dense()
    assert dense.tolist() == [-1.0, 0.0, 2.0]
    assert not bool(torch.signbit(dense[1]))


def test_centroid_gradient_is_the_exact_sum_whatever_the_other_clusters() -> None:
    codebook = torch.tensor([-1.0, 1.0])
    indices = torch.tensor([0, 0, 1, 1])
    mask = torch.ones(4, dtype=torch.bool)
    shared = SharedWeight(codebook, indices, mask)
    grad = torch.tensor([1e8, 1e8, 1e-9, 2e-9])
    shared(torch.zeros(4)).backward(grad)
    # reference: autograd of an explicit gather
    ref = codebook.clone().requires_grad_(True)
    ref[indices].backward(grad)
    assert shared.codebook.grad is not None
    assert ref.grad is not None
    # the prefix-sum difference lost the second cluster (0 instead of 3e-9)
    torch.testing.assert_close(shared.codebook.grad, ref.grad, rtol=1e-6, atol=0.0)


def test_centroid_gradient_matches_an_explicit_gather_exactly() -> None:
    torch.manual_seed(1)
    shape = (40, 30)
    codebook = torch.sort(torch.randn(16)).values
    indices = torch.randint(0, 16, shape)
    indices[:, 0] = 3  # a cluster of pruned members only: no gradient
    mask = torch.rand(shape) > 0.4
    mask[:, 0] = False
    indices[indices == 3] = 4
    indices[:, 0] = 3
    shared = SharedWeight(codebook, indices, mask)
    grad = torch.randn(shape)
    shared(torch.zeros(shape)).backward(grad)
    expected = torch.zeros(16, dtype=torch.float64).index_add_(
        0, indices[mask], grad[mask].double()
    )
    assert shared.codebook.grad is not None
    assert torch.equal(shared.codebook.grad, expected.float())
    assert float(shared.codebook.grad[3]) == 0.0


def test_a_layer_with_every_weight_pruned_gets_a_zero_codebook_gradient() -> None:
    indices = torch.zeros(3, 4, dtype=torch.uint8)
    shared = SharedWeight(torch.tensor([-1.0, 1.0]), indices, torch.zeros(3, 4) > 0)
    out = shared(torch.zeros(3, 4))
    assert _negative_zeros(out) == 0
    out.backward(torch.ones(3, 4))
    assert shared.codebook.grad is not None
    assert shared.codebook.grad.tolist() == [0.0, 0.0]


def test_a_float64_weight_beyond_float32_is_refused_by_name_before_any_layer_changes() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2).double())
    with torch.no_grad():
        model[1].weight[0, 1] = 1e39
    with pytest.raises(InvalidTensorError, match=r"1\.weight.*float32.*1e\+39"):
        dz.quantize_(model, dz.QuantizeConfig(bits=2))
    assert get_shared(model[0]) is None  # layer 0 was quantized before the error


def test_importance_beyond_float32_is_refused_by_name_before_any_layer_changes() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    importance = {
        "0.weight": torch.ones(3, 4),
        "1.weight": torch.full((2, 3), 1e39, dtype=torch.float64),
    }
    config = dz.QuantizeConfig(bits=2, importance="fisher")
    with pytest.raises(InvalidTensorError, match=r"1\.weight.*importance.*float32"):
        dz.quantize_(model, config, importance=importance)
    assert get_shared(model[0]) is None


def test_importance_below_float32_is_not_called_zero() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    importance = {"0.weight": torch.full((3, 4), 1e-50, dtype=torch.float64)}
    config = dz.QuantizeConfig(bits=2, importance="fisher")
    with pytest.raises(InvalidTensorError, match=r"0\.weight.*float32.*scale it up"):
        dz.quantize_(model, config, importance=importance)


def test_an_all_zero_layer_that_was_never_pruned_is_not_reported_as_pruned() -> None:
    model = _mlp()
    with torch.no_grad():
        model[2].weight.zero_()
    dz.prune_(model, dz.PruneConfig(sparsity=0.5, include=("0",)))
    mask = model[0].parametrizations.weight[0].mask
    mask.zero_()  # every weight of layer 0 pruned
    report = dz.quantize_(model, dz.QuantizeConfig(bits=2))
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["0.weight"] == "no surviving weights (all pruned); left as zeros"
    assert "pruned" not in reasons["2.weight"]
    assert reasons["2.weight"].startswith("no surviving weights (every weight is zero)")


def test_a_float64_codebook_beyond_float32_is_refused_and_the_module_unchanged() -> None:
    module = nn.Linear(2, 2)
    before = module.weight.detach().clone()
    shared = SharedTensor(
        torch.tensor([-1.0, 1e39], dtype=torch.float64),
        torch.tensor([[0, 1], [1, 0]], dtype=torch.uint8),
        torch.ones(2, 2, dtype=torch.bool),
    )
    with pytest.raises(InvalidTensorError, match=r"codebook.*float32.*entry 1"):
        attach_shared(module, "weight", shared)
    assert get_shared(module) is None
    assert torch.equal(module.weight, before)


@pytest.mark.parametrize("bad", [1.5, True, "2", 0])
def test_fisher_max_batches_must_be_a_positive_integer(bad: object) -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    seen: list[int] = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(5):
            seen.append(i)
            yield torch.randn(2, 4), torch.randint(0, 3, (2,))

    # 1.5 never equalled the batch count: every batch was read (an endless loader: forever)
    with pytest.raises(ConfigError, match="max_batches"):
        fisher_diagonal(model, batches(), max_batches=bad)  # type: ignore[arg-type]
    assert seen == []


@pytest.mark.parametrize("method", ["kmeans", "uniform", "ecsq"])
def test_a_float64_layer_is_clustered_as_given(method: str) -> None:
    # ten distinct float64 weights within one float32 step of 1.0
    model = nn.Linear(10, 1).double()
    with torch.no_grad():
        model.weight.copy_(1 + torch.arange(10, dtype=torch.float64).view(1, 10) * 1e-12)
    expected_sse = float(((model.weight.detach() - 1.0) ** 2).sum())
    report = dz.quantize_(model, dz.QuantizeConfig(bits=2, method=method))  # type: ignore[arg-type]
    layer = report.layers[0]
    assert layer.levels == 1
    # was: SSE 0.0 and "only 1 distinct value(s)" (the weights were rounded to float32 first)
    assert layer.sse == pytest.approx(expected_sse, rel=1e-3)
    assert not any("distinct value" in note for note in layer.notes)


class _Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def test_strip_keeps_a_parametrization_registered_on_top_of_the_shared_weight() -> None:
    # strip_ removed the whole list: the user's own parametrization, registered after
    # quantization, was baked into the weight and dropped without a word
    from torch.nn.utils import parametrize

    model = _mlp()
    dz.prune_(model, dz.PruneConfig(sparsity=0.5))
    dz.quantize_(model, dz.QuantizeConfig(bits=3))
    shared = get_shared(model[0])
    assert shared is not None
    with torch.no_grad():
        shared.codebook.add_(0.01)  # as fine-tuning does: the stored original is now stale
    levels = shared.export().dense()
    parametrize.register_parametrization(model[0], "weight", _Double())
    effective = model[0].weight.detach().clone()
    dz.strip_(model)
    plist = model[0].parametrizations.weight
    assert [type(p) for p in plist] == [_Double]
    assert torch.equal(plist.original.detach(), levels)
    assert plist.original.requires_grad
    assert torch.equal(model[0].weight.detach(), effective)
    assert get_shared(model[0]) is None
    # alone, a shared weight still strips to a plain parameter
    assert not parametrize.is_parametrized(model[2])
    assert isinstance(model[2].weight, nn.Parameter)
