"""Hessian-weighted quantization: the Fisher estimate and how the quantizers use importance."""

from __future__ import annotations

import pytest
import torch
from laplace_weights import laplace as _laplace
from torch import nn

from deepzip import PruneConfig, prune_
from deepzip.config import QuantizeConfig
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize import export_shared, fisher_diagonal, quantize_
from deepzip.quantize.scalar import ecsq_quantize


def _per_sample_fisher(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]
) -> dict[str, torch.Tensor]:
    """Reference: the mean of each sample's squared gradient, one backward pass per sample."""
    model.eval()
    params = dict(model.named_parameters())
    ref = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(x.shape[0]):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n in names:
            grad = params[n].grad
            assert grad is not None
            ref[n] += grad**2
    model.zero_grad(set_to_none=True)
    return {n: r / x.shape[0] for n, r in ref.items()}


def test_fisher_is_the_mean_of_per_sample_squared_gradients(
    mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = blobs
    x, y = x[:100], y[:100]
    ref = _per_sample_fisher(mlp, x, y, ["0.weight", "3.weight"])
    # uneven batches (40, 40, 20) and a fourth batch that max_batches leaves out
    batches = [(x[0:40], y[0:40]), (x[40:80], y[40:80]), (x[80:100], y[80:100]), (x, y)]
    imp = fisher_diagonal(mlp, batches, max_batches=3)
    assert set(imp) == {"0.weight", "3.weight"}
    for name, r in ref.items():
        torch.testing.assert_close(imp[name], r, rtol=1e-4, atol=1e-9)
    # the square of the batch-mean gradient is a far smaller quantity: not what is returned
    mlp.zero_grad()
    nn.functional.cross_entropy(mlp(x), y).backward()
    grad = mlp[0].weight.grad
    assert grad is not None
    assert not imp["0.weight"].requires_grad
    assert float((grad**2).sum()) < 0.5 * float(imp["0.weight"].sum())
    mlp.zero_grad(set_to_none=True)


def test_fisher_of_a_pruned_model_reads_the_masked_weights(
    mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = blobs
    x, y = x[:64], y[:64]
    prune_(mlp, PruneConfig(sparsity=0.5))
    names = ["0.parametrizations.weight.original", "3.parametrizations.weight.original"]
    ref = _per_sample_fisher(mlp, x, y, names)
    imp = fisher_diagonal(mlp, [(x, y)])
    torch.testing.assert_close(imp["0.weight"], ref[names[0]], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(imp["3.weight"], ref[names[1]], rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in mlp.parameters())


class _Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot trace it, so the per-sample loop is used."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        if bool(out.sum() > 0):
            out = out * 2
        return out


def test_fisher_falls_back_to_one_pass_per_sample(
    blobs: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = blobs
    x, y = x[:50], y[:50]
    model = _Branchy()
    ref = _per_sample_fisher(model, x, y, ["fc.weight"])
    imp = fisher_diagonal(model, [(x, y)])
    torch.testing.assert_close(imp["fc.weight"], ref["fc.weight"], rtol=1e-4, atol=1e-9)
    assert model.fc.weight.requires_grad
    assert model.fc.weight.grad is None


def test_quantize_uses_the_importance(mlp: nn.Module) -> None:
    # all importance on one weight: its centroid is that weight's own value exactly
    w = mlp[0].weight.detach().clone()
    imp = {"0.weight": torch.full_like(w, 1e-6), "3.weight": torch.ones_like(mlp[3].weight)}
    imp["0.weight"][5, 7] = 1e6
    quantize_(mlp, QuantizeConfig(bits=2, importance="fisher"), importance=imp)
    shared = export_shared(mlp)["0.weight"]
    centroid = shared.codebook[shared.indices[5, 7].long()]
    assert float(centroid) == pytest.approx(float(w[5, 7]), abs=1e-6)


def test_importance_given_with_importance_none_is_refused(mlp: nn.Module) -> None:
    # it was dropped silently: the user's Fisher tensors changed nothing
    imp = {"0.weight": torch.ones_like(mlp[0].weight), "3.weight": torch.ones_like(mlp[3].weight)}
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(ConfigError, match=r"quantize\.importance is 'none'"):
        quantize_(mlp, QuantizeConfig(bits=2), importance=imp)
    assert mlp.state_dict().keys() == before.keys()


def test_importance_error_names_the_layer_index_and_value(mlp: nn.Module) -> None:
    imp = {"0.weight": torch.ones_like(mlp[0].weight), "3.weight": torch.ones_like(mlp[3].weight)}
    imp["3.weight"][2, 9] = -2.5
    with pytest.raises(InvalidTensorError, match=r"3\.weight: .*index \[2, 9\]: -2\.5"):
        quantize_(mlp, QuantizeConfig(bits=2, importance="fisher"), importance=imp)
    imp["3.weight"][2, 9] = float("nan")
    with pytest.raises(InvalidTensorError, match=r"3\.weight: .*index \[2, 9\]: nan"):
        quantize_(mlp, QuantizeConfig(bits=2, importance="fisher"), importance=imp)


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-8, 1e4])
def test_ecsq_does_not_depend_on_the_scale_of_the_importance(scale: float) -> None:
    values = _laplace(4000, seed=3)
    g = torch.Generator().manual_seed(4)
    imp = torch.rand(values.shape, generator=g) + 0.5
    base = ecsq_quantize(values, 32, 0.05, weights=imp)
    scaled = ecsq_quantize(values, 32, 0.05, weights=imp * scale)
    assert base.k > 8  # λ = 0.05 merges some cells, not all
    assert scaled.k == base.k
    assert torch.equal(scaled.labels, base.labels)
    # constant importance is no importance at all
    assert torch.equal(
        ecsq_quantize(values, 32, 0.05, weights=torch.full_like(values, scale)).labels,
        ecsq_quantize(values, 32, 0.05).labels,
    )
