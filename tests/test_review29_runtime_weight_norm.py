"""``load_compressed`` loads a weight under the model's own parametrization (``weight_norm``)
through its ``right_inverse``, as ``dz.load_model`` does, and refuses one it cannot load
before the model changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

import deepzip as dz
from deepzip.errors import CheckpointError
from deepzip.runtime import load_compressed


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(weight_norm(nn.Linear(6, 5)), nn.ReLU(), nn.Linear(5, 3))


def test_a_weight_norm_model_loads_through_the_runtime(tmp_path: Path) -> None:
    model = _model()
    dz.prune_(model, dz.PruneConfig(sparsity=0.5, include=("2",)))
    dz.quantize_(model, dz.QuantizeConfig(bits=3, include=("2",)))
    path = tmp_path / "m.dzip"
    dz.save(model, path)
    x = torch.randn(4, 6)
    with torch.no_grad():
        expected = model(x)
    torch.manual_seed(1)
    fresh = nn.Sequential(weight_norm(nn.Linear(6, 5)), nn.ReLU(), nn.Linear(5, 3))
    load_compressed(path, fresh)
    with torch.no_grad():
        assert torch.allclose(fresh(x), expected, atol=1e-6)
    assert parametrize.is_parametrized(fresh[0], "weight")  # the user's weight_norm stays


class _Scale(nn.Module):  # no right_inverse
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def test_a_parametrization_without_right_inverse_is_refused_before_any_change(
    tmp_path: Path,
) -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    dz.prune_(model, dz.PruneConfig(sparsity=0.5, include=("2",)))
    dz.quantize_(model, dz.QuantizeConfig(bits=3, include=("2",)))
    path = tmp_path / "m.dzip"
    dz.save(model, path)
    target = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    dz.prune_(target, dz.PruneConfig(sparsity=0.3, include=("2",)))
    parametrize.register_parametrization(target[0], "weight", _Scale())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"'0\.weight' is under the model's parametrization"):
        load_compressed(path, target)
    after = target.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
