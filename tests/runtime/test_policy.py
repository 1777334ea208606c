"""RuntimePolicy: validation, and the sparse/dense rule with its reasons."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from deepzip.errors import ConfigError
from deepzip.runtime import (
    CONV_THRESHOLDS,
    LINEAR_THRESHOLDS,
    RuntimeOverride,
    RuntimePolicy,
    decide,
    density_threshold,
    sparse_unsupported,
    weight_reading_parents,
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fast"}, "mode"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"min_dense_bytes": -1}, "min_dense_bytes"),
        ({"linear_max_density": 1.5}, "linear_max_density"),
        ({"conv_max_density": float("nan")}, "conv_max_density"),
        ({"overrides": [RuntimeOverride("fc1", "dense")]}, "tuple of RuntimeOverride"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_policies_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RuntimePolicy(**kwargs)


def test_bad_overrides_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        RuntimeOverride("", "dense")
    with pytest.raises(ConfigError, match="'sparse' or 'dense'"):
        RuntimeOverride("fc*", "fast")  # type: ignore[arg-type]


def test_thresholds_step_down_with_the_batch_size() -> None:
    assert density_threshold("linear", 1) == LINEAR_THRESHOLDS[0][1]
    assert density_threshold("linear", 7) == LINEAR_THRESHOLDS[0][1]
    assert density_threshold("linear", 8) == LINEAR_THRESHOLDS[1][1]
    assert density_threshold("linear", 10_000) == LINEAR_THRESHOLDS[-1][1]
    assert density_threshold("conv", 1) == CONV_THRESHOLDS[0][1]
    for table in (LINEAR_THRESHOLDS, CONV_THRESHOLDS):
        values = [t for _, t in table]
        assert values == sorted(values, reverse=True)


BIG = nn.Linear(4096, 2049, device="meta")  # 32 MiB + 16 KiB dense, over min_dense_bytes


def _decide(policy: RuntimePolicy, module: nn.Module, density: float, attr: str = "weight") -> Any:
    weights = int(getattr(module, attr).numel())
    return decide(policy, "enc.fc", f"enc.fc.{attr}", module, attr, density, weights)


def test_auto_rule_uses_density_batch_and_size() -> None:
    low = LINEAR_THRESHOLDS[-1][1] / 2
    high = LINEAR_THRESHOLDS[0][1] + 0.05
    d = _decide(RuntimePolicy(), BIG, low)
    assert d.form == "sparse"
    assert "linear" in d.reason
    assert "batch 1" in d.reason
    assert _decide(RuntimePolicy(), BIG, high).form == "dense"
    between = (LINEAR_THRESHOLDS[0][1] + LINEAR_THRESHOLDS[-1][1]) / 2
    assert _decide(RuntimePolicy(batch_size=1), BIG, between).form == "sparse"
    d = _decide(RuntimePolicy(batch_size=64), BIG, between)
    assert d.form == "dense"
    assert "batch 64" in d.reason
    small = nn.Linear(10, 10)
    d = _decide(RuntimePolicy(), small, 0.01)
    assert d.form == "dense"
    assert "min_dense_bytes" in d.reason
    assert _decide(RuntimePolicy(min_dense_bytes=0), small, 0.01).form == "sparse"
    # the floor is 16,000,000 bytes: 3,999,000 weights stay dense, 4,001,000 go sparse
    assert _decide(RuntimePolicy(), nn.Linear(1000, 3999, device="meta"), 0.01).form == "dense"
    assert _decide(RuntimePolicy(), nn.Linear(1000, 4001, device="meta"), 0.01).form == "sparse"


def test_custom_thresholds_and_conv_kind() -> None:
    conv = nn.Conv2d(64, 64, 3)
    policy = RuntimePolicy(min_dense_bytes=0)
    assert _decide(RuntimePolicy(min_dense_bytes=0, conv_max_density=0.5), conv, 0.4).form == (
        "sparse"
    )
    d = _decide(policy, conv, 0.4)
    assert d.form == "dense"
    assert "conv" in d.reason
    assert _decide(RuntimePolicy(linear_max_density=0.01), BIG, 0.02).form == "dense"


def test_modes_and_overrides() -> None:
    assert _decide(RuntimePolicy(mode="sparse"), BIG, 0.9).form == "sparse"
    assert _decide(RuntimePolicy(mode="dense"), BIG, 0.01).form == "dense"
    policy = RuntimePolicy(
        mode="dense",
        overrides=(RuntimeOverride("enc.*", "sparse"), RuntimeOverride("enc.fc", "dense")),
    )
    d = _decide(policy, BIG, 0.01)
    assert d.form == "dense"
    assert "'enc.fc'" in d.reason
    policy = RuntimePolicy(overrides=(RuntimeOverride("*.weight", "sparse"),))
    assert _decide(policy, BIG, 0.9).form == "sparse"


def test_layers_without_a_sparse_form_stay_dense_even_when_forced() -> None:
    forced = RuntimePolicy(mode="sparse", overrides=(RuntimeOverride("*", "sparse"),))
    cases = [
        (nn.Embedding(100, 50), "weight", "Embedding has no sparse runtime form"),
        (nn.Conv3d(2, 2, 3), "weight", "Conv3d"),
        (nn.Conv2d(4, 4, 3, groups=2), "weight", "groups=2"),
        (nn.MultiheadAttention(8, 2), "in_proj_weight", "in_proj_weight"),
    ]
    for module, attr, reason in cases:
        assert sparse_unsupported(module, attr) is not None
        d = _decide(forced, module, 0.01, attr)
        assert d.form == "dense"
        assert reason in d.reason


class ScaledLinear(nn.Linear):
    """A subclass: its own forward could not run on a runtime module."""


class Conv2dSubclass(nn.Conv2d):
    """A subclass: code reading its ``.weight`` could not run on a runtime module."""


def test_subclasses_and_children_of_weight_reading_parents_stay_dense_even_when_forced() -> None:
    forced = RuntimePolicy(mode="sparse", overrides=(RuntimeOverride("*", "sparse"),))
    for module, base in ((ScaledLinear(8, 8), "Linear"), (Conv2dSubclass(2, 2, 3), "Conv2d")):
        d = _decide(forced, module, 0.01)
        assert d.form == "dense"
        assert f"{type(module).__name__} is a subclass of {base}" in d.reason
    decoder = nn.TransformerDecoderLayer(8, 2, 16)
    parents = weight_reading_parents(nn.Sequential(decoder, nn.Linear(8, 8)))
    assert parents[decoder.linear1] == "TransformerDecoderLayer"
    assert parents[decoder.self_attn.out_proj] == "MultiheadAttention"
    assert parents[decoder.norm1] == "TransformerDecoderLayer"
    assert len(parents) == len(list(decoder.children())) + 2  # + both attentions' out_proj
    plain = nn.Linear(8, 8)
    d = decide(forced, "mha.fc", "mha.fc.weight", plain, "weight", 0.01, 64, parent="Custom")
    assert d.form == "dense"
    assert "child of Custom, which reads its children's .weight directly" in d.reason
    assert sparse_unsupported(plain, "weight") is None
    # a layer without a sparse form keeps its own reason under such a parent
    reason = sparse_unsupported(decoder.norm1, "weight", parent="TransformerDecoderLayer")
    assert reason == "LayerNorm has no sparse runtime form"
