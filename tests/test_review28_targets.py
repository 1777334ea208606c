"""Review 28: layer targeting under every name of a module, and the Adam importance proxy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepzip import ConfigError, PruneConfig, prune_
from deepzip.config import (
    BitsOverride,
    CellBitsOverride,
    INQConfig,
    LayerOverride,
    MLQConfig,
    QuantizeConfig,
    SLQConfig,
    WeightlessConfig,
)
from deepzip.prune import sensitivity_analysis
from deepzip.prune.parametrization import get_mask
from deepzip.quantize import adam_second_moment, fisher_diagonal, quantize_
from deepzip.quantize.incremental import inq_, mlq_, slq_, step_count
from deepzip.quantize.shared import get_shared
from deepzip.quantize.weightless import get_weightless, weightless_skip
from deepzip.targets import select_targets
from deepzip.weightless import weightless_


def _shared() -> tuple[nn.Sequential, nn.Linear]:
    """``lin`` registered as ``0`` and ``2``; ``3`` is a layer of its own."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    return nn.Sequential(lin, nn.ReLU(), lin, nn.Linear(8, 4)), lin


class _TwoAttrs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = self.a
        self.c = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(torch.relu(self.a(x))))


def _no_retrain(model: nn.Module, step: int) -> None:
    pass


# ----------------------------------------------------------------------------- select_targets


@pytest.mark.parametrize("include", [("2",), ("2.weight",), ("0", "2"), ("[02]",)])
def test_any_name_of_a_shared_module_includes_it_once(include: tuple[str, ...]) -> None:
    model, lin = _shared()
    sel = select_targets(model, include=include)
    assert sel.names() == ["0.weight"]
    (t,) = sel.targets
    assert t.module is lin
    assert t.module_aliases == ("2",)
    assert t.aliases == ("2.weight",)
    assert t.matches("2")
    assert t.matches("0.weight")
    assert not t.matches("3")
    assert sel.by_name("2.weight") is t


def test_any_name_of_a_shared_module_excludes_it() -> None:
    model, _ = _shared()
    sel = select_targets(model, exclude=("2",))
    assert sel.names() == ["3.weight"]
    assert {s.name: s.reason for s in sel.skipped}["0.weight"] == "excluded by pattern '2'"


def test_a_module_assigned_to_two_attributes_answers_to_both() -> None:
    model = _TwoAttrs()
    assert select_targets(model, exclude=("b",)).names() == ["c.weight"]
    assert select_targets(model, include=("b*",)).names() == ["a.weight"]


def test_a_shared_block_gives_its_children_every_path() -> None:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 4))
    model = nn.Sequential(block, nn.ReLU(), block)
    sel = select_targets(model, include=("2.*",))
    assert sel.names() == ["0.0.weight"]
    assert sel.targets[0].aliases == ("2.0.weight",)


def test_an_unmatched_glob_lists_every_name_aliases_included() -> None:
    model, _ = _shared()
    with pytest.raises(
        ConfigError, match=r"include pattern '9' matches no layer \(layers: 0, 2, 3\)"
    ):
        select_targets(model, include=("9",))


def test_an_unmatched_override_lists_the_alias_names() -> None:
    model, _ = _shared()
    cfg = PruneConfig(sparsity=0.5, overrides=(LayerOverride("9", sparsity=0.1),))
    with pytest.raises(
        ConfigError,
        match=r"override pattern '9' matches no prunable layer "
        r"\(layers: 0\.weight, 2\.weight, 3\.weight\)",
    ):
        prune_(model, cfg)


def test_an_unmatched_glob_on_a_model_without_parameters_says_so() -> None:
    with pytest.raises(ConfigError, match=r"matches no layer \(the model has no parameters\)"):
        select_targets(nn.Sequential(nn.ReLU()), include=("x",))


def test_the_listing_of_names_is_capped_with_a_count() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(ConfigError, match=r"layers: 0, 1, .*, 23, \.\.\. \(6 more\)\)$"):
        select_targets(model, include=("x",))


def test_one_tensor_under_two_attributes_of_one_module_is_tied_not_silent() -> None:
    # ``lin.w2 = lin.weight``: 0.w2 was in neither the targets nor the skipped list, and
    # 0.weight was compressed while 0.w2 kept reading the stored, uncompressed tensor
    lin = nn.Linear(4, 4)
    lin.w2 = lin.weight
    sel = select_targets(nn.Sequential(lin))
    assert sel.names() == []
    reasons = {s.name: s.reason for s in sel.skipped}
    assert reasons["0.weight"].startswith("tied to 0.w2")
    assert reasons["0.w2"].startswith("tied to 0.weight")


# ----------------------------------------------------------------------------- the verbs


def test_prune_exclude_and_override_by_the_second_name() -> None:
    model, lin = _shared()
    report = prune_(model, PruneConfig(sparsity=0.5, exclude=("2",)))
    assert list(report.kept_by_layer()) == ["3.weight"]
    assert get_mask(lin, "weight") is None

    model, lin = _shared()
    cfg = PruneConfig(sparsity=0.5, overrides=(LayerOverride("2", sparsity=0.75),))
    report = prune_(model, cfg)
    assert report.kept_by_layer() == {"0.weight": 0.25, "3.weight": 0.5}  # once, not twice

    model, _ = _shared()
    report = prune_(model, PruneConfig(sparsity=0.5, overrides=(LayerOverride("2", skip=True),)))
    assert list(report.kept_by_layer()) == ["3.weight"]
    assert ("0.weight", "skipped by override '2'") in {(s.name, s.reason) for s in report.skipped}


def test_quantize_include_exclude_and_bits_by_the_second_name() -> None:
    model, lin = _shared()
    report = quantize_(model, QuantizeConfig(bits=3, include=("2",)))
    assert [layer.name for layer in report.layers] == ["0.weight"]

    model, lin = _shared()
    report = quantize_(model, QuantizeConfig(bits=3, exclude=("2",)))
    assert [layer.name for layer in report.layers] == ["3.weight"]
    assert get_shared(lin, "weight") is None

    model, lin = _shared()
    report = quantize_(model, QuantizeConfig(bits=3, overrides=(BitsOverride("2", bits=1),)))
    assert {layer.name: layer.bits for layer in report.layers} == {"0.weight": 1, "3.weight": 3}
    assert lin.weight.unique().numel() <= 2


def test_weightless_override_and_include_by_the_second_name() -> None:
    model, lin = _shared()
    quantize_(model, QuantizeConfig(bits=2))
    cfg = WeightlessConfig(cell_bits=4, overrides=(CellBitsOverride("2", skip=True),))
    report = weightless_(model, cfg)
    assert [layer.name for layer in report.layers] == ["3.weight"]
    assert get_weightless(lin, "weight") is None
    # a quantizer that names an encoded layer by its second name is refused, not skipped
    encoded = nn.Sequential(model[3], nn.ReLU(), model[3])
    (t,) = select_targets(encoded, include=("2",)).targets
    with pytest.raises(ConfigError, match=r"0\.weight is encoded with Weightless"):
        weightless_skip(t, ("2",), (), "quantize")


def test_weightless_clusters_a_layer_its_quantize_override_names_by_the_second_name() -> None:
    model, _ = _shared()
    quantize = QuantizeConfig(bits=3, overrides=(BitsOverride("2", bits=1),))
    report = weightless_(model, WeightlessConfig(cell_bits=4), quantize=quantize)
    assert {layer.name: layer.clusters for layer in report.layers}["0.weight"] <= 2


@pytest.mark.parametrize(
    ("verb", "config"),
    [
        (slq_, SLQConfig(bits=2, train_codebook=False, overrides=(BitsOverride("2", skip=True),))),
        (mlq_, MLQConfig(bits="ternary", overrides=(BitsOverride("2", skip=True),))),
        (inq_, INQConfig(bits=4, overrides=(BitsOverride("2", skip=True),))),
        (slq_, SLQConfig(bits=2, train_codebook=False, exclude=("2",))),
    ],
    ids=["slq-override", "mlq-override", "inq-override", "slq-exclude"],
)
def test_incremental_overrides_and_excludes_by_the_second_name(
    verb: object, config: SLQConfig | MLQConfig | INQConfig
) -> None:
    model, lin = _shared()
    assert step_count(model, config) >= 1
    report, _ = verb(model, config, _no_retrain)  # type: ignore[operator]
    assert [layer.name for layer in report.layers] == ["3.weight"]
    assert get_shared(lin, "weight") is None
    assert "0.weight" in {s.name for s in report.skipped}


def test_sensitivity_selects_by_the_second_name() -> None:
    model, _ = _shared()
    result = sensitivity_analysis(model, lambda m: 1.0, sparsities=(0.0, 0.5), include=("2",))
    assert list(result.curves) == ["0.weight"]
    result = sensitivity_analysis(model, lambda m: 1.0, sparsities=(0.0, 0.5), exclude=("2",))
    assert list(result.curves) == ["3.weight"]


# ----------------------------------------------------------------------------- importance


def test_fisher_leaves_a_shared_modules_parameter_in_place() -> None:
    # functional_call's weight tying swapped the one slot twice and restored a plain tensor:
    # the model lost its Parameter (no more gradient, gone from parameters())
    model, lin = _shared()
    weight = lin.weight
    torch.manual_seed(1)
    x, y = torch.randn(6, 8), torch.randint(0, 4, (6,))
    fisher = fisher_diagonal(model, [(x, y)])
    assert lin.weight is weight
    assert model[2].weight is weight
    assert isinstance(lin.weight, nn.Parameter)
    # the value: the mean of per-sample squared gradients, both uses of the layer summed
    expected = torch.zeros_like(weight)
    for i in range(6):
        (g,) = torch.autograd.grad(
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), [weight]
        )
        expected += g**2
    torch.testing.assert_close(fisher["0.weight"], expected / 6)


def _adam_trained() -> tuple[nn.Sequential, torch.optim.Adam, torch.Tensor]:
    """A model after three Adam steps, and ``exp_avg_sq`` of ``0.weight`` worked out here
    from the gradients of those steps: ``v_t = b2 * v_(t-1) + (1 - b2) * g_t**2``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    beta2 = 0.99
    opt = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.9, beta2))
    v = torch.zeros_like(model[0].weight)
    for _ in range(3):
        x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        g = model[0].weight.grad.detach().clone()  # type: ignore[union-attr]
        v = beta2 * v + (1 - beta2) * g**2
        opt.step()
    return model, opt, v


def test_adam_importance_is_the_square_root_of_the_second_moment() -> None:
    # Choi et al. 2017 (section 4.4; section 6 uses the square roots): the raw exp_avg_sq
    # was returned, the square of the paper's proxy
    model, opt, v = _adam_trained()
    imp = adam_second_moment(model, opt)
    assert list(imp) == ["0.weight"]
    torch.testing.assert_close(imp["0.weight"], v.sqrt())
    assert imp["0.weight"].dtype == torch.float32
    raw = adam_second_moment(model, opt, root=False)
    torch.testing.assert_close(raw["0.weight"], v)
    # a copy: quantizing with it later cannot change the optimizer's state
    raw["0.weight"].zero_()
    torch.testing.assert_close(adam_second_moment(model, opt, root=False)["0.weight"], v)


def test_adam_importance_of_a_shared_module_under_its_first_name() -> None:
    model, lin = _shared()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    imp = adam_second_moment(model, opt, include=("2",))
    assert list(imp) == ["0.weight"]
    torch.testing.assert_close(imp["0.weight"], opt.state[lin.weight]["exp_avg_sq"].sqrt())


def test_fisher_of_a_model_without_parameters_is_empty() -> None:
    # next(model.parameters()) raised a bare StopIteration
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    assert fisher_diagonal(nn.Sequential(nn.ReLU()), [(x, y)]) == {}
