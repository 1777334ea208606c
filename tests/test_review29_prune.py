"""Regression tests for defects found in the review of the pruning stage (round 29)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip import (
    ConfigError,
    InvalidTensorError,
    LayerOverride,
    PruneConfig,
    prune_,
    sensitivity_analysis,
)
from deepzip.prune import get_mask, mask_dict, scale_dropout_, strip_


def test_a_pruned_model_on_the_meta_device_materializes_with_to_empty() -> None:
    # WeightMask._apply copied the old reference_std into the new buffer: from the meta
    # device that raised NotImplementedError ("Cannot copy out of meta tensor")
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    prune_(source, PruneConfig(quality=0.7))
    skeleton = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    prune_(skeleton, PruneConfig(sparsity=0.5))
    skeleton.to("meta")
    skeleton.to_empty(device="cpu")
    m = get_mask(skeleton[0])
    assert m is not None
    assert m.mask.device.type == "cpu"
    assert m.reference_std.device.type == "cpu"
    assert m.reference_std.dtype == torch.float64
    skeleton.load_state_dict(source.state_dict())
    for idx in (0, 2):
        assert torch.equal(skeleton[idx].weight, source[idx].weight)
        loaded, expected = get_mask(skeleton[idx]), get_mask(source[idx])
        assert loaded is not None
        assert expected is not None
        assert float(loaded.reference_std) == float(expected.reference_std)
    # a cast still keeps the threshold's reference in float64, at its value
    std = float(m.reference_std)
    skeleton.to(torch.bfloat16)
    assert m.reference_std.dtype == torch.float64
    assert float(m.reference_std) == std


def test_sensitivity_checks_every_layer_for_nan_before_the_first_evaluation() -> None:
    # a NaN in the last layer was found only after the baseline and every earlier layer's
    # sweep had been evaluated (hours on a real model), and all of it was lost
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    prune_(model, PruneConfig(sparsity=0.5, include=("2",)))  # the masked layer's original
    with torch.no_grad():
        model[2].parametrizations.weight.original[1, 0] = float("inf")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls: list[nn.Module] = []

    def evaluate(m: nn.Module) -> float:
        calls.append(m)
        return 0.5

    with pytest.raises(InvalidTensorError, match=r"^2\.weight: 1 non-finite value"):
        sensitivity_analysis(model, evaluate, sparsities=(0.0, 0.5, 0.9))
    assert calls == []
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_scale_dropout_leaves_the_dropout_of_a_dense_layer_unchanged() -> None:
    # fc6 → drop6 → fc7 (skipped by an override) → drop7 → fc8: drop7 acts on the dense fc7's
    # outputs but was scaled by fc6's kept fraction (the nearest *pruned* layer before it)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(64, 10),
    )
    report = prune_(model, PruneConfig(sparsity=0.91, overrides=(LayerOverride("3", skip=True),)))
    kept = report.kept_by_layer()
    assert set(kept) == {"0.weight", "6.weight"}
    changed = scale_dropout_(model, kept)
    assert changed == {"2": pytest.approx(0.5 * kept["0.weight"] ** 0.5)}
    assert model[5].p == 0.5
    # a dropout after a pruned layer is still tied to it, whatever precedes that layer
    assert scale_dropout_(model, {"3.weight": 0.25}) == {"5": pytest.approx(0.25)}
    assert model[2].p == pytest.approx(0.5 * kept["0.weight"] ** 0.5)  # untouched
    assert set(mask_dict(model)) == {"0.weight", "6.weight"}


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_strip_keeps_a_parametrization_registered_on_top_of_the_mask() -> None:
    # strip_ removed every parametrization of the weight: the user's own one, registered
    # after pruning, was baked into the weight and dropped without a word
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    prune_(model, PruneConfig(sparsity=0.5))
    keep = mask_dict(model)["0.weight"]
    parametrize.register_parametrization(model[0], "weight", _Double())
    effective = model[0].weight.detach().clone()
    strip_(model)
    assert mask_dict(model) == {}
    plist = model[0].parametrizations.weight
    assert [type(p) for p in plist] == [_Double]
    assert torch.equal(model[0].weight, effective)
    original = plist.original
    assert torch.count_nonzero(original[~keep]) == 0
    assert torch.equal(original[keep] * 2, effective[keep])
    assert set(model.state_dict()) == {"0.bias", "0.parametrizations.weight.original"}
    # a mask alone still leaves a plain parameter
    plain = nn.Sequential(nn.Linear(6, 4))
    prune_(plain, PruneConfig(sparsity=0.5))
    strip_(plain)
    assert not parametrize.is_parametrized(plain[0])
    assert isinstance(plain[0].weight, nn.Parameter)


@pytest.mark.parametrize("key", ["include", "exclude"])
def test_sensitivity_refuses_globs_given_as_one_string(key: str) -> None:
    # tuple("2*") is ("2", "*"): exclude="2*" excluded every layer (an empty result) and
    # include="2*" swept every layer, both without a word
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    calls: list[nn.Module] = []

    def evaluate(m: nn.Module) -> float:
        calls.append(m)
        return 0.0

    with pytest.raises(ConfigError, match=rf"^{key} must be a sequence of globs, got the string"):
        sensitivity_analysis(model, evaluate, sparsities=(0.0,), **{key: "2*"})  # type: ignore[arg-type]
    assert calls == []
    result = sensitivity_analysis(model, evaluate, sparsities=(0.0,), **{key: ("2*",)})  # type: ignore[arg-type]
    assert list(result.curves) == (["2.weight"] if key == "include" else ["0.weight"])
