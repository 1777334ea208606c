"""``fit``, ``evaluate`` and ``predict_logits`` under DistributedDataParallel: two real
processes on the CPU (gloo, rendezvous through a file), compared with one process training
on the same global batches; and the ``set_epoch`` calls, which need no process group."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    Sampler,
    Subset,
    TensorDataset,
)

from deepzip.errors import ConfigError
from deepzip.train import FitState, LambdaCallback, evaluate, fit, predict_logits

WORLD = 2
EPOCHS = 3
TRAIN_N, EVAL_N = 48, 37  # 37 is odd: the eval sampler pads one sample (or drops one)
BATCH = 6  # per rank: 4 batches of 6 per epoch, a global batch of 12
SHUFFLE_SEED = 3
LR, MOMENTUM = 0.2, 0.9

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed or no gloo backend",
)


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x[:, 0] - x[:, 1] > 0).long() + (x[:, 2] > 1).long())


def _module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def _eval_loader(**sampler: Any) -> DataLoader[tuple[torch.Tensor, ...]]:
    data = _data(EVAL_N, 2)
    return DataLoader(data, batch_size=5, sampler=DistributedSampler(data, **sampler))


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """One rank: train a DDP model, evaluate and predict; results saved to ``out_dir``."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),  # a hang fails the test instead
    )
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(_module())
        train = _data(TRAIN_N, 1)
        sampler: DistributedSampler[int] = DistributedSampler(
            train, shuffle=True, seed=SHUFFLE_SEED
        )
        orders: list[list[int]] = []
        history = fit(
            model,
            DataLoader(train, batch_size=BATCH, sampler=sampler),
            optimizer=_sgd(model),
            epochs=EPOCHS,
            eval_loader=_eval_loader(shuffle=False),
            callbacks=[LambdaCallback(on_epoch_start=lambda s: orders.append(list(sampler)))],
        )
        results: dict[str, Any] = {
            "params": {k: v.detach().clone() for k, v in model.module.state_dict().items()},
            "orders": orders,
            "history": history.to_dict(),
        }
        cases: list[tuple[str, dict[str, Any]]] = [
            ("padded", {"shuffle": False}),
            ("dropped", {"shuffle": False, "drop_last": True}),
            ("whole", {"shuffle": False, "num_replicas": 1, "rank": 0}),
        ]
        for name, kwargs in cases:
            r = evaluate(model, _eval_loader(**kwargs))
            results[name] = (r.loss, r.accuracy, r.n)
        results["logits"] = predict_logits(model, _eval_loader(shuffle=False))
        try:
            evaluate(model, _eval_loader(num_replicas=3, rank=rank))
        except ConfigError as e:
            results["mismatch"] = str(e)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The two ranks' results, from one spawn of two processes for the whole module."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference() -> tuple[nn.Module, list[float]]:
    """One process, one model: each step on the union of the ranks' batches of that step
    (DDP's averaged gradient of two 6-sample means is the gradient of the 12-sample mean),
    the ranks' shards drawn by their samplers with ``set_epoch(epoch)``."""
    train = _data(TRAIN_N, 1)
    model = _module()
    opt = _sgd(model)
    losses: list[float] = []
    for epoch in range(EPOCHS):
        shards = []
        for rank in range(WORLD):
            sampler: DistributedSampler[int] = DistributedSampler(
                train, num_replicas=WORLD, rank=rank, shuffle=True, seed=SHUFFLE_SEED
            )
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        batches = []
        for start in range(0, TRAIN_N // WORLD, BATCH):
            index = [i for shard in shards for i in shard[start : start + BATCH]]
            x, y = train[index]
            batches.append((x, y))
        losses += fit(model, batches, optimizer=opt, epochs=1).train_loss
    return model, losses


@needs_gloo
def test_ranks_end_with_identical_parameters(ranks: list[dict[str, Any]]) -> None:
    first, second = (r["params"] for r in ranks)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@needs_gloo
def test_ddp_fit_equals_one_process_training_on_the_global_batches(
    ranks: list[dict[str, Any]], reference: tuple[nn.Module, list[float]]
) -> None:
    # fails when set_epoch is not called: every epoch would replay epoch 0's order
    model, losses = reference
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ranks[0]["params"][key], value, rtol=1e-5, atol=1e-6)
    for r in ranks:
        got = [e["train_loss"] for e in r["history"]["epochs"]]
        assert got == pytest.approx(losses, rel=1e-5)  # the global mean, not the rank's own


@needs_gloo
def test_each_epoch_reshuffles_and_the_ranks_shards_partition_the_data(
    ranks: list[dict[str, Any]],
) -> None:
    orders = [r["orders"] for r in ranks]
    assert [len(o) for o in orders] == [EPOCHS, EPOCHS]
    for epoch in range(EPOCHS):
        assert sorted(orders[0][epoch] + orders[1][epoch]) == list(range(TRAIN_N))
    assert len({tuple(o) for o in orders[0]}) == EPOCHS  # a new order every epoch


@needs_gloo
def test_evaluate_all_reduces_over_the_distributed_sampler(
    ranks: list[dict[str, Any]], reference: tuple[nn.Module, list[float]]
) -> None:
    model, _ = reference
    data = _data(EVAL_N, 2)
    for name, index in [
        ("padded", [*range(EVAL_N), 0]),  # the sampler repeats its first sample
        ("dropped", list(range(EVAL_N - 1))),
        ("whole", list(range(EVAL_N))),  # one replica: nothing to reduce
    ]:
        loss, accuracy, n = ranks[0][name]
        assert ranks[1][name] == ranks[0][name], name
        assert n == len(index), name
        want = evaluate(model, DataLoader(Subset(data, index), batch_size=len(index)))
        assert loss == pytest.approx(want.loss, rel=1e-5), name
        assert accuracy == want.accuracy, name


@needs_gloo
def test_fit_reports_the_global_evaluation_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["history"] == ranks[1]["history"]
    loss, accuracy, _ = ranks[0]["padded"]  # the same loader, evaluated after the last epoch
    last = ranks[0]["history"]["epochs"][-1]["metrics"]
    assert last == {"val_loss": pytest.approx(loss, rel=1e-6), "val_accuracy": accuracy}


@needs_gloo
def test_predict_logits_gives_each_rank_its_own_shard(
    ranks: list[dict[str, Any]], reference: tuple[nn.Module, list[float]]
) -> None:
    model, _ = reference
    x = _data(EVAL_N, 2).tensors[0]
    padded = [*range(EVAL_N), 0]
    for rank, r in enumerate(ranks):
        with torch.no_grad():
            want = model(x[padded[rank::WORLD]])
        torch.testing.assert_close(r["logits"], want, rtol=1e-5, atol=1e-6)


@needs_gloo
def test_a_sampler_over_another_world_size_is_a_config_error(
    ranks: list[dict[str, Any]],
) -> None:
    for r in ranks:
        assert "3 shards" in r["mismatch"]
        assert "2 ranks" in r["mismatch"]


class _Recording(Sampler[int]):
    def __init__(self, n: int) -> None:
        self.n = n
        self.epochs: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


class _RecordingBatches(BatchSampler):
    def __init__(self, sampler: Sampler[int]) -> None:
        super().__init__(sampler, batch_size=4, drop_last=False)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _fit(loader: DataLoader[tuple[torch.Tensor, ...]]) -> None:
    model = _module()
    fit(model, loader, optimizer=_sgd(model), epochs=EPOCHS, device="cpu")


def test_fit_calls_set_epoch_on_the_loaders_sampler_once_per_epoch() -> None:
    sampler = _Recording(12)  # both loader.sampler and loader.batch_sampler.sampler
    _fit(DataLoader(_data(12, 0), batch_size=4, sampler=sampler))
    assert sampler.epochs == [0, 1, 2]


def test_fit_calls_set_epoch_inside_a_batch_sampler_and_on_it() -> None:
    sampler = _Recording(12)
    batches = _RecordingBatches(sampler)
    _fit(DataLoader(_data(12, 0), batch_sampler=batches))
    assert sampler.epochs == [0, 1, 2]
    assert batches.epochs == [0, 1, 2]


def test_fit_sets_the_epoch_before_the_epoch_start_hooks() -> None:
    data = _data(12, 0)
    sampler: DistributedSampler[int] = DistributedSampler(
        data, num_replicas=2, rank=0, shuffle=True, seed=5
    )
    seen: list[int] = []

    def record(state: FitState) -> None:
        seen.append(sampler.epoch)

    model = _module()
    fit(
        model,
        DataLoader(data, batch_size=3, sampler=sampler),
        optimizer=_sgd(model),
        epochs=EPOCHS,
        callbacks=[LambdaCallback(on_epoch_start=record)],
    )
    assert seen == [0, 1, 2]


def test_a_distributed_sampler_without_a_process_group_is_evaluated_locally() -> None:
    assert not (dist.is_available() and dist.is_initialized())
    data = _data(EVAL_N, 2)
    loader = DataLoader(data, sampler=DistributedSampler(data, num_replicas=2, rank=1))
    assert evaluate(_module(), loader).n == (EVAL_N + 1) // 2
