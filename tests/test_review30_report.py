"""Review 30: the compression table's total row."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import deepzip as dz
from deepzip.report.tables import compression_table, compression_table_rows


def test_the_total_kept_share_is_over_the_weights_the_row_counts(tmp_path: Path) -> None:
    # The total row counted the raw tensors' weights but gave the kept share of the compressed
    # layers alone: 50.00% beside a weight count whose kept share is 54.62%.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 9), nn.Linear(9, 2))  # 90 + 18 weights, 11 biases
    dz.prune_(model, dz.PruneConfig(sparsity=0.5))
    dz.quantize_(model, dz.QuantizeConfig(bits=2))
    table = compression_table(dz.save(model, tmp_path / "m.dzip").to_dict())
    layers = {r.name: r for r in table.layers}
    assert set(layers) == {"0.weight", "1.weight"}
    assert (layers["0.weight"].kept, layers["1.weight"].kept) == (45, 9)
    assert table.others is not None
    assert (table.others.weights, table.others.kept) == (11, 11)  # biases, stored whole
    total = compression_table_rows(table)[-1]
    assert total[:3] == ["total", "119", f"{100 * (45 + 9 + 11) / 119:.2f}%"]
