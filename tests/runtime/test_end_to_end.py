"""The compressed LeNets give the same predictions through load_compressed as load_model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.format import load_model, save
from deepzip.runtime import RuntimePolicy, SparseConv, SparseLinear, load_compressed, runtime_report
from deepzip.zoo import create_model


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 10-class image set: class c lights up band c (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        x[i, 0, 2 * c + 3 : 2 * c + 6, 4:24] += 1.0
    return x, y


def _compressed(name: str, path: Path) -> None:
    """Train briefly, prune, quantize (8-bit conv, 5-bit fc), fine-tune briefly, save."""
    torch.manual_seed(0)
    model = create_model(name)
    x, y = _data(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(30):
        batch = slice(64 * (step % 8), 64 * (step % 8 + 1))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    dz.prune_(model, dz.PruneConfig(sparsity=0.9))
    dz.quantize_(model, dz.QuantizeConfig())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(6):
        batch = slice(64 * (step % 8), 64 * (step % 8 + 1))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    save(model.eval(), path, metadata={"deepzip.model": name})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One compressed file per LeNet, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("lenets")
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only contend on a shared machine
    try:
        for name in ("lenet-300-100", "lenet-5"):
            out[name] = root / f"{name}.dzip"
            _compressed(name, out[name])
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
@pytest.mark.parametrize("mode", ["sparse", "auto"])
def test_same_accuracy_and_logits_as_dense_decoding(
    name: str, mode: str, files: dict[str, Path]
) -> None:
    path = files[name]
    x, y = _data(400, seed=2)  # the test slice
    dense = load_model(create_model(name), path).eval()
    runtime = load_compressed(path, create_model(name), policy=RuntimePolicy(mode=mode)).eval()  # type: ignore[arg-type]
    with torch.inference_mode():
        expected = dense(x)
        logits = runtime(x)
        single = runtime(x[:1])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(single, expected[:1], rtol=1e-4, atol=1e-4)
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    accuracy = (logits.argmax(1) == y).float().mean().item()
    assert accuracy == (expected.argmax(1) == y).float().mean().item()
    assert accuracy > 0.5  # the models did learn the task
    report = runtime_report(runtime)
    kinds = {type(m) for m in runtime.modules()}
    if mode == "sparse":
        assert report.dense == ()
        assert SparseLinear in kinds
        assert (SparseConv in kinds) == (name == "lenet-5")
        assert report.runtime_bytes * 5 < report.dense_bytes
    else:  # every LeNet layer fits in the cache: dense is faster, and the report says so
        assert report.sparse == ()
        assert all("min_dense_bytes" in layer.reason for layer in report.layers)
