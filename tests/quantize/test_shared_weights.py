from __future__ import annotations

import pytest
import torch
from torch import nn

from deepzip import PruneConfig, prune_
from deepzip.config import BitsOverride, QuantizeConfig
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.prune import get_mask
from deepzip.quantize import export_shared, fisher_diagonal, quantize_, strip_
from deepzip.quantize.shared import SharedTensor, SharedWeight, attach_shared, get_shared
from deepzip.quantize.weightless import get_weightless
from deepzip.targets import Skipped


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def test_centroid_gradient_is_sum_of_member_gradients(
    mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = blobs
    prune_(mlp, PruneConfig(sparsity=0.5))
    quantize_(mlp, QuantizeConfig(bits=3))
    shared = get_shared(mlp[0])
    assert shared is not None
    # reference: the same weights as a plain leaf tensor, gradients per weight
    dense = mlp[0].weight.detach().clone().requires_grad_(True)
    ref = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.0), nn.Linear(64, 4))
    ref.load_state_dict(
        {"0.bias": mlp[0].bias, "3.weight": mlp[3].weight, "3.bias": mlp[3].bias}, strict=False
    )
    mlp.eval()
    ref.eval()
    out = nn.functional.linear(x, dense, mlp[0].bias)
    loss_ref = nn.functional.cross_entropy(ref[3](torch.relu(out)), y)
    loss_ref.backward()
    _loss(mlp, x, y).backward()
    assert shared.codebook.grad is not None
    idx, mask = shared.indices.long(), shared.mask
    assert dense.grad is not None
    for c in range(shared.codebook.numel()):
        expected = dense.grad[(idx == c) & mask].sum()
        torch.testing.assert_close(shared.codebook.grad[c], expected, rtol=1e-4, atol=1e-6)


def test_mean_rule_divides_by_cluster_size(
    mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = blobs
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 4))
    twin.load_state_dict(mlp.state_dict())
    quantize_(mlp, QuantizeConfig(bits=2, include=("0",)))
    quantize_(twin, QuantizeConfig(bits=2, include=("0",), grad="mean"))
    mlp.eval()
    twin.eval()
    _loss(mlp, x, y).backward()
    _loss(twin, x, y).backward()
    s, m = get_shared(mlp[0]), get_shared(twin[0])
    assert s is not None
    assert m is not None
    assert s.codebook.grad is not None
    assert m.codebook.grad is not None
    torch.testing.assert_close(m.codebook.grad, s.codebook.grad / s.counts.clamp(min=1))


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    ],
    ids=["sgd", "adamw"],
)
def test_pruned_positions_stay_zero_and_indices_fixed(
    mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor], make_opt: object
) -> None:
    x, y = blobs
    prune_(mlp, PruneConfig(sparsity=0.8))
    quantize_(mlp, QuantizeConfig(bits=4))
    before = export_shared(mlp)
    opt = make_opt([p for p in mlp.parameters() if p.requires_grad])  # type: ignore[operator]
    for _ in range(20):
        opt.zero_grad()
        _loss(mlp, x, y).backward()
        opt.step()
    after = export_shared(mlp)
    for name, b in before.items():
        a = after[name]
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(a.mask, b.mask)
        assert not torch.equal(a.codebook, b.codebook), f"{name} codebook did not train"
        w = mlp.get_submodule(name.rsplit(".", 1)[0]).weight
        assert torch.count_nonzero(w[~b.mask]) == 0
        assert set(w[b.mask].unique().tolist()) <= set(a.codebook.tolist())
    strip_(mlp)
    w = mlp[0].weight
    assert isinstance(w, nn.Parameter)
    assert torch.count_nonzero(w[~before["0.weight"].mask]) == 0
    assert export_shared(mlp) == {}


@pytest.mark.parametrize("bits", range(1, 9))
def test_index_range_and_dtype_for_every_bit_width(mlp: nn.Module, bits: int) -> None:
    quantize_(mlp, QuantizeConfig(bits=bits))
    for shared in export_shared(mlp).values():
        assert shared.indices.dtype == torch.uint8
        assert shared.codebook.dtype == torch.float32
        assert int(shared.indices.max()) < shared.codebook.numel() <= 2**bits


def test_paper_default_bits_and_overrides(resnet: nn.Module) -> None:
    report = quantize_(
        resnet,
        QuantizeConfig(overrides=(BitsOverride("head", bits=3), BitsOverride("proj", skip=True))),
    )
    bits = {layer.name: layer.bits for layer in report.layers}
    assert bits == {"stem.weight": 8, "conv1.weight": 8, "conv2.weight": 8, "head.weight": 3}
    assert ("proj.weight", "skipped by override (kept in float)") in {
        (s.name, s.reason) for s in report.skipped
    }
    with pytest.raises(ConfigError, match="'fc9' matches no quantizable layer"):
        quantize_(resnet, QuantizeConfig(overrides=(BitsOverride("fc9", bits=2),)))


def test_same_seed_same_codebooks(mlp: nn.Module) -> None:
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 4))
    twin.load_state_dict(mlp.state_dict())
    cfg = QuantizeConfig(bits=4, init="kmeans++", seed=7)
    quantize_(mlp, cfg)
    quantize_(twin, cfg)
    for name, s in export_shared(mlp).items():
        assert torch.equal(s.codebook, export_shared(twin)[name].codebook)


def test_layer_with_no_surviving_weights_is_reported(mlp: nn.Module) -> None:
    with torch.no_grad():
        mlp[3].weight.zero_()
    report = quantize_(mlp, QuantizeConfig(bits=4))
    assert [layer.name for layer in report.layers] == ["0.weight"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["3.weight"].startswith("no surviving weights")
    assert torch.count_nonzero(mlp[3].weight) == 0


def test_bad_inputs(mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(ConfigError, match=r"quantize\.bits must be an integer from 1 to 8, got 9"):
        QuantizeConfig(bits=9)
    with pytest.raises(ConfigError, match="needs importance tensors"):
        quantize_(mlp, QuantizeConfig(bits=4, importance="fisher"))
    bad_shape = {"0.weight": torch.ones(3), "3.weight": torch.ones(4, 64)}
    with pytest.raises(InvalidTensorError, match=r"0\.weight: importance has shape \(3,\)"):
        quantize_(mlp, QuantizeConfig(bits=4, importance="fisher"), importance=bad_shape)
    negative = {"0.weight": -torch.ones(64, 20), "3.weight": torch.ones(4, 64)}
    with pytest.raises(InvalidTensorError, match=r"0\.weight: importance must be finite and >= 0"):
        quantize_(mlp, QuantizeConfig(bits=4, importance="fisher"), importance=negative)
    with torch.no_grad():
        mlp[3].weight[0, 0] = float("inf")
    with pytest.raises(InvalidTensorError, match=r"3\.weight: 1 non-finite"):
        quantize_(mlp, QuantizeConfig(bits=4))
    assert export_shared(mlp) == {}  # nothing was changed before the error


def test_importance_zero_on_a_layers_survivors_fails_before_any_layer_changes(
    mlp: nn.Module,
) -> None:
    prune_(mlp, PruneConfig(sparsity=0.5))
    kept = mlp[3].parametrizations.weight[0].mask
    imp = {"0.weight": torch.ones(64, 20), "3.weight": (~kept).to(torch.float32)}
    with pytest.raises(InvalidTensorError, match=r"3\.weight: importance is zero for every "):
        quantize_(mlp, QuantizeConfig(bits=4, importance="fisher"), importance=imp)
    assert export_shared(mlp) == {}  # 0.weight was not quantized either
    assert get_shared(mlp[0]) is None
    imp["3.weight"] = torch.zeros(4, 64)
    with pytest.raises(InvalidTensorError, match=r"3\.weight: importance is zero for every "):
        quantize_(mlp, QuantizeConfig(bits=4, importance="fisher"), importance=imp)
    assert export_shared(mlp) == {}


def test_bad_gradient_rule_is_a_config_error_and_changes_nothing(mlp: nn.Module) -> None:
    prune_(mlp, PruneConfig(sparsity=0.5))
    sw = SharedTensor(
        torch.tensor([-1.0, 1.0]),
        torch.zeros(64, 20, dtype=torch.uint8),
        torch.ones(64, 20, dtype=torch.bool),
    )
    with pytest.raises(ConfigError, match="grad must be 'sum' or 'mean', got 'foo'"):
        attach_shared(mlp[0], "weight", sw, grad="foo")  # type: ignore[arg-type]
    assert get_mask(mlp[0]) is not None  # the pruning mask was not folded away
    with pytest.raises(ConfigError, match="grad must be"):
        SharedWeight(sw.codebook, sw.indices, sw.mask, grad="foo")  # type: ignore[arg-type]


def test_fisher_importance_weights_kmeans(
    mlp: nn.Module, blobs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = blobs
    batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, 512, 128)]
    imp = fisher_diagonal(mlp, batches, max_batches=4)
    assert set(imp) == {"0.weight", "3.weight"}
    assert all(
        bool((v >= 0).all()) and v.shape == mlp.get_submodule(k[0]).weight.shape
        for k, v in imp.items()
    )
    assert all(p.grad is None for p in mlp.parameters())
    report = quantize_(mlp, QuantizeConfig(bits=3, importance="fisher"), importance=imp)
    assert [layer.levels for layer in report.layers] == [8, 8]


def _member_sums(grad: torch.Tensor, sw: SharedWeight) -> torch.Tensor:
    """Reference: each entry's gradient summed in float64 over its unpruned members."""
    idx, mask = sw.indices.long(), sw.mask
    g = grad.to(torch.float64)
    return torch.stack([g[(idx == c) & mask].sum() for c in range(sw.codebook.numel())]).to(
        torch.float32
    )


def test_codebook_gradient_is_bit_reproducible_with_several_threads() -> None:
    # PyTorch's own backward of a 2-D gather adds with parallel atomics: with 2 threads, 30
    # repeats gave about 25 different codebook gradients before deepzip summed in fixed order.
    gen = torch.Generator().manual_seed(0)
    shape = (500, 800)
    indices = torch.randint(0, 3, shape, generator=gen, dtype=torch.uint8)
    mask = torch.rand(shape, generator=gen) < 0.9
    grad = torch.randn(shape, generator=gen)
    sw = SharedWeight(torch.tensor([-1.0, 0.0, 1.0]), indices, mask)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = set()
        for _ in range(20):
            sw.codebook.grad = None
            sw(torch.zeros(shape)).backward(grad)
            assert sw.codebook.grad is not None
            grads.add(tuple(sw.codebook.grad.tolist()))
    finally:
        torch.set_num_threads(threads)
    assert len(grads) == 1
    torch.testing.assert_close(
        torch.tensor(grads.pop()), _member_sums(grad, sw), rtol=1e-6, atol=1e-5
    )


def test_gradient_follows_indices_and_mask_changed_in_place() -> None:
    gen = torch.Generator().manual_seed(1)
    indices = torch.randint(0, 4, (6, 7), generator=gen, dtype=torch.uint8)
    mask = torch.rand(6, 7, generator=gen) < 0.7
    grad = torch.randn(6, 7, generator=gen)
    sw = SharedWeight(torch.linspace(-1, 1, 4), indices, mask)
    sw(torch.zeros(6, 7)).backward(grad)
    assert sw.codebook.grad is not None
    torch.testing.assert_close(sw.codebook.grad, _member_sums(grad, sw))
    with torch.no_grad():  # what load_state_dict does: copy into the buffers
        sw.indices.copy_(torch.randint(0, 4, (6, 7), generator=gen, dtype=torch.uint8))
        sw.mask[0].fill_(False)
    sw.codebook.grad = None
    weight = sw(torch.zeros(6, 7))
    assert torch.equal(weight, sw.codebook.detach()[sw.indices.long()] * sw.mask)
    weight.backward(grad)
    torch.testing.assert_close(sw.codebook.grad, _member_sums(grad, sw))


def test_first_forward_under_inference_mode_then_training() -> None:
    indices = torch.tensor([[0, 1], [1, 1]], dtype=torch.uint8)
    sw = SharedWeight(torch.tensor([-0.5, 0.5]), indices, torch.ones(2, 2, dtype=torch.bool))
    with torch.inference_mode():
        assert torch.equal(sw(torch.zeros(2, 2)), torch.tensor([[-0.5, 0.5], [0.5, 0.5]]))
    sw(torch.zeros(2, 2)).backward(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert sw.codebook.grad is not None
    assert sw.codebook.grad.tolist() == [1.0, 9.0]
    assert set(sw.state_dict()) == {"codebook", "indices", "mask", "counts"}


def test_weightless_layers_are_left_alone_and_reported(weightless_mlp: nn.Sequential) -> None:
    net = weightless_mlp
    encoded = get_weightless(net[0])
    assert encoded is not None
    weight = net[0].weight.detach().clone()
    report = quantize_(net, QuantizeConfig(bits=3))
    assert [layer.name for layer in report.layers] == ["2.weight"]
    reason = "encoded with Weightless (quantizing again would drop its filter)"
    assert Skipped("0.weight", reason) in report.skipped
    assert get_weightless(net[0]) is encoded  # the filter is kept
    assert torch.equal(net[0].weight, weight)
    for include in (("0",), ("0.weight", "2"), ("*",)):
        with pytest.raises(ConfigError, match=r"0\.weight is encoded with Weightless.*\.include"):
            quantize_(net, QuantizeConfig(bits=2, include=include))
    named = QuantizeConfig(bits=2, overrides=(BitsOverride("0", bits=3),))
    with pytest.raises(ConfigError, match=r"leave it out of quantize\.overrides"):
        quantize_(net, named)
    assert get_weightless(net[0]) is encoded
    assert quantize_(net, QuantizeConfig(bits=2, include=("2",))).layers[0].levels == 4


def test_strip_trains_again_what_weightless_froze(weightless_mlp: nn.Sequential) -> None:
    layer = weightless_mlp[0]
    decoded = layer.weight.detach().clone()
    assert not layer.bias.requires_grad  # train_encoded = False froze it
    strip_(weightless_mlp)
    assert get_weightless(layer) is None
    assert torch.equal(layer.weight, decoded)
    assert layer.weight.requires_grad
    assert layer.bias.requires_grad
