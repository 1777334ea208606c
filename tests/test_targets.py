from __future__ import annotations

import pytest
import torch
from torch import nn

from deepzip import ConfigError, PruneConfig, prune_
from deepzip.targets import select_targets


def test_resnet_selects_conv_and_linear_weights_only(resnet: nn.Module) -> None:
    sel = select_targets(resnet)
    assert sel.names() == [
        "stem.weight",
        "conv1.weight",
        "conv2.weight",
        "proj.weight",
        "head.weight",
    ]
    skipped = {s.name: s.reason for s in sel.skipped}
    assert set(skipped) == {
        "bn0.weight",
        "bn0.bias",
        "bn1.weight",
        "bn1.bias",
        "bn2.weight",
        "bn2.bias",
        "head.bias",
    }
    assert "BatchNorm2d" in skipped["bn1.weight"]


def test_transformer_default_targets_and_reasons(transformer: nn.Module) -> None:
    sel = select_targets(transformer)
    expected = ["embed.weight"]
    for i in range(2):
        p = f"encoder.layers.{i}"
        expected += [f"{p}.self_attn.out_proj.weight", f"{p}.linear1.weight", f"{p}.linear2.weight"]
    expected.append("out.weight")
    assert sorted(sel.names()) == sorted(expected)
    reasons = {s.name: s.reason for s in sel.skipped}
    assert "not a default target type" in reasons["encoder.layers.0.self_attn.in_proj_weight"]
    assert "bias/normalization" in reasons["norm.weight"]
    # every parameter is either a target or skipped with a reason, exactly once
    all_names = {n for n, _ in transformer.named_parameters()}
    assert set(sel.names()) | set(reasons) == all_names
    assert not set(sel.names()) & set(reasons)


def test_transformer_prune_touches_exactly_the_targets(transformer: nn.Module) -> None:
    before = {n: p.detach().clone() for n, p in transformer.named_parameters()}
    report = prune_(
        transformer, PruneConfig(sparsity=0.5, include=("*in_proj_weight", "*linear*", "out"))
    )
    pruned = {r.name for r in report.layers}
    assert pruned == {
        "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.1.self_attn.in_proj_weight",
        "encoder.layers.0.linear1.weight",
        "encoder.layers.0.linear2.weight",
        "encoder.layers.1.linear1.weight",
        "encoder.layers.1.linear2.weight",
        "out.weight",
    }
    for name, old in before.items():
        owner, attr = name.rsplit(".", 1)
        value = getattr(transformer.get_submodule(owner), attr)
        if name in pruned:
            assert int((value == 0).sum()) == round(0.5 * value.numel()), name
        else:
            assert torch.equal(value, old), name
    x = torch.randint(0, 50, (2, 7))
    assert transformer(x).shape == (2, 3)


def test_exclude_and_unmatched_patterns(resnet: nn.Module) -> None:
    sel = select_targets(resnet, exclude=("stem", "proj.*"))
    assert "stem.weight" not in sel.names()
    assert "proj.weight" not in sel.names()
    assert {s.name: s.reason for s in sel.skipped}["stem.weight"] == "excluded by pattern 'stem'"
    with pytest.raises(ConfigError, match="'conv9' matches no layer"):
        select_targets(resnet, include=("conv9",))
    with pytest.raises(ConfigError, match="exclude pattern 'nothing\\*'"):
        select_targets(resnet, exclude=("nothing*",))


def test_tied_weights_are_skipped_with_reason() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    sel = select_targets(model)
    assert sel.names() == []
    reasons = {s.name: s.reason for s in sel.skipped}
    assert reasons["emb.weight"].startswith("tied to head.weight")
    assert reasons["head.weight"].startswith("tied to emb.weight")


def test_layer_type_sees_through_parametrization(resnet: nn.Module) -> None:
    prune_(resnet, PruneConfig(sparsity=0.5))
    sel = select_targets(resnet)
    assert {t.layer_type for t in sel.targets} == {"Conv2d", "Linear"}


def test_transposed_convolutions_are_default_targets() -> None:
    model = nn.ModuleDict(
        {
            "up1": nn.ConvTranspose1d(4, 2, 3),
            "up2": nn.ConvTranspose2d(4, 2, 3, groups=2),
            "up3": nn.ConvTranspose3d(4, 2, 3, bias=False),
        }
    )
    sel = select_targets(model)
    assert sel.names() == ["up1.weight", "up2.weight", "up3.weight"]
    assert [t.layer_type for t in sel.targets] == [
        "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    ]  # fmt: skip
    assert [s.name for s in sel.skipped] == ["up1.bias", "up2.bias"]


def test_a_parametrized_model_that_is_itself_the_layer() -> None:
    # At the root parametrize's modules are named "parametrizations..." with no leading dot;
    # they once counted as a layer tied to "weight", and both were skipped.
    lin = nn.Linear(16, 8)
    prune_(lin, PruneConfig(sparsity=0.5))
    sel = select_targets(lin)
    assert sel.names() == ["weight"]
    assert [s.name for s in sel.skipped] == ["bias"]
    prune_(lin, PruneConfig(sparsity=0.75))  # the second pass still finds the layer
    assert int((lin.weight == 0).sum()) == 96
