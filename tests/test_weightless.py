"""Weightless: layer-by-layer Bloomier encoding, freezing, retraining and the cell-width search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.coding.bloomier import BloomierFilter
from deepzip.config import (
    BitsOverride,
    CellBitsOverride,
    PruneConfig,
    QuantizeConfig,
    Recipe,
    WeightlessConfig,
    WeightlessStage,
)
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.pipeline import run_recipe
from deepzip.quantize.shared import SharedTensor, get_shared
from deepzip.quantize.weightless import WeightlessWeight, attach_weightless, get_weightless
from deepzip.weightless import decode_filter, encode_shared, weightless_


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    dz.prune_(net, PruneConfig(sparsity=0.8))
    return net


def _clustered() -> nn.Sequential:
    net = _net()
    dz.quantize_(net, QuantizeConfig(bits=2))
    return net


def _filter_of(module: nn.Module) -> BloomierFilter:
    p = get_weightless(module)
    assert p is not None
    return BloomierFilter.from_bytes(p.filter_bytes())


def _flags(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def test_fixed_width_encodes_freezes_and_keeps_every_true_weight() -> None:
    net = _clustered()
    before = {n: s for n, s in dz.export_shared(net).items()}
    calls: list[str] = []

    def retrain(model: nn.Module, layer: str) -> None:
        calls.append(layer)

    report = weightless_(net, WeightlessConfig(cell_bits=5), retrain=retrain)
    assert calls == ["0.weight", "2.weight", "4.weight"]
    assert [layer.name for layer in report.layers] == calls
    for layer, idx in zip(report.layers, (0, 2, 4), strict=True):
        module = net[idx]
        shared = before[layer.name]
        f = _filter_of(module)
        assert (f.cell_bits, f.num_values, f.n_positions) == (5, 4, shared.mask.numel())
        weight = module.weight.detach()
        true = shared.dense()
        mask = shared.mask
        assert torch.equal(weight[mask], true[mask])  # every stored weight is exact
        p = get_weightless(module)
        assert p is not None
        decoded_nonzero = p.mask
        assert bool(decoded_nonzero[mask].all())
        extra = decoded_nonzero & ~mask  # false positives carry codebook values
        assert layer.false_positives == int(extra.sum())
        cb = p.codebook.detach()
        assert torch.equal(weight[extra], cb[p.indices[extra].long()])
        assert bool((weight[~decoded_nonzero] == 0).all())
        assert layer.keys == int(mask.sum())
        assert layer.filter_bytes == len(p.filter_bytes())
        assert layer.expected_false_positive_rate == 4 / 32
        assert layer.within_budget is None
        assert not p.codebook.requires_grad
        assert not module.bias.requires_grad
        # the filter alone reproduces the layer
        again = decode_filter(f, cb, weight.shape)
        assert torch.equal(again.dense(), weight)


def test_layers_after_the_encoded_one_keep_training() -> None:
    net = _net()
    seen: dict[str, tuple[bool, bool, bool]] = {}

    def retrain(model: nn.Module, layer: str) -> None:
        later = model[4]
        seen[layer] = (
            get_shared(later) is None,
            later.parametrizations.weight.original.requires_grad,
            later.bias.requires_grad,
        )

    report = weightless_(
        net, WeightlessConfig(cell_bits=6), retrain=retrain, quantize=QuantizeConfig(bits=3)
    )
    assert seen["0.weight"] == (True, True, True)  # still a pruned float layer
    assert seen["2.weight"] == (True, True, True)
    assert seen["4.weight"][0] is False  # clustered and encoded itself
    assert [layer.clusters for layer in report.layers] == [8, 8, 8]
    assert all(get_weightless(net[i]) is not None for i in (0, 2, 4))


@pytest.mark.parametrize("train_encoded", [False, True])
def test_retraining_trains_only_the_layers_after_the_encoded_one(train_encoded: bool) -> None:
    net = _net()
    flags = _flags(net)
    changed: dict[str, set[str]] = {}
    torch.manual_seed(1)
    x = torch.randn(16, 40)

    def retrain(model: nn.Module, layer: str) -> None:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:  # the last layer encoded and frozen: nothing left to train
            changed[layer] = set()
            return
        opt = torch.optim.SGD(trainable, lr=0.1)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        changed[layer] = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}

    config = WeightlessConfig(cell_bits=5, exclude=("0",), train_encoded=train_encoded)
    weightless_(net, config, retrain=retrain, quantize=QuantizeConfig(bits=2))
    encoded_2 = {"2.bias", "2.parametrizations.weight.0.codebook"} if train_encoded else set()
    encoded_4 = {"4.bias", "4.parametrizations.weight.0.codebook"} if train_encoded else set()
    # layer 0 (excluded, before the encoded layers) never trains
    assert changed["2.weight"] == encoded_2 | {"4.bias", "4.parametrizations.weight.original"}
    assert changed["4.weight"] == encoded_2 | encoded_4
    after = _flags(net)
    assert after["0.bias"]  # flags restored
    assert after["0.parametrizations.weight.original"]
    assert {n: after[n] for n in flags if n.startswith("0.")} == {
        n: v for n, v in flags.items() if n.startswith("0.")
    }

    def failing(model: nn.Module, layer: str) -> None:
        assert not model[0].bias.requires_grad
        raise RuntimeError("retraining failed")

    other = _net()
    with pytest.raises(RuntimeError, match="retraining failed"):
        weightless_(other, config, retrain=failing, quantize=QuantizeConfig(bits=2))
    assert other[0].bias.requires_grad  # restored when retraining raises too
    assert other[0].parametrizations.weight.original.requires_grad


def test_automatic_width_is_the_smallest_within_budget() -> None:
    net = _clustered()

    def evaluate(model: nn.Module) -> float:
        # accuracy rises with the cell width of the layer encoded last
        widths = [_filter_of(model[i]).cell_bits for i in (0, 2, 4) if get_weightless(model[i])]
        return 1.0 if not widths else min(1.0, 0.9 + 0.02 * widths[-1])

    report = weightless_(
        net,
        WeightlessConfig(max_drop=0.5, include=("0", "2")),
        retrain=lambda m, layer: None,
        evaluate=evaluate,
    )
    assert report.reference_accuracy is None  # each layer is measured from its own start
    # 0.9 + 0.02 t >= 0.995 first at t = 5; K = 4 clusters: the search starts at t = 3
    for layer in report.layers:
        assert layer.reference_accuracy == 1.0
        assert layer.cell_bits == 5
        assert [t.cell_bits for t in layer.trials] == [3, 4, 5]
        assert layer.within_budget is True
        assert layer.accuracy == pytest.approx(1.0)
        assert _filter_of(net[int(layer.name[0])]).cell_bits == 5
    assert [s.name for s in report.skipped if s.name == "4.weight"] == ["4.weight"]
    assert get_weightless(net[4]) is None


def test_a_fixed_reference_budgets_the_whole_model() -> None:
    net = _clustered()
    calls: list[int] = []

    def evaluate(model: nn.Module) -> float:
        encoded = [i for i in (0, 2, 4) if get_weightless(model[i]) is not None]
        calls.append(len(encoded))
        # every encoded layer costs 0.4 points whatever its width
        return 0.95 - 0.004 * len(encoded)

    per_layer = weightless_(
        _clustered(), WeightlessConfig(max_drop=0.5, max_cell_bits=4), evaluate=evaluate
    )
    assert [layer.within_budget for layer in per_layer.layers] == [True, True, True]
    assert [layer.reference_accuracy for layer in per_layer.layers] == pytest.approx(
        [0.95, 0.946, 0.942]
    )
    calls.clear()
    whole = weightless_(
        net, WeightlessConfig(max_drop=0.5, max_cell_bits=4), evaluate=evaluate, reference=0.95
    )
    assert whole.reference_accuracy == 0.95
    assert [layer.within_budget for layer in whole.layers] == [True, False, False]
    assert [len(layer.trials) for layer in whole.layers] == [1, 2, 2]
    assert 0 not in calls  # the reference was given: no evaluation before the first layer


def test_a_drop_of_exactly_the_budget_is_within_it() -> None:
    # 5006/10000 - 0.1/100 rounds above 4996/10000: the first width was judged over budget
    def evaluate(model: nn.Module) -> float:
        encoded = any(get_weightless(model[i]) is not None for i in (0, 2, 4))
        return 4996 / 10000 if encoded else 5006 / 10000

    report = weightless_(
        _clustered(),
        WeightlessConfig(max_drop=0.1, include=("0",)),
        retrain=lambda m, layer: None,
        evaluate=evaluate,
    )
    (layer,) = report.layers
    assert layer.within_budget is True
    assert len(layer.trials) == 1


def test_when_no_width_meets_the_budget_the_most_accurate_trial_is_kept() -> None:
    net = _clustered()
    marks = iter(range(100))

    def retrain(model: nn.Module, layer: str) -> None:
        with torch.no_grad():
            model[4].bias.fill_(float(next(marks)))  # which retraining left the model

    def evaluate(model: nn.Module) -> float:
        if get_weightless(model[0]) is None:
            return 1.0
        t = _filter_of(model[0]).cell_bits
        return 0.8 - 0.05 * abs(t - 5)

    report = weightless_(
        net,
        WeightlessConfig(include=("0",), max_cell_bits=8),
        retrain=retrain,
        evaluate=evaluate,
    )
    (layer,) = report.layers
    assert [t.cell_bits for t in layer.trials] == [3, 4, 5, 6, 7, 8]
    assert layer.within_budget is False
    assert layer.cell_bits == 5
    assert layer.accuracy == pytest.approx(0.8)
    assert _filter_of(net[0]).cell_bits == 5
    assert float(net[4].bias.detach()[0]) == 2.0  # the state of the third trial's retraining


def test_the_search_skips_widths_where_every_position_decodes() -> None:
    net = _net()
    seen: list[int] = []

    def evaluate(model: nn.Module) -> float:
        if get_weightless(model[0]) is not None:
            seen.append(_filter_of(model[0]).cell_bits)
        return 1.0

    weightless_(
        net,
        WeightlessConfig(min_cell_bits=2, include=("0",)),
        evaluate=evaluate,
        quantize=QuantizeConfig(bits=3),
    )
    assert seen == [4]  # K = 8: t = 3 would make every pruned position a weight


def test_overrides() -> None:
    net = _clustered()
    config = WeightlessConfig(
        cell_bits=4,
        overrides=(CellBitsOverride("2", cell_bits=9), CellBitsOverride("4", skip=True)),
    )
    report = weightless_(net, config)
    assert [(layer.name, layer.cell_bits) for layer in report.layers] == [
        ("0.weight", 4),
        ("2.weight", 9),
    ]
    assert any(s.name == "4.weight" and "override" in s.reason for s in report.skipped)
    assert get_weightless(net[4]) is None
    assert get_shared(net[4]) is not None


def test_lzma_is_kept_where_it_shrinks_the_table() -> None:
    def encoded(lzma: bool) -> nn.Sequential:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(400, 50), nn.ReLU(), nn.Linear(50, 4))
        dz.prune_(net, PruneConfig(sparsity=0.85))
        dz.quantize_(net, QuantizeConfig(bits=2))
        weightless_(net, WeightlessConfig(cell_bits=5, lzma=lzma))
        return net

    plain, squeezed = encoded(False), encoded(True)
    for i, flag in ((0, 1), (2, 0)):  # layer 2's table is too small for LZMA to pay
        p, q = get_weightless(plain[i]), get_weightless(squeezed[i])
        assert p is not None
        assert q is not None
        assert p.filter_bytes()[3] == 0
        assert q.filter_bytes()[3] == flag  # bit 0 of the flags: the table is LZMA-compressed
        assert (len(q.filter_bytes()) < len(p.filter_bytes())) == bool(flag)
        assert torch.equal(q.indices, p.indices)  # lossless: the same decoded layer
        assert torch.equal(q.mask, p.mask)
        np.testing.assert_array_equal(_filter_of(squeezed[i]).table, _filter_of(plain[i]).table)


def test_train_encoded_keeps_codebook_and_bias_trainable() -> None:
    net = _clustered()
    weightless_(net, WeightlessConfig(cell_bits=6, train_encoded=True))
    p = get_weightless(net[0])
    assert p is not None
    assert p.codebook.requires_grad
    assert net[0].bias.requires_grad
    assert not net[0].parametrizations.weight.original.requires_grad
    indices_before = p.indices.clone()
    opt = torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=0.1)
    net(torch.randn(8, 40)).square().mean().backward()
    opt.step()
    assert torch.equal(p.indices, indices_before)  # positions and clusters never move


def test_same_input_gives_the_same_filters() -> None:
    a, b = _clustered(), _clustered()
    weightless_(a, WeightlessConfig(cell_bits=5, seed=11))
    weightless_(b, WeightlessConfig(cell_bits=5, seed=11))
    for i in (0, 2, 4):
        pa, pb = get_weightless(a[i]), get_weightless(b[i])
        assert pa is not None
        assert pb is not None
        assert pa.filter_bytes() == pb.filter_bytes()


def test_false_positive_rate_of_a_real_layer_is_near_theory() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(400, 300))
    dz.prune_(net, PruneConfig(sparsity=0.92))
    dz.quantize_(net, QuantizeConfig(bits=2))
    layer = net[0]
    shared = get_shared(layer)
    assert shared is not None
    f = encode_shared(shared.export(), 6, name="layer.weight")
    decoded = decode_filter(f, shared.codebook, layer.weight.shape)
    mask = shared.mask
    non_keys = int((~mask).sum())
    rate = int((decoded.mask & ~mask).sum()) / non_keys
    p = 4 / 64
    assert abs(rate - p) < 5 * np.sqrt(p * (1 - p) / non_keys)
    assert torch.equal(decoded.indices[mask], shared.indices[mask])


@pytest.mark.parametrize(
    ("kwargs", "config", "match"),
    [
        ({}, WeightlessConfig(), "needs evaluate"),
        ({}, WeightlessConfig(cell_bits=1), r"0\.weight: cell_bits = 1 with K = 4 clusters"),
        (
            {},
            WeightlessConfig(cell_bits=2),
            r"0\.weight: cell_bits = 2 with K = 4 clusters; 2\*\*t must exceed the K clusters: "
            "one code must mean zero",
        ),
        (
            {},
            WeightlessConfig(cell_bits=4, overrides=(CellBitsOverride("2", 2),)),
            r"2\.weight: cell_bits = 2 with K = 4 clusters; 2\*\*t must exceed",
        ),
        ({}, WeightlessConfig(include=("nope",)), "matches no layer"),
        ({}, WeightlessConfig(cell_bits=4, overrides=(CellBitsOverride("x9", 4),)), "matches no"),
    ],
)
def test_bad_requests_are_rejected(
    kwargs: dict[str, object], config: WeightlessConfig, match: str
) -> None:
    net = _clustered()
    with pytest.raises(ConfigError, match=match):
        weightless_(net, config, **kwargs)  # type: ignore[arg-type]
    assert all(get_weightless(net[i]) is None for i in (0, 2, 4))  # nothing changed


def test_a_width_with_as_many_codes_as_clusters_is_rejected_once_clustered() -> None:
    net = _net()
    with pytest.raises(
        ConfigError, match=r"0\.weight: cell_bits = 3 with K = 8 clusters; 2\*\*t must exceed"
    ):
        weightless_(net, WeightlessConfig(cell_bits=3), quantize=QuantizeConfig(bits=3))
    assert get_weightless(net[0]) is None


def test_a_width_too_small_for_a_later_layer_fails_before_any_layer_is_encoded() -> None:
    net = _net()
    retrained: list[str] = []
    quantize = QuantizeConfig(bits=2, overrides=(BitsOverride("4", bits=4),))
    with pytest.raises(ConfigError, match=r"4\.weight: cell_bits = 4 with K = 16 clusters"):
        weightless_(
            net,
            WeightlessConfig(cell_bits=4),
            quantize=quantize,
            retrain=lambda model, layer: retrained.append(layer),
        )
    assert retrained == []
    assert all(get_weightless(net[i]) is None for i in (0, 2, 4))


def test_unclustered_layers_need_a_quantize_config() -> None:
    with pytest.raises(ConfigError, match=r"0\.weight is not clustered"):
        weightless_(_net(), WeightlessConfig(cell_bits=4))


def test_attach_checks_the_shape() -> None:
    layer = nn.Linear(3, 2)
    bad = SharedTensor(torch.ones(2), torch.zeros(3, 3, dtype=torch.uint8), torch.ones(3, 3) > 0)
    with pytest.raises(InvalidTensorError, match="shape"):
        attach_weightless(layer, "weight", bad, b"x")
    good = SharedTensor(torch.ones(2), torch.zeros(2, 3, dtype=torch.uint8), torch.ones(2, 3) > 0)
    with pytest.raises(InvalidTensorError, match="serialised Bloomier filter"):
        WeightlessWeight(good.codebook, good.indices, good.mask, b"")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_layers_stay_on_their_device() -> None:
    net = _clustered().cuda()
    weightless_(net, WeightlessConfig(cell_bits=5))
    p = get_weightless(net[0])
    assert p is not None
    assert p.indices.is_cuda
    assert p.bloomier.is_cuda


@pytest.mark.parametrize("train_encoded", [False, True])
def test_checkpoints_keep_which_encoded_parameters_train(
    tmp_path: Path, train_encoded: bool
) -> None:
    net = _clustered()
    weightless_(net, WeightlessConfig(cell_bits=5, include=("0", "2"), train_encoded=train_encoded))
    expected = _flags(net)
    for i in (0, 2):
        assert expected[f"{i}.bias"] is train_encoded
        assert expected[f"{i}.parametrizations.weight.0.codebook"] is train_encoded
    assert expected["4.bias"]
    assert expected["4.parametrizations.weight.0.codebook"]
    path = tmp_path / "w.safetensors"
    dz.save_checkpoint(net, path)
    resumed = nn.Sequential(
        nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    dz.load_checkpoint(resumed, path)  # a resumed run rebuilds the model from the checkpoint
    assert _flags(resumed) == expected
    dz.load_checkpoint(net, path)  # an uninterrupted run reloads each stage's checkpoint
    assert _flags(net) == expected


def test_checkpoints_keep_the_filters(tmp_path: Path) -> None:
    net = _clustered()
    weightless_(net, WeightlessConfig(cell_bits=5, include=("0",)))
    dz.save_checkpoint(net, tmp_path / "w.safetensors")
    fresh = nn.Sequential(
        nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    dz.load_checkpoint(fresh, tmp_path / "w.safetensors")
    p, q = get_weightless(net[0]), get_weightless(fresh[0])
    assert p is not None
    assert q is not None
    assert q.filter_bytes() == p.filter_bytes()
    assert torch.equal(fresh[0].weight, net[0].weight)
    assert get_weightless(fresh[2]) is None
    assert get_shared(fresh[2]) is not None


def test_a_checkpoint_whose_filter_disagrees_is_rejected(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    net = _clustered()
    weightless_(net, WeightlessConfig(cell_bits=5, include=("0",)))
    path = tmp_path / "w.safetensors"
    dz.save_checkpoint(net, path)
    tensors = load_file(str(path))
    shared = get_shared(net[0])
    assert shared is not None
    other = encode_shared(shared.export(), 5, seed=99)  # another filter of the same layer
    key = "__deepzip_bloomier__.0.weight"
    tensors[key] = torch.frombuffer(bytearray(other.to_bytes()), dtype=torch.uint8)
    save_file(tensors, str(path), metadata={"deepzip.format": "checkpoint"})
    with pytest.raises(dz.CheckpointError, match=r"filter of '0\.weight' does not decode"):
        dz.load_checkpoint(_net(), path)
    tensors[key] = torch.zeros(20, dtype=torch.uint8)
    save_file(tensors, str(path), metadata={"deepzip.format": "checkpoint"})
    with pytest.raises(dz.CheckpointError, match="bad magic"):
        dz.load_checkpoint(_net(), path)


# ------------------------------------------------------------------------ recipe stage


def _weightless_recipe(**weightless: object) -> Recipe:
    return Recipe.from_dict(
        {
            "seed": 3,
            "overrides": [{"pattern": "4", "bits": 3}],
            "stages": [
                {"type": "train", "epochs": 2, "lr": 0.05, "batch_size": 32},
                {"type": "prune", "sparsity": 0.7, "schedule": {"kind": "oneshot"},
                 "retrain": {"epochs": 1, "final_epochs": 0, "batch_size": 32}},
                {"type": "weightless", **weightless, "quantize": {"bits": 2},
                 "retrain": {"epochs": 1, "batch_size": 32, "lr": 0.05}},
                {"type": "encode"},
            ],
        }
    )  # fmt: skip


def test_recipe_stage_round_trips_through_toml(tmp_path: Path) -> None:
    recipe = _weightless_recipe(max_drop=1.0, lzma=True, min_cell_bits=4)
    stage = recipe.stages[2].config
    assert isinstance(stage, WeightlessStage)
    assert stage.weightless.max_drop == 1.0
    assert stage.quantize.bits == 2
    assert recipe.effective(recipe.stages[2]).quantize.overrides[0].bits == 3
    recipe.save(tmp_path / "r.toml")
    assert Recipe.load(tmp_path / "r.toml") == recipe
    with pytest.raises(ConfigError, match=r"stage 3 \(weightless\).*unknown key 'cell_bit'"):
        _weightless_recipe(cell_bit=4)
    with pytest.raises(
        ConfigError, match=r"stage 1 \(weightless\) retrain: unknown key 'final_epochs'"
    ):
        Recipe.from_dict(
            {
                "stages": [
                    {"type": "weightless", "retrain": {"final_epochs": 1}},
                    {"type": "encode"},
                ]
            }
        )


def test_recipe_runs_weightless_and_writes_bloomier_layers(tmp_path: Path) -> None:
    from pipeline_toy import toy_data, toy_model

    recipe = _weightless_recipe(max_drop=2.0, max_cell_bits=6)
    result = run_recipe(toy_model(), recipe, tmp_path / "run", data=toy_data(), device="cpu")
    stage = result.stages[2]
    layers = stage.details["report"]["layers"]
    assert [layer["name"] for layer in layers] == ["1.weight", "4.weight"]
    assert [layer["clusters"] for layer in layers] == [4, 8]  # recipe override: 3 bits for 4
    assert all(3 <= layer["cell_bits"] <= 6 for layer in layers)
    encodings = {t.name: t.encoding for t in dz.inspect(result.dzip).tensors}
    assert encodings["1.weight"] == "bloomier"
    assert encodings["4.weight"] == "bloomier"
    # the stage checkpoint reloads the filters: the model the run ends with is still Weightless
    assert get_weightless(result.model[1]) is not None
    final = result.stages[-1].details
    assert final["decoded_val_acc"] == pytest.approx(stage.val_acc)
    again = run_recipe(toy_model(), recipe, tmp_path / "run", data=toy_data(), device="cpu")
    assert again.resumed_from == len(recipe.stages)


def test_a_fully_pruned_layer_is_skipped_as_quantize_skips_it() -> None:
    net = _net()
    mask = net[0].parametrizations.weight[0].mask
    mask.zero_()  # every weight of the first layer pruned: quantize_ leaves it unclustered
    report = dz.quantize_(net, QuantizeConfig(bits=2))
    assert "0.weight" in {s.name for s in report.skipped}
    result = weightless_(net, WeightlessConfig(cell_bits=4))  # no quantize= needed
    assert [layer.name for layer in result.layers] == ["2.weight", "4.weight"]
    assert {s.name: s.reason for s in result.skipped}["0.weight"] == (
        "no surviving weights (all pruned); left as zeros"
    )
    assert get_weightless(net[0]) is None


def test_earlier_batchnorm_statistics_stay_frozen_while_later_layers_retrain() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
        nn.Linear(16, 3),
    )  # fmt: skip
    dz.prune_(net, PruneConfig(sparsity=0.5))
    dz.quantize_(net, QuantizeConfig(bits=2))
    bn = net[1]
    moved: dict[str, bool] = {}
    gen = torch.Generator().manual_seed(1)

    def retrain(model: nn.Module, layer: str) -> None:
        before = bn.running_mean.clone()
        model.train()  # as the training loop does
        with torch.no_grad():
            model(torch.randn(32, 10, generator=gen) * 3 + 1)
        moved[layer] = not torch.equal(before, bn.running_mean)
        assert bn.training is (layer == "0.weight")

    bn.train()
    weightless_(net, WeightlessConfig(cell_bits=4, train_encoded=False), retrain=retrain)
    # after the first layer the BatchNorm is a later layer and adapts; after the next ones
    # it is part of the frozen network before them
    assert moved == {"0.weight": True, "3.weight": False, "5.weight": False}
    assert bn.training  # its mode is restored


def test_a_fixed_width_too_small_fails_before_the_run_starts(tmp_path: Path) -> None:
    from pipeline_toy import toy_data, toy_model

    # K of layer 4 is at most 2**3 (the recipe override): cell_bits = 3 leaves no zero code
    recipe = _weightless_recipe(cell_bits=3)
    with pytest.raises(ConfigError, match=r"^stage 3 \(weightless\): 4\.weight: cell_bits = 3"):
        run_recipe(toy_model(), recipe, tmp_path / "run", data=toy_data(), device="cpu")
    assert not (tmp_path / "run").exists()  # no stage ran


def test_the_width_check_takes_k_from_an_earlier_quantize_stage() -> None:
    from deepzip.pipeline.registry import check_recipe
    from pipeline_toy import toy_model

    def recipe(earlier_bits: int) -> Recipe:
        return Recipe.from_dict(
            {
                "stages": [
                    {"type": "quantize", "bits": earlier_bits},
                    {"type": "weightless", "cell_bits": 2, "quantize": {"bits": 5}},
                    {"type": "encode"},
                ]
            }
        )

    check_recipe(toy_model(), recipe(1))  # K <= 2 from the quantize stage: 2**2 > K
    with pytest.raises(ConfigError, match=r"stage 2 \(weightless\): .*K = 4 clusters"):
        check_recipe(toy_model(), recipe(2))


def test_a_layer_the_quantize_override_keeps_in_float_is_skipped_with_that_reason() -> None:
    net = _net()  # pruned, not clustered
    quantize = QuantizeConfig(bits=2, overrides=(BitsOverride("0", skip=True),))
    result = weightless_(net, WeightlessConfig(cell_bits=4), quantize=quantize)
    assert [layer.name for layer in result.layers] == ["2.weight", "4.weight"]
    assert {s.name: s.reason for s in result.skipped}["0.weight"] == (
        "kept in float by a quantize override (not encoded)"
    )
    assert get_shared(net[0]) is None
