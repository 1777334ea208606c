"""The training harness: convergence, determinism, callbacks, schedulers, errors."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.train import (
    Callback,
    FitState,
    LambdaCallback,
    evaluate,
    fit,
    make_optimizer,
    predict_logits,
    resolve_device,
    seed_everything,
)


def _separable(n: int = 256) -> TensorDataset:
    """Two classes split by a fixed hyperplane through the origin (with a margin)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    w = torch.tensor([1.0, -2.0])
    x = x + 0.5 * torch.sign(x @ w)[:, None] * w / w.norm()
    return TensorDataset(x, (x @ w > 0).long())


def _loader(batch_size: int = 64, shuffle: bool = True) -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(_separable(), batch_size=batch_size, shuffle=shuffle)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 2))


def _train(seed: int, epochs: int = 15) -> tuple[nn.Module, list[float]]:
    seed_everything(seed)
    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    history = fit(model, _loader(), optimizer=opt, epochs=epochs, device="cpu", seed=seed)
    return model, history.train_loss


class _Counting(Callback):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def on_fit_start(self, state: FitState) -> None:
        self.calls["fit_start"] += 1

    def on_epoch_start(self, state: FitState) -> None:
        self.calls["epoch_start"] += 1

    def on_batch_end(self, state: FitState) -> None:
        self.calls["batch_end"] += 1

    def on_epoch_end(self, state: FitState) -> None:
        self.calls["epoch_end"] += 1

    def on_fit_end(self, state: FitState) -> None:
        self.calls["fit_end"] += 1


def test_fit_learns_separable_problem() -> None:
    model, losses = _train(seed=0)
    result = evaluate(model, _loader(shuffle=False))
    assert result.accuracy > 0.9
    assert result.n == 256
    assert losses[-1] < 0.5 * losses[0]


def test_same_seed_same_weights() -> None:
    a, _ = _train(seed=3, epochs=3)
    b, _ = _train(seed=3, epochs=3)
    c, _ = _train(seed=4, epochs=3)
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])


def test_callbacks_called_per_hook_and_state() -> None:
    counter = _Counting()
    seen: list[tuple[int, int, int, int | None]] = []
    lam = LambdaCallback(
        on_batch_end=lambda s: seen.append((s.epoch, s.step, s.batch_in_epoch, s.batches_per_epoch))
    )
    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    history = fit(model, _loader(), optimizer=opt, epochs=3, device="cpu", callbacks=[counter, lam])
    assert counter.calls == {
        "fit_start": 1,
        "epoch_start": 3,
        "batch_end": 12,
        "epoch_end": 3,
        "fit_end": 1,
    }
    assert seen[0] == (0, 1, 1, 4)
    assert seen[-1] == (2, 12, 4, 4)
    assert len(history.records) == 3
    assert not history.stopped_early


def test_early_stop_after_current_batch() -> None:
    counter = _Counting()

    def stop_at_six(state: FitState) -> None:
        state.stop = state.step == 6

    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    history = fit(
        model,
        _loader(),
        optimizer=opt,
        epochs=10,
        device="cpu",
        callbacks=[counter, LambdaCallback(on_batch_end=stop_at_six)],
    )
    assert counter.calls["batch_end"] == 6
    assert counter.calls["epoch_end"] == 2
    assert counter.calls["fit_end"] == 1
    assert history.stopped_early
    assert len(history.records) == 2


def test_stop_at_epoch_end() -> None:
    def stop(state: FitState) -> None:
        state.stop = True

    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    history = fit(
        model,
        _loader(),
        optimizer=opt,
        epochs=5,
        device="cpu",
        callbacks=[LambdaCallback(on_epoch_end=stop)],
    )
    assert len(history.records) == 1


def test_scheduler_stepped_once_per_epoch() -> None:
    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lrs: list[float] = []
    record_lr = LambdaCallback(on_epoch_end=lambda s: lrs.append(opt.param_groups[0]["lr"]))
    fit(
        model,
        _loader(),
        optimizer=opt,
        epochs=3,
        device="cpu",
        scheduler=sched,
        callbacks=[record_lr],
    )
    assert sched.last_epoch == 3
    assert lrs == pytest.approx([0.05, 0.025, 0.0125])


def test_reduce_on_plateau_gets_val_loss() -> None:
    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    fit(
        model,
        _loader(),
        optimizer=opt,
        epochs=2,
        device="cpu",
        scheduler=sched,
        eval_loader=_loader(shuffle=False),
    )
    assert sched.last_epoch == 2
    assert math.isfinite(sched.best)


def test_eval_loader_metrics_in_state_and_history() -> None:
    seen: list[dict[str, float]] = []
    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    history = fit(
        model,
        _loader(),
        optimizer=opt,
        epochs=2,
        device="cpu",
        eval_loader=_loader(shuffle=False),
        callbacks=[LambdaCallback(on_epoch_end=lambda s: seen.append(dict(s.metrics)))],
    )
    assert [set(m) for m in seen] == [{"val_loss", "val_accuracy"}] * 2
    assert history.metric("val_accuracy") == [m["val_accuracy"] for m in seen]
    assert model.training
    final = evaluate(model, _loader(shuffle=False))
    assert final.accuracy == seen[-1]["val_accuracy"]
    assert final.loss == pytest.approx(seen[-1]["val_loss"])


def test_max_grad_norm_clips() -> None:
    model = nn.Linear(2, 2)
    norms: list[float] = []

    def grad_norm(state: FitState) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    fit(
        model,
        _loader(),
        optimizer=opt,
        epochs=1,
        device="cpu",
        loss_fn=lambda out, y: 1000 * nn.functional.cross_entropy(out, y),
        max_grad_norm=0.5,
        callbacks=[LambdaCallback(on_batch_end=grad_norm)],
    )
    assert max(norms) <= 0.5 + 1e-5


def test_loader_without_len() -> None:
    data = _separable(64)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from zip(data.tensors[0].split(16), data.tensors[1].split(16), strict=True)

    class Reiterable:
        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return batches()

    counts: list[int | None] = []
    model = _model()
    opt = make_optimizer(model.parameters(), "adam", 0.01)
    history = fit(
        model,
        Reiterable(),
        optimizer=opt,
        epochs=2,
        device="cpu",
        callbacks=[LambdaCallback(on_epoch_end=lambda s: counts.append(s.batches_per_epoch))],
    )
    assert counts == [None, None]
    assert len(history.train_loss) == 2


def test_epoch_loss_is_sample_weighted_mean() -> None:
    data = _separable(10)
    batches = list(zip(data.tensors[0].split(4), data.tensors[1].split(4), strict=True))
    losses: list[tuple[float, int]] = []
    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    record = LambdaCallback(
        on_batch_end=lambda s: losses.append((s.last_loss, len(batches[s.batch_in_epoch - 1][0])))
    )
    history = fit(model, batches, optimizer=opt, epochs=1, device="cpu", callbacks=[record])
    expected = sum(loss * n for loss, n in losses) / 10
    assert history.train_loss == [pytest.approx(expected)]


def test_non_finite_loss_raises_without_stepping() -> None:
    model = nn.Linear(2, 2)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 2)
    x[3, 0] = math.inf
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    with pytest.raises(InvalidTensorError, match=r"epoch 1/2, batch 1 .*step 1"):
        fit(model, [(x, torch.zeros(8, dtype=torch.long))], optimizer=opt, epochs=2, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_evaluate_restores_training_modes() -> None:
    model = _model()
    model.train()
    model[2].eval()
    result = evaluate(model, _loader(shuffle=False))
    assert 0.0 <= result.accuracy <= 1.0
    assert [m.training for m in model] == [True, True, False, True]
    model.eval()
    evaluate(model, _loader(shuffle=False))
    assert not any(m.training for m in model.modules())


def test_evaluate_uses_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.9))
    a = evaluate(model, _loader(shuffle=False))
    b = evaluate(model, _loader(shuffle=False))
    assert a == b
    assert model.training


def test_predict_logits() -> None:
    model = _model()
    logits = predict_logits(model, _loader(batch_size=100, shuffle=False))
    assert logits.shape == (256, 2)
    assert logits.device.type == "cpu"
    assert not logits.requires_grad
    model.eval()
    with torch.no_grad():
        assert torch.allclose(logits, model(_separable().tensors[0]))


def test_empty_loaders() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="no samples"):
        evaluate(model, [])
    with pytest.raises(ConfigError, match="no batches"):
        predict_logits(model, [])
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    with pytest.raises(ConfigError, match="no batches"):
        fit(model, [], optimizer=opt, epochs=1, device="cpu")


def test_bad_fit_arguments() -> None:
    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    with pytest.raises(ConfigError, match="epochs"):
        fit(model, _loader(), optimizer=opt, epochs=-1, device="cpu")
    with pytest.raises(ConfigError, match="max_grad_norm"):
        fit(model, _loader(), optimizer=opt, epochs=1, device="cpu", max_grad_norm=0.0)
    with pytest.raises(ConfigError, match="pair"):
        fit(model, [(torch.randn(2, 2),)], optimizer=opt, epochs=1, device="cpu")
    assert len(fit(model, _loader(), optimizer=opt, epochs=0, device="cpu").records) == 0


def _forbid_cuda(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """Pretend CUDA is available, fail on any CUDA initialisation, and record every device
    a module is moved to (``nn.Module.to``)."""

    def no_cuda(*args: object, **kwargs: object) -> None:
        raise AssertionError("CUDA was initialised")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    moved: list[torch.device] = []
    original_to = nn.Module.to

    def spy_to(self: nn.Module, *args: object, **kwargs: object) -> nn.Module:
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, str | torch.device):
            moved.append(torch.device(target))
        return original_to(self, *args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(nn.Module, "to", spy_to)
    return moved


def test_fit_default_device_is_the_models_even_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    moved = _forbid_cuda(monkeypatch)
    seed_everything(0)
    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    fit(model, _loader(), optimizer=opt, epochs=2, eval_loader=_loader(shuffle=False))
    assert moved  # fit did place the model, on the CPU
    assert all(dev.type == "cpu" for dev in moved), moved
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert evaluate(model, _loader(shuffle=False)).n == 256
    assert predict_logits(model, _loader(shuffle=False)).shape == (256, 2)
    assert all(dev.type == "cpu" for dev in moved), moved


def test_parameterless_model_runs_on_cpu_even_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    moved = _forbid_cuda(monkeypatch)
    model = nn.Flatten()  # no parameter, no buffer
    bias = torch.zeros(2, requires_grad=True)  # trained through the loss only
    opt = torch.optim.SGD([bias], lr=0.1)

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        assert outputs.device.type == "cpu"
        return nn.functional.cross_entropy(outputs + bias, targets)

    history = fit(model, _loader(), optimizer=opt, epochs=1, loss_fn=loss_fn)
    assert len(history.records) == 1
    assert evaluate(model, _loader(shuffle=False)).n == 256
    assert predict_logits(model, _loader(shuffle=False)).device.type == "cpu"
    assert moved
    assert all(dev.type == "cpu" for dev in moved), moved


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_make_optimizer(name: str, cls: type[torch.optim.Optimizer]) -> None:
    opt = make_optimizer(_model().parameters(), name, 0.01, weight_decay=1e-4)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.01
    assert group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == 0.9
        assert group["nesterov"] is False


@pytest.mark.parametrize(
    ("name", "lr", "match"),
    [("rmsprop", 0.1, "unknown optimizer"), ("sgd", 0.0, "lr"), ("adam", -1.0, "lr")],
)
def test_make_optimizer_errors(name: str, lr: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_optimizer(_model().parameters(), name, lr)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    with pytest.raises(ConfigError, match="not a valid torch device"):
        resolve_device("gpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_resolve_device_cuda_unavailable() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_seed_everything_rejects_bad_seed() -> None:
    with pytest.raises(ConfigError):
        seed_everything(-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda() -> None:
    seed_everything(0)
    model = _model()
    opt = make_optimizer(model.parameters(), "sgd", 0.1)
    fit(model, _loader(), optimizer=opt, epochs=1)
    assert next(model.parameters()).device.type == "cpu"  # the default does not move it
    fit(model, _loader(), optimizer=opt, epochs=1, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    # a model on CUDA stays there by default
    fit(model, _loader(), optimizer=opt, epochs=8, eval_loader=_loader(shuffle=False))
    assert next(model.parameters()).device.type == "cuda"
    assert evaluate(model, _loader(shuffle=False)).accuracy > 0.9
    assert predict_logits(model, _loader(shuffle=False)).device.type == "cpu"
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
