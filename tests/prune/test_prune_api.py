from __future__ import annotations

import pytest
import torch
from torch import nn

from deepzip import (
    ConfigError,
    InvalidTensorError,
    LayerOverride,
    PruneConfig,
    prune_,
    pruning_report,
    strip_,
)
from deepzip.prune import get_mask, mask_dict
from deepzip.prune.masks import global_magnitude_masks


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _train_steps(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int = 30
) -> None:
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
        lambda p: torch.optim.Adam(p, lr=1e-2),
    ],
    ids=["sgd-momentum-wd", "adamw", "adam"],
)
def test_masked_weights_stay_exactly_zero_through_retraining(
    mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor], make_opt: object
) -> None:
    x, y = blobs
    prune_(mlp, PruneConfig(sparsity=0.8))
    masks = mask_dict(mlp)
    opt = make_opt(mlp.parameters())  # type: ignore[operator]
    before = {k: v.detach().clone() for k, v in _weights(mlp).items()}
    _train_steps(mlp, opt, x, y)
    for name, w in _weights(mlp).items():
        keep = masks[f"{name}.weight"]
        assert torch.count_nonzero(w[~keep]) == 0, name
        assert not torch.equal(w[keep], before[name][keep]), f"{name} did not train"
    strip_(mlp)
    for name, w in _weights(mlp).items():
        assert isinstance(w, nn.Parameter)
        assert torch.count_nonzero(w[~masks[f"{name}.weight"]]) == 0
    assert mask_dict(mlp) == {}


def test_resnet_with_batchnorm_trains_under_masks(resnet: nn.Module) -> None:
    report = prune_(
        resnet, PruneConfig(sparsity=0.5, overrides=(LayerOverride("stem", skip=True),))
    )
    assert [r.name for r in report.layers] == [
        "conv1.weight",
        "conv2.weight",
        "proj.weight",
        "head.weight",
    ]
    assert ("stem.weight", "skipped by override 'stem'") in {
        (s.name, s.reason) for s in report.skipped
    }
    x = torch.randn(8, 1, 12, 12)
    y = torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(resnet.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    _train_steps(resnet, opt, x, y, steps=5)
    for r in report.layers:
        owner = r.name.rsplit(".", 1)[0]
        m = get_mask(resnet.get_submodule(owner))
        assert m is not None
        assert torch.count_nonzero(resnet.get_submodule(owner).weight[~m.mask]) == 0


def test_iterative_calls_tighten_and_report(mlp: nn.Module) -> None:
    cfg = PruneConfig(sparsity=0.9, overrides=(LayerOverride("3", sparsity=0.5),))
    r1 = prune_(mlp, cfg, progress=0.5)
    assert r1.kept_by_layer() == {"0.weight": 0.55, "3.weight": 0.75}
    r2 = prune_(mlp, cfg)
    assert r2.kept_by_layer() == {"0.weight": 0.1, "3.weight": 0.5}
    assert pruning_report(mlp).kept_by_layer() == r2.kept_by_layer()
    assert r2.kept == 128 + 128


def test_quality_threshold_uses_dense_std(mlp: nn.Module) -> None:
    w = mlp[0].weight.detach().clone()
    std = float(w.double().std())
    report = prune_(mlp, PruneConfig(quality=1.0, include=("0",)))
    assert report.layers[0].kept == int((w.abs() >= std).sum())


def test_global_scope_single_threshold(mlp: nn.Module) -> None:
    all_w = torch.cat([mlp[0].weight.flatten(), mlp[3].weight.flatten()]).abs()
    report = prune_(mlp, PruneConfig(sparsity=0.75, scope="global"))
    assert report.kept == round(0.25 * all_w.numel())
    thr = all_w.sort().values[all_w.numel() - report.kept]
    for mod in (mlp[0], mlp[3]):
        live = mod.weight[mod.weight != 0].abs()
        assert bool((live >= thr).all())


def test_pattern_matching_no_layer(mlp: nn.Module) -> None:
    with pytest.raises(ConfigError, match="override pattern 'fc9' matches no prunable layer"):
        prune_(mlp, PruneConfig(sparsity=0.5, overrides=(LayerOverride("fc9", sparsity=0.1),)))
    with pytest.raises(ConfigError, match=r"include pattern 'encoder\.\*' matches no layer"):
        prune_(mlp, PruneConfig(sparsity=0.5, include=("encoder.*",)))


def test_nan_weights_raise_and_leave_model_unpruned(mlp: nn.Module) -> None:
    with torch.no_grad():
        mlp[3].weight[1, 2] = float("nan")
    with pytest.raises(InvalidTensorError, match=r"^3\.weight: 1 non-finite value"):
        prune_(mlp, PruneConfig(sparsity=0.5))
    assert mask_dict(mlp) == {}


def test_bad_progress(mlp: nn.Module) -> None:
    with pytest.raises(ConfigError, match="progress"):
        prune_(mlp, PruneConfig(sparsity=0.5), progress=0.0)


class _TwoWeights(nn.Module):
    """One module holding two prunable tensors: ``weight`` and ``weight2`` of another shape."""

    def __init__(self, rows2: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))
        self.weight2 = nn.Parameter(torch.randn(rows2, 8))


@pytest.mark.parametrize("rows2", [8, 4])
def test_global_scope_tightens_each_tensor_with_its_own_mask(rows2: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_TwoWeights(rows2))
    inc = ("0.weight", "0.weight2")
    prune_(model, PruneConfig(sparsity=0.5, scope="global", include=inc))
    before = mask_dict(model)
    assert not torch.equal(before["0.weight"][:rows2], before["0.weight2"])
    weights = {"0.weight": model[0].weight.detach(), "0.weight2": model[0].weight2.detach()}
    expected = global_magnitude_masks(weights, 0.7, before)
    report = prune_(model, PruneConfig(sparsity=0.7, scope="global", include=inc))
    after = mask_dict(model)
    total = 64 + 8 * rows2
    assert report.kept == total - round(0.7 * total)
    for name in inc:
        assert torch.equal(after[name], expected[name])
        assert not bool((after[name] & ~before[name]).any())  # nothing comes back
