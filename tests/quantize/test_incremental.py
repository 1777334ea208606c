from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from deepzip import PruneConfig, prune_
from deepzip.config import (
    BitsOverride,
    INQConfig,
    MLQConfig,
    QuantizeConfig,
    SLQConfig,
)
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.format import load_checkpoint, save_checkpoint
from deepzip.quantize import export_shared, quantize_, strip_
from deepzip.quantize.incremental import (
    IncrementalStep,
    SymmetricSharedWeight,
    get_frozen,
    inq_,
    mlq_,
    slq_,
    step_count,
)
from deepzip.quantize.shared import SharedTensor, get_shared
from deepzip.quantize.weightless import get_weightless

Blobs = tuple[torch.Tensor, torch.Tensor]
Verb = Callable[..., object]

METHODS: list[tuple[str, Verb, object]] = [
    ("slq-3bit", slq_, SLQConfig(bits=3, train_codebook=False)),
    ("slq-ternary", slq_, SLQConfig(bits="ternary", train_codebook=False)),
    ("mlq-ternary", mlq_, MLQConfig(bits="ternary", train_codebook=False)),
    ("mlq-2bit", mlq_, MLQConfig(bits=2, steps=(0.5, 1.0), train_codebook=False)),
    ("inq-4bit", inq_, INQConfig(bits=4)),
]
IDS = [m[0] for m in METHODS]


pytestmark = pytest.mark.usefixtures("one_thread")


def _make_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 4))


def _trainer(
    blobs: Blobs,
    make_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    iters: int = 8,
    check: Callable[[nn.Module, int], None] | None = None,
) -> Callable[[nn.Module, int], None]:
    x, y = blobs

    def retrain(model: nn.Module, step: int) -> None:
        torch.manual_seed(100 + step)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_opt(params)
        model.train()
        for i in range(iters):
            idx = torch.randint(0, x.shape[0], (128,))
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            if check is not None:
                check(model, i)

    return retrain


def _sgd(p: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2)


def _adam(p: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2)


def _linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


# --------------------------------------------------------------------------------------------
# the properties


@pytest.mark.parametrize("make_opt", [_sgd, _adam], ids=["sgd-momentum-wd", "adam-wd"])
@pytest.mark.parametrize(("label", "verb", "config"), METHODS, ids=IDS)
def test_frozen_weights_never_change_during_retraining(
    blobs: Blobs,
    make_opt: Callable[..., torch.optim.Optimizer],
    label: str,
    verb: Verb,
    config: object,
) -> None:
    model = _make_mlp()
    prune_(model, PruneConfig(sparsity=0.5))
    masks = [m.weight.detach() != 0 for m in _linears(model)]
    snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    seen = {"frozen": 0, "free_moved": 0}

    def check(model: nn.Module, it: int) -> None:
        for j, layer in enumerate(_linears(model)):
            w = layer.weight.detach()
            assert bool((w[~masks[j]] == 0).all()), f"{label}: a pruned weight moved"
            fw = get_frozen(layer)
            if fw is None:  # finished: with a fixed codebook nothing may move at all
                key = ~masks[j] | masks[j]
                frozen = key
            else:
                frozen = fw.frozen.clone()
            if it == 0 or j not in snapshots:
                snapshots[j] = (frozen, w.clone())
                continue
            prev_frozen, prev_w = snapshots[j]
            assert torch.equal(frozen, prev_frozen)
            assert torch.equal(w[frozen], prev_w[frozen]), f"{label}: a frozen weight moved"
            seen["frozen"] += int(frozen.sum())
            free = masks[j] & ~frozen
            if bool(free.any()) and not torch.equal(w[free], prev_w[free]):
                seen["free_moved"] += 1
            snapshots[j] = (frozen, w.clone())

    def checked_retrain(model: nn.Module, step: int) -> None:
        snapshots.clear()
        _trainer(blobs, make_opt, check=check)(model, step)

    verb(model, config, checked_retrain)
    assert seen["frozen"] > 0
    assert seen["free_moved"] > 0  # the free weights did train: the check is not vacuous


@pytest.mark.parametrize(("label", "verb", "config"), METHODS, ids=IDS)
def test_every_weight_ends_on_a_level(blobs: Blobs, label: str, verb: Verb, config: object) -> None:
    model = _make_mlp()
    report, steps = verb(model, config, _trainer(blobs, _sgd))  # type: ignore[misc]
    shared = export_shared(model)
    assert set(shared) == {"0.weight", "3.weight"}
    for j, layer in enumerate(_linears(model)):
        s = shared[f"{'03'[j]}.weight"]
        w = layer.weight.detach()
        allowed = set(s.codebook.tolist()) | {0.0}
        assert set(w.unique().tolist()) <= allowed
        assert torch.equal(w, s.dense())
        entry = report.layers[j]
        assert len(set(w.unique().tolist())) <= entry.levels
        if isinstance(config, (SLQConfig, MLQConfig)) and config.bits == "ternary":
            a = float(s.codebook[1])
            assert s.codebook.tolist() == [-a, a]
            assert entry.levels == 3
        elif isinstance(config, INQConfig):
            assert entry.levels == 2 ** (config.bits - 1) + 1
        else:
            assert isinstance(config, (SLQConfig, MLQConfig))
            assert isinstance(config.bits, int)
            assert s.codebook.numel() <= 2**config.bits
            assert not bool((w[s.mask] == 0).any()) or 0.0 in s.codebook.tolist()
    assert steps[-1].frozen_fraction == 1.0
    assert [s.index for s in steps] == list(range(len(steps)))
    # stripping keeps exactly those values
    strip_(model)
    for j, layer in enumerate(_linears(model)):
        assert torch.equal(layer.weight.detach(), shared[f"{'03'[j]}.weight"].dense())


def test_inq_levels_are_powers_of_two_from_the_initial_max(blobs: Blobs) -> None:
    model = _make_mlp()
    prune_(model, PruneConfig(sparsity=0.3))
    start_max = [float(m.weight.detach().abs().max()) for m in _linears(model)]
    report, _ = inq_(model, INQConfig(bits=3), _trainer(blobs, _sgd))
    for j, layer in enumerate(_linears(model)):
        # the paper: n1 = floor(log2(4s/3)), n2 = n1 + 1 - 2**(b-1)/2 = n1 - 1 for b = 3
        n1 = math.floor(math.log2(4 * start_max[j] / 3))
        s = get_shared(layer)
        assert s is not None
        expected = [-(2.0**n1), -(2.0 ** (n1 - 1)), 2.0 ** (n1 - 1), 2.0**n1]
        assert s.codebook.tolist() == expected
        assert not s.codebook.requires_grad  # levels stay powers of two
        values = set(layer.weight.detach().unique().tolist())
        assert values <= {*expected, 0.0}
        assert report.layers[j].levels == 5


def test_inq_freezes_the_largest_magnitudes_first(blobs: Blobs) -> None:
    model = _make_mlp()
    start = _linears(model)[0].weight.detach().clone()
    seen: list[torch.Tensor] = []

    def retrain(model: nn.Module, step: int) -> None:
        fw = get_frozen(_linears(model)[0])
        if step == 0:
            assert fw is not None
            seen.append(fw.frozen.clone())

    inq_(model, INQConfig(bits=5), retrain)
    frozen = seen[0]
    assert int(frozen.sum()) == start.numel() // 2
    assert float(start.abs()[frozen].min()) >= float(start.abs()[~frozen].max())


def _grouped_layer(values: list[float]) -> nn.Linear:
    layer = nn.Linear(len(values), 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([values]))
    return layer


def _record_first_frozen(got: list[set[int]]) -> Callable[[nn.Module, int], None]:
    """A retrain that records which flat positions of ``model[0].weight`` step 0 froze."""

    def retrain(model: nn.Module, step: int) -> None:
        fw = get_frozen(model[0])
        if step == 0:
            assert fw is not None
            got.append({i for i, f in enumerate(fw.frozen.reshape(-1).tolist()) if f})

    return retrain


@pytest.mark.parametrize(
    ("rank", "order", "first"),
    [
        ("sse", "low_loss", {"A", "D"}),
        ("mse", "low_loss", {"A", "B"}),
        ("sse", "high_loss", {"C", "B"}),
        ("mse", "high_loss", {"C", "D"}),
        ("sse", "magnitude", {"C", "D"}),
    ],
)
def test_slq_freeze_order_picks_the_clusters_frozen_first(
    rank: str, order: str, first: set[str]
) -> None:
    # four well separated groups (centroids near 0.5, -0.5, 1.5, -1.5);
    # per-group SSE: A 3e-3, D 5e-3, B 9e-3, C 0.4; per-member MSE: A 1e-4, B 9e-4, D 2.5e-3, C 0.04
    groups = {
        "A": [0.5 + (0.01 if i % 2 else -0.01) for i in range(30)],
        "B": [-0.5 + (0.03 if i % 2 else -0.03) for i in range(10)],
        "C": [1.5 + (0.2 if i % 2 else -0.2) for i in range(10)],
        "D": [-1.5 + (0.05 if i % 2 else -0.05) for i in range(2)],
    }
    values = [v for g in groups.values() for v in g]
    names = [n for n, g in groups.items() for _ in g]
    model = nn.Sequential(_grouped_layer(values))
    got: list[set[int]] = []
    config = SLQConfig(bits=2, steps=(0.5, 1.0), rank=rank, freeze_order=order)  # type: ignore[arg-type]
    slq_(model, config, _record_first_frozen(got))
    assert [{names[i] for i in g} for g in got] == [first]
    s = get_shared(model[0])
    assert s is not None
    assert s.codebook.numel() == 4


@pytest.mark.parametrize(
    ("order", "first"), [("high_loss", {6, 7}), ("magnitude", {0, 7}), ("low_loss", {4, 5})]
)
@pytest.mark.parametrize("verb", ["slq", "mlq"])
def test_freeze_order_picks_the_ternary_weights_frozen_first(
    verb: str, order: str, first: set[int]
) -> None:
    # least-squares ternary scale by hand: the 5 largest magnitudes (3 + 4 x 1) maximise
    # S^2/m (49/5 = 9.8), so a = 1.4 and rounding errors are
    # 0.4 (the 1s), 0.02, 0.03, 0.45 (below a/2 -> 0) and 1.6 (3.0 clipped to a)
    values = [1.0, -1.0, 1.0, -1.0, 0.02, -0.03, 0.45, 3.0]
    model = nn.Sequential(_grouped_layer(values))
    got: list[set[int]] = []
    retrain = _record_first_frozen(got)
    steps = (0.25, 1.0)  # 2 of 8 weights, then the rest
    if verb == "slq":
        slq_(model, SLQConfig(bits="ternary", steps=steps, freeze_order=order), retrain)  # type: ignore[arg-type]
    else:
        config = MLQConfig(bits="ternary", steps=steps, groups=1, freeze_order=order)  # type: ignore[arg-type]
        mlq_(model, config, retrain)
    assert got == [first]
    s = get_shared(model[0])
    assert s is not None
    a = float(torch.tensor(1.4, dtype=torch.float32))
    assert s.codebook.tolist() == [-a, a]
    kept = s.mask.reshape(-1).tolist()
    assert kept == [True, True, True, True, False, False, False, True]


@pytest.mark.parametrize(("order", "first", "second"), [("forward", 0, 1), ("backward", 1, 0)])
def test_mlq_quantizes_layer_groups_in_order(order: str, first: int, second: int) -> None:
    model = _make_mlp()
    states: list[tuple[bool, bool, int, int]] = []

    def retrain(model: nn.Module, step: int) -> None:
        fw = [get_frozen(m) for m in _linears(model)]
        sw = [get_shared(m) for m in _linears(model)]
        f, s = fw[first], fw[second]
        states.append(
            (
                sw[first] is not None,
                sw[second] is not None,
                0 if f is None else f.n_frozen,
                0 if s is None else s.n_frozen,
            )
        )

    config = MLQConfig(bits="ternary", steps=(0.5, 1.0), groups=2, order=order)  # type: ignore[arg-type]
    _, steps = mlq_(model, config, retrain)
    names = ["0.weight", "0.weight", "3.weight", "3.weight"]
    assert [s.layers for s in steps] == [
        (n,) for n in (names if order == "forward" else names[::-1])
    ]
    n_first = _linears(model)[first].weight.numel()
    # step 0: half of the first group frozen, the second group untouched (float)
    assert states[0] == (False, False, round(n_first / 2), 0)
    # step 1: the first group finished and shared; the second not started
    assert states[1] == (True, False, 0, 0)
    # step 2: the second group under way
    assert states[2][:2] == (True, False)
    assert states[2][3] > 0
    assert states[3][:2] == (True, True)
    assert step_count(_make_mlp(), config) == 4


def test_ternary_scale_is_learned_and_tied(blobs: Blobs) -> None:
    model = _make_mlp()
    at_finish: dict[str, float] = {}

    def retrain(model: nn.Module, step: int) -> None:
        for name, s in export_shared(model).items():
            at_finish.setdefault(name, float(s.codebook[1]))
        _trainer(blobs, _adam, iters=20)(model, step)

    mlq_(model, MLQConfig(bits="ternary"), retrain)
    for name, s in export_shared(model).items():
        a = float(s.codebook[1])
        assert s.codebook.tolist() == [-a, a]
        assert a != at_finish[name]  # a trained after the layer was frozen
    # the tie holds even when the stored entries drift apart
    sw = get_shared(_linears(model)[0])
    assert isinstance(sw, SymmetricSharedWeight)
    with torch.no_grad():
        sw.codebook.copy_(torch.tensor([-0.3, 0.5]))
    a32 = float(torch.tensor(0.4, dtype=torch.float32))
    w = _linears(model)[0].weight.detach()
    assert set(w.unique().tolist()) == {-a32, 0.0, a32}
    assert sw.export().codebook.tolist() == [-a32, a32]


def test_same_seed_gives_identical_results(blobs: Blobs) -> None:
    def run(verb: Verb, config: object) -> tuple[dict[str, torch.Tensor], list[IncrementalStep]]:
        model = _make_mlp()
        prune_(model, PruneConfig(sparsity=0.4))
        _, steps = verb(  # type: ignore[misc]
            model, config, _trainer(blobs, _adam), evaluate=lambda m: _accuracy(m, blobs)
        )
        return {k: v.clone() for k, v in model.state_dict().items()}, steps

    for _, verb, config in METHODS:
        a, steps_a = run(verb, config)
        b, steps_b = run(verb, config)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
        assert steps_a == steps_b


def _accuracy(model: nn.Module, blobs: Blobs) -> float:
    x, y = blobs
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize(("label", "verb", "config"), METHODS, ids=IDS)
def test_pruned_zeros_stay_zero_and_never_join_a_level(
    blobs: Blobs, label: str, verb: Verb, config: object
) -> None:
    model = _make_mlp()
    prune_(model, PruneConfig(sparsity=0.7))
    pruned = [m.weight.detach() == 0 for m in _linears(model)]
    verb(model, config, _trainer(blobs, _adam))
    for j, layer in enumerate(_linears(model)):
        s = get_shared(layer)
        assert s is not None
        assert not bool(s.mask[pruned[j]].any())
        assert bool((layer.weight.detach()[pruned[j]] == 0).all())
        assert int(s.counts.sum()) == int(s.mask.sum())


def test_training_improves_on_the_blobs(blobs: Blobs) -> None:
    model = _make_mlp()
    _trainer(blobs, _adam, iters=60)(model, 0)
    dense = _accuracy(model, blobs)
    _, steps = slq_(
        model,
        SLQConfig(bits=3),
        _trainer(blobs, _adam, iters=10),
        evaluate=lambda m: _accuracy(m, blobs),
    )
    assert dense > 0.9
    assert steps[-1].acc_retrained is not None
    assert steps[-1].acc_retrained > 0.9


# --------------------------------------------------------------------------------------------
# interoperation


def test_checkpoint_round_trip_and_shared_export(blobs: Blobs, tmp_path: Path) -> None:
    model = _make_mlp()
    prune_(model, PruneConfig(sparsity=0.5))
    mlq_(model, MLQConfig(bits="ternary", steps=(0.5, 1.0)), _trainer(blobs, _adam))
    path = tmp_path / "mlq.safetensors"
    save_checkpoint(model, path)
    fresh = _make_mlp()
    load_checkpoint(fresh, path)
    for a, b in zip(_linears(model), _linears(fresh), strict=True):
        assert torch.equal(a.weight.detach(), b.weight.detach())
    before = export_shared(model)
    after = export_shared(fresh)
    for k, s in before.items():
        assert isinstance(s, SharedTensor)
        assert torch.equal(s.codebook, after[k].codebook)
        assert torch.equal(s.indices, after[k].indices)
        assert torch.equal(s.mask, after[k].mask)


def test_conv_and_batchnorm_model(resnet: nn.Module) -> None:
    x = torch.randn(16, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10

    def retrain(model: nn.Module, step: int) -> None:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    config = MLQConfig(bits=3, groups=3, order="size", steps=(0.5, 1.0))
    assert step_count(resnet, config) == 6
    report, steps = mlq_(resnet, config, retrain)
    assert len(steps) == 6
    names = {layer.name for layer in report.layers}
    assert names == {"stem.weight", "conv1.weight", "conv2.weight", "proj.weight", "head.weight"}
    # largest layers first: conv2 (2304) then conv1 (1152)
    assert steps[0].layers[0] == "conv2.weight"
    assert {s.name for s in report.skipped} >= {"bn0.weight", "head.bias"}


def test_overrides_set_bits_and_skip(blobs: Blobs) -> None:
    model = _make_mlp()
    config = SLQConfig(bits=4, overrides=(BitsOverride("0", bits=2), BitsOverride("3", skip=True)))
    report, _ = slq_(model, config, _trainer(blobs, _sgd))
    assert [(layer.name, layer.bits) for layer in report.layers] == [("0.weight", 2)]
    assert report.layers[0].levels <= 4
    assert [s.name for s in report.skipped if "override" in s.reason] == ["3.weight"]
    assert get_shared(_linears(model)[1]) is None


# --------------------------------------------------------------------------------------------
# errors


def test_errors_leave_the_model_untouched(blobs: Blobs) -> None:
    model = _make_mlp()
    retrain = _trainer(blobs, _sgd)
    with torch.no_grad():
        _linears(model)[1].weight[0, 0] = math.nan
    with pytest.raises(InvalidTensorError, match=r"3\.weight"):
        slq_(model, SLQConfig(), retrain)
    assert get_frozen(_linears(model)[0]) is None  # the first layer was not touched either
    model = _make_mlp()
    with pytest.raises(ConfigError, match="matches no"):
        inq_(model, INQConfig(overrides=(BitsOverride("nope*", bits=3),)), retrain)
    quantize_(model, QuantizeConfig(bits=4, include=("3",)))
    with pytest.raises(ConfigError, match=r"3\.weight is already quantized"):
        mlq_(model, MLQConfig(), retrain)
    assert get_frozen(_linears(model)[0]) is None
    with pytest.raises(ConfigError, match="no layer to quantize"):
        slq_(model, SLQConfig(exclude=("0", "3")), retrain)


def test_an_unfinished_run_is_detected(blobs: Blobs) -> None:
    model = _make_mlp()

    def failing(model: nn.Module, step: int) -> None:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):  # the retrain's own error
        slq_(model, SLQConfig(bits=3), failing)
    assert get_frozen(_linears(model)[0]) is not None
    with pytest.raises(ConfigError, match="unfinished"):
        slq_(model, SLQConfig(bits=3), _trainer(blobs, _sgd))


def _no_retrain(model: nn.Module, step: int) -> None:
    pass


HALF_METHODS: list[tuple[str, Verb, object]] = [
    ("slq-ternary", slq_, SLQConfig(bits="ternary", steps=(1.0,))),
    ("slq-ternary-steps", slq_, SLQConfig(bits="ternary", train_codebook=False)),
    ("mlq-ternary", mlq_, MLQConfig(bits="ternary")),
    ("slq-2bit", slq_, SLQConfig(bits=2)),
    ("inq-3bit", inq_, INQConfig(bits=3)),
    ("inq-8bit", inq_, INQConfig(bits=8)),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    ("label", "verb", "config"), HALF_METHODS, ids=[m[0] for m in HALF_METHODS]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_half_precision_models_keep_their_signs_and_export_their_weights(
    dtype: torch.dtype, label: str, verb: Verb, config: object, seed: int
) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).to(dtype)
    before = [m.weight.detach().to(torch.float32).clone() for m in _linears(model)]
    verb(model, config, _no_retrain)
    shared = export_shared(model)
    for name, m, w0 in zip(("0.weight", "2.weight"), _linears(model), before, strict=True):
        w = m.weight.detach()
        assert w.dtype == dtype
        sh = shared[name]
        assert int(sh.indices[sh.mask].max()) < sh.codebook.numel()
        assert torch.equal(sh.dense().to(dtype), w)  # the export is what the model computes
        if label.startswith(("slq-ternary", "mlq-ternary", "inq")):  # sign-preserving levels
            assert not bool((torch.sign(w.to(torch.float32)) * torch.sign(w0) < 0).any())


def _diverging(at: int) -> Callable[[nn.Module, int], None]:
    """A retrain that writes NaN into the second layer's free weights at step ``at``."""

    def retrain(model: nn.Module, step: int) -> None:
        if step == at:
            with torch.no_grad():
                model[2].parametrizations.weight.original.fill_(math.nan)

    return retrain


@pytest.mark.parametrize(
    ("verb", "config"),
    [
        (inq_, INQConfig(bits=3)),
        (slq_, SLQConfig(bits="ternary")),
        (mlq_, MLQConfig(bits="ternary", groups=1)),
        (slq_, SLQConfig(bits=2)),
    ],
    ids=["inq", "slq-ternary", "mlq-ternary", "slq-2bit"],
)
def test_non_finite_weights_after_retraining_are_refused(verb: Verb, config: object) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(InvalidTensorError, match=r"2\.weight: \d+ non-finite"):
        verb(model, config, _diverging(0))


def test_strip_removes_an_unfinished_run(blobs: Blobs) -> None:
    model = _make_mlp()

    def interrupted(model: nn.Module, step: int) -> None:
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        slq_(model, SLQConfig(bits=2), interrupted)
    first = _linears(model)[0]
    expected = first.weight.detach().clone()
    strip_(model)
    assert get_frozen(first) is None
    assert not hasattr(first, "parametrizations")
    assert torch.equal(first.weight, expected)  # the current weight, frozen levels included
    assert first.weight.requires_grad
    report, _ = slq_(model, SLQConfig(bits=2), _no_retrain)
    assert len(report.layers) == 2


@pytest.mark.parametrize(("label", "verb", "config"), METHODS, ids=[m[0] for m in METHODS])
def test_weightless_layers_are_skipped_and_reported(
    label: str, verb: Verb, config: object, weightless_mlp: nn.Sequential
) -> None:
    net = weightless_mlp
    encoded = get_weightless(net[0])
    assert encoded is not None
    report, _ = verb(net, config, lambda model, step: None)  # type: ignore[misc]
    assert [layer.name for layer in report.layers] == ["2.weight"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["0.weight"] == "encoded with Weightless (quantizing again would drop its filter)"
    assert get_weightless(net[0]) is encoded
    named = replace(config, include=("0",))  # type: ignore[type-var]
    with pytest.raises(ConfigError, match=rf"0\.weight is encoded with Weightless.*{label[:3]}\."):
        verb(net, named, lambda model, step: None)
