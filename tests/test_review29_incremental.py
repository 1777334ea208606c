"""Review 29 of the incremental quantizers (SLQ, MLQ, INQ): regression tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from deepzip.config import INQConfig, MLQConfig, SLQConfig
from deepzip.errors import InvalidTensorError
from deepzip.quantize.incremental import (
    cluster_losses,
    get_frozen,
    inq_,
    mlq_,
    recluster_1d,
    slq_,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread (as tests/quantize/conftest.py's ``one_thread``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


Verb = Callable[..., object]

VERBS: list[tuple[str, Verb, object]] = [
    ("slq-2bit", slq_, SLQConfig(bits=2)),
    ("slq-ternary", slq_, SLQConfig(bits="ternary")),
    ("mlq-ternary", mlq_, MLQConfig(bits="ternary", groups=1)),
    ("inq-3bit", inq_, INQConfig(bits=3)),
]


def _float64_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize(("label", "verb", "config"), VERBS, ids=[v[0] for v in VERBS])
def test_float64_weights_beyond_float32_are_refused_by_name_before_anything_changes(
    label: str, verb: Verb, config: object
) -> None:
    # finite in float64, infinite as the float32 levels: SLQ and MLQ raised an unnamed
    # "values: 1 non-finite" from inside k-means or ternary rounding, after every layer had
    # been put under a FrozenWeight (so the next run was refused as "unfinished")
    model = _float64_mlp()
    last = model[2]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        last.weight[0, 1] = 1e300
    with pytest.raises(InvalidTensorError, match=r"^2\.weight: 1 weight\(s\) beyond the float32"):
        verb(model, config, lambda m, s: None)
    assert get_frozen(model[0]) is None
    assert get_frozen(model[2]) is None


@pytest.mark.parametrize(("label", "verb", "config"), VERBS, ids=[v[0] for v in VERBS])
def test_float64_weights_retrained_beyond_float32_are_refused_by_name(
    label: str, verb: Verb, config: object
) -> None:
    model = _float64_mlp()

    def diverge(model: nn.Module, step: int) -> None:
        if step == 0:
            original = model.get_parameter("2.parametrizations.weight.original")
            with torch.no_grad():
                original.fill_(1e300)

    with pytest.raises(InvalidTensorError, match=r"^2\.weight: \d+ weight\(s\) beyond the float32"):
        verb(model, config, diverge)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reclustering_and_cluster_losses_are_deterministic_on_cuda() -> None:
    # CUDA's bincount with weights adds with atomics (a racing order) and is refused under
    # torch.use_deterministic_algorithms; the per-cluster sums are now taken on the CPU, so
    # CUDA gives the CPU's bits, and deterministic mode runs
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(200_000, generator=gen) * 0.05
    centroids = torch.linspace(-0.1, 0.1, 16)
    fixed = torch.zeros(16, dtype=torch.bool)
    fixed[[0, 5, 9]] = True
    cpu = recluster_1d(values, centroids, fixed)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        gpu = recluster_1d(values.cuda(), centroids.cuda(), fixed.cuda())
        losses = cluster_losses(values.cuda(), gpu.labels, gpu.centroids)
    finally:
        torch.use_deterministic_algorithms(before)
    assert gpu.centroids.is_cuda
    assert torch.equal(gpu.centroids.cpu(), cpu.centroids)
    assert torch.equal(gpu.fixed.cpu(), cpu.fixed)
    assert torch.equal(gpu.labels.cpu(), cpu.labels)
    assert losses.is_cuda
    assert torch.equal(losses.cpu(), cluster_losses(values, cpu.labels, cpu.centroids))
