"""Review regressions for Weightless (``deepzip.weightless``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import deepzip as dz
from deepzip.config import PruneConfig, QuantizeConfig, WeightlessConfig
from deepzip.quantize.weightless import get_weightless
from deepzip.weightless import weightless_


def test_the_width_search_restores_a_module_registered_twice(tmp_path: Path) -> None:
    # One Linear under two names: the state dict holds its parametrization twice. Restoring
    # the model between two widths skipped it under its first name only, loaded the second
    # name's pre-encoding buffers and failed with "model structure changed".
    torch.manual_seed(0)
    shared = nn.Linear(32, 32)
    net = nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(32, 4))
    dz.prune_(net, PruneConfig(sparsity=0.8))
    dz.quantize_(net, QuantizeConfig(bits=2))
    keys = int(shared.parametrizations.weight[0].mask.sum())
    accuracies = iter([1.0, 0.0, 0.0, 1.0])  # start, t = 3, t = 4, t = 5 (within budget)

    report = weightless_(
        net,
        WeightlessConfig(max_drop=0.5, max_cell_bits=6, include=("0",)),
        retrain=lambda model, layer: None,
        evaluate=lambda model: next(accuracies, 1.0),
    )
    (layer,) = report.layers
    assert [t.cell_bits for t in layer.trials] == [3, 4, 5]
    assert layer.cell_bits == 5
    p = get_weightless(shared)
    assert p is not None
    assert int(p.mask.sum()) == keys + layer.false_positives  # the decoded layer, t = 5
    x = torch.randn(4, 32)
    with torch.no_grad():
        before = net(x)
    dz.save(net, tmp_path / "tied.dzip")
    again = nn.Linear(32, 32)
    fresh = nn.Sequential(again, nn.ReLU(), again, nn.ReLU(), nn.Linear(32, 4))
    dz.load_model(fresh, tmp_path / "tied.dzip")
    with torch.no_grad():
        assert torch.equal(fresh(x), before)


def test_a_layer_whose_name_reads_as_a_glob_is_the_one_clustered() -> None:
    # "fc[1].weight" as an include glob matches "fc1.weight" and not itself: the layer was
    # left unclustered (a bare AssertionError) and another one clustered in its place.
    torch.manual_seed(0)
    net = nn.ModuleDict({"fc[1]": nn.Linear(16, 16), "fc1": nn.Linear(16, 16)})
    dz.prune_(net, PruneConfig(sparsity=0.5))
    report = weightless_(
        net, WeightlessConfig(cell_bits=4, include=("fc[[]1]",)), quantize=QuantizeConfig(bits=2)
    )
    assert [layer.name for layer in report.layers] == ["fc[1].weight"]
    assert get_weightless(net["fc[1]"]) is not None
    assert dz.export_shared(net).keys() == {"fc[1].weight"}  # fc1 was not clustered
