"""Review regressions for Weightless (``deepzip.weightless``, ``deepzip.quantize.weightless``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.config import PruneConfig, QuantizeConfig, WeightlessConfig
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.shared import SharedTensor, attach_shared, get_shared
from deepzip.quantize.weightless import attach_weightless, get_weightless
from deepzip.weightless import encode_shared, weightless_


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 4))
    dz.prune_(net, PruneConfig(sparsity=0.8))
    return net


def test_a_clustered_layer_without_surviving_weights_is_left_as_zeros() -> None:
    # A clustered layer whose mask is all False was encoded in a filter without keys, whose
    # cells decode some pruned positions as weights: an all-zero layer got non-zero weights.
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    empty = SharedTensor(
        torch.tensor([0.5, 1.0]),
        torch.zeros(8, 8, dtype=torch.uint8),
        torch.zeros(8, 8, dtype=torch.bool),
    )
    attach_shared(net[0], "weight", empty)
    dz.quantize_(net, QuantizeConfig(bits=2, include=("1",)))
    report = weightless_(net, WeightlessConfig(cell_bits=4))
    assert [layer.name for layer in report.layers] == ["1.weight"]
    assert any(s.name == "0.weight" and "no surviving weights" in s.reason for s in report.skipped)
    assert get_weightless(net[0]) is None
    assert get_shared(net[0]) is not None
    weight = net[0].weight
    assert isinstance(weight, torch.Tensor)
    assert not bool(weight.detach().any())


@pytest.mark.parametrize(
    ("reference", "evaluate", "match"),
    [
        (89.24, lambda m: 0.9, "reference must be an accuracy in \\[0, 1\\] \\(a fraction"),
        (float("nan"), lambda m: 0.9, "reference must be an accuracy"),
        ("0.9", lambda m: 0.9, "reference must be an accuracy"),
        (True, lambda m: 0.9, "reference must be an accuracy"),
        (None, lambda m: 90.0, "evaluate\\(model\\) before 0.weight .*\\(a fraction"),
        (None, lambda m: float("nan"), "evaluate\\(model\\) before 0.weight"),
        (0.9, lambda m: float("nan"), "evaluate\\(model\\) after 0.weight at t = 3"),
        (0.9, lambda m: "0.9", "evaluate\\(model\\) after 0.weight at t = 3"),
    ],
)
def test_the_budget_takes_accuracies_in_0_1_only(
    reference: object, evaluate: Callable[[nn.Module], object], match: str
) -> None:
    # A percentage (89.24) or NaN put every width outside the budget (or every one within),
    # silently: the search then kept the first width with within_budget False; a string
    # failed with a bare TypeError.
    net = _net()
    dz.quantize_(net, QuantizeConfig(bits=2))
    with pytest.raises(ConfigError, match=match):
        weightless_(
            net,
            WeightlessConfig(max_cell_bits=6),
            evaluate=evaluate,  # type: ignore[arg-type]
            reference=reference,  # type: ignore[arg-type]
        )


def test_an_accuracy_may_be_a_one_element_tensor_or_a_numpy_number() -> None:
    net = _net()
    dz.quantize_(net, QuantizeConfig(bits=2))
    report = weightless_(
        net,
        WeightlessConfig(max_cell_bits=4),
        evaluate=lambda m: torch.tensor(0.75),  # type: ignore[arg-type,return-value]
        reference=torch.tensor([0.75]).numpy()[0],
    )
    assert [layer.accuracy for layer in report.layers] == [0.75, 0.75]
    assert all(type(layer.accuracy) is float for layer in report.layers)
    assert report.reference_accuracy == 0.75
    assert all(layer.within_budget for layer in report.layers)


@pytest.mark.parametrize(
    ("indices", "mask", "match"),
    [
        (torch.zeros(3, 3, dtype=torch.uint8), torch.ones(2, 2, dtype=torch.bool), "differ"),
        (torch.zeros(2, 2, dtype=torch.uint8), torch.ones(3, 3, dtype=torch.bool), "differ"),
        (torch.tensor([[0.0, 1.5], [1.0, 1.0]]), torch.ones(2, 2, dtype=torch.bool), "integers"),
    ],
)
def test_encode_shared_rejects_parts_that_do_not_fit(
    indices: torch.Tensor, mask: torch.Tensor, match: str
) -> None:
    # indices larger than the mask built a filter of the mask's first positions, silently;
    # smaller ones failed with a bare IndexError; float indices were truncated (1.5 -> 1)
    shared = SharedTensor(torch.tensor([0.1, 0.2]), indices, mask)
    with pytest.raises(InvalidTensorError, match=f"fc.weight: .*{match}"):
        encode_shared(shared, 4, name="fc.weight")


def test_a_layer_the_user_froze_stays_frozen_with_train_encoded(tmp_path: Path) -> None:
    # train_encoded=True kept the codebook of a frozen layer frozen but unfroze its bias,
    # which then trained while the later layers retrained, and recorded train_encoded=True,
    # so that a checkpoint brought the codebook back trainable too.
    net = _net()
    for p in net[0].parameters():
        p.requires_grad_(False)
    dz.quantize_(net, QuantizeConfig(bits=2))
    trainable: dict[str, set[str]] = {}

    def retrain(model: nn.Module, layer: str) -> None:
        trainable[layer] = {n for n, p in model.named_parameters() if p.requires_grad}

    weightless_(net, WeightlessConfig(cell_bits=4, train_encoded=True), retrain=retrain)
    assert trainable["0.weight"] == {"2.bias", "2.parametrizations.weight.0.codebook"}
    assert trainable["2.weight"] == {"2.bias", "2.parametrizations.weight.0.codebook"}
    p0, p2 = get_weightless(net[0]), get_weightless(net[2])
    assert p0 is not None
    assert p2 is not None
    assert (p0.train_encoded, p0.codebook.requires_grad, net[0].bias.requires_grad) == (
        False,
        False,
        False,
    )
    assert (p2.train_encoded, p2.codebook.requires_grad, net[2].bias.requires_grad) == (
        True,
        True,
        True,
    )
    dz.save_checkpoint(net, tmp_path / "w.safetensors")
    resumed = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 4))
    dz.load_checkpoint(resumed, tmp_path / "w.safetensors")
    assert {n: p.requires_grad for n, p in resumed.named_parameters()} == {
        n: p.requires_grad for n, p in net.named_parameters()
    }


def test_a_quantize_config_with_importance_is_refused_before_any_layer_is_encoded() -> None:
    # weightless_ passes no importance tensors: quantize_ refused the config only when the
    # first unclustered layer's turn came, after the layers before it were encoded and retrained
    net = _net()
    dz.quantize_(net, QuantizeConfig(bits=2, include=("0",)))
    calls: list[str] = []
    with pytest.raises(ConfigError, match="importance = 'fisher' is not available"):
        weightless_(
            net,
            WeightlessConfig(cell_bits=4),
            retrain=lambda model, layer: calls.append(layer),
            quantize=QuantizeConfig(bits=2, importance="fisher"),
        )
    assert calls == []
    assert get_weightless(net[0]) is None


def test_attach_weightless_takes_train_encoded_as_a_bool_only() -> None:
    # bool("false") is True: the string unfroze the layer it was meant to freeze
    layer = nn.Linear(2, 2)
    indices, mask = torch.zeros(2, 2, dtype=torch.uint8), torch.ones(2, 2, dtype=torch.bool)
    decoded = SharedTensor(torch.tensor([1.0]), indices, mask)
    with pytest.raises(ConfigError, match="train_encoded must be true or false, got 'false'"):
        attach_weightless(layer, "weight", decoded, b"x", train_encoded="false")  # type: ignore[arg-type]
    assert get_weightless(layer) is None  # nothing changed
