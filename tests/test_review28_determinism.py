"""Review 28, deterministic output: the same input gives the same result whatever the thread
count, the hash seed, numba on or off, or the order of a mapping's keys."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepzip.coding.bloomier import build_filter
from deepzip.prune.masks import global_magnitude_masks, reference_std
from deepzip.quantize.kmeans import kmeans_1d, optimal_kmeans_1d, weighted_sse
from deepzip.quantize.scalar import ecsq_quantize, step_quantize, uniform_quantize


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _values(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(n).astype(np.float32))


def test_quantizer_sse_does_not_depend_on_the_thread_count() -> None:
    # ATen splits a large reduction (and BLAS a dot product) across its threads, so a float64
    # sum taken that way changes in its last bits with torch.set_num_threads
    x = _values(100_000)
    imp = x.abs()
    zeros = torch.zeros(x.numel(), dtype=torch.int64)
    runs: list[Callable[[], float]] = [
        lambda: kmeans_1d(x, 16).sse,
        lambda: kmeans_1d(x, 16, weights=imp, init="kmeans++").sse,
        lambda: optimal_kmeans_1d(x[:5000], 8).sse,
        lambda: uniform_quantize(x, 16).sse,
        lambda: ecsq_quantize(x, 16, 0.1, weights=imp).sse,
        lambda: step_quantize(x, 0.1).sse,
        lambda: weighted_sse(x, torch.tensor([0.0]), zeros, imp),
    ]
    results = {}
    for n in (1, 3, 4):
        with _threads(n):
            results[n] = [run().hex() for run in runs]
    assert results[1] == results[3] == results[4]


def test_reference_std_does_not_depend_on_the_thread_count() -> None:
    w = _values(200_000, seed=4).view(400, 500)
    results = {}
    for n in (1, 3, 4):
        with _threads(n):
            results[n] = reference_std(w)
    assert results[1] == results[3] == results[4]
    assert abs(results[1] - float(w.double().std())) <= 1e-12 * results[1]
    assert reference_std(torch.ones(1)) == 0.0
    assert reference_std(torch.tensor([1.0, 3.0], dtype=torch.bfloat16)) == 2**0.5


def test_global_masks_do_not_depend_on_the_mapping_order() -> None:
    # equal magnitudes in two tensors, threshold among them: the same tensors in another
    # insertion order must lose the same weights
    a = torch.tensor([1.0, 2.0, 1.0, 3.0])
    b = torch.tensor([[1.0, 5.0], [1.0, 0.5]])
    c = torch.ones(3)
    forward = global_magnitude_masks({"a": a, "b": b, "c": c}, 0.5)
    backward = global_magnitude_masks({"c": c, "b": b, "a": a}, 0.5)
    assert list(backward) == ["c", "b", "a"]  # the caller's order is kept
    for name in forward:
        assert torch.equal(forward[name], backward[name]), name
    assert sum(int((~m).sum()) for m in forward.values()) == round(0.5 * 11)


def test_global_masks_same_mapping_order_break_ties_by_position() -> None:
    masks = global_magnitude_masks({"x": torch.ones(4), "y": torch.ones(4)}, 0.25)
    assert masks["x"].tolist() == [False, False, True, True]
    assert masks["y"].tolist() == [True] * 4


def test_bloomier_filter_does_not_depend_on_the_key_order() -> None:
    rng = np.random.default_rng(3)
    keys = np.sort(rng.choice(50_000, 8_000, replace=False))
    values = rng.integers(0, 8, keys.size)
    perm = rng.permutation(keys.size)
    built = [
        build_filter(k, v, n_positions=50_000, num_values=8, cell_bits=5, seed=9).to_bytes()
        for k, v in ((keys, values), (keys[perm], values[perm]))
    ]
    assert built[0] == built[1]


_FLOW = r"""
import hashlib, sys
import numpy as np, torch
from torch import nn
import deepzip as dz
from deepzip.config import PruneConfig, QuantizeConfig

def flow(path):
    rng = np.random.default_rng(1234)
    m = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype("float32")) * 0.05)
        m[0].weight.copy_((m[0].weight * 100).round() / 100)  # many equal magnitudes
    dz.prune_(m, PruneConfig(sparsity=0.8, scope="global"))
    dz.quantize_(m, QuantizeConfig(bits=4, init="kmeans++", seed=5))
    dz.save(m, path)
    decoded = hashlib.sha256()
    for name, t in dz.load_state_dict(path).items():
        decoded.update(name.encode() + t.numpy().tobytes())
    return hashlib.sha256(open(path, "rb").read()).hexdigest() + " " + decoded.hexdigest()

if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]))
    print(flow(sys.argv[1]))
"""


def test_prune_quantize_save_bytes_are_the_same_in_another_process(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(_FLOW)
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345",
        "OMP_NUM_THREADS": "3",
        "NUMBA_DISABLE_JIT": "1",  # the coders' kernels in pure Python: the same bytes, decoded
    }
    there = [sys.executable, str(script), str(tmp_path / "b.dzip"), "4"]
    other = subprocess.run(there, capture_output=True, text=True, check=True, env=env, timeout=120)
    namespace: dict[str, object] = {"__name__": "flow"}
    exec(compile(_FLOW, str(script), "exec"), namespace)
    flow = namespace["flow"]
    assert callable(flow)
    with _threads(1):
        here = flow(str(tmp_path / "a.dzip"))
    assert other.stdout.strip() == here
    assert (tmp_path / "a.dzip").read_bytes() == (tmp_path / "b.dzip").read_bytes()


def test_quality_pruning_and_attached_masks_use_the_thread_independent_std(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prune_ (quality) and attach_mask computed torch's float64 std, whose last bits change
    # with the thread count; they must take masks.reference_std (tested above), here replaced
    # by a marker value to see that it is the one used
    import deepzip.prune.api as prune_api
    import deepzip.prune.parametrization as parametrization
    from deepzip import PruneConfig, prune_
    from deepzip.prune.parametrization import attach_mask, get_mask

    monkeypatch.setattr(prune_api, "reference_std", lambda w: 0.0123)
    monkeypatch.setattr(parametrization, "reference_std", lambda w: 0.0456)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(30, 20))
    weight = model[0].weight.detach().clone()
    prune_(model, PruneConfig(quality=0.5))
    mask = get_mask(model[0])
    assert mask is not None
    # the threshold took prune_'s std; the mask it attached records attach_mask's
    assert torch.equal(mask.mask, weight.abs() >= 0.5 * 0.0123)
    assert 0 < int((~mask.mask).sum()) < 600
    assert mask.reference_std == 0.0456
    other = nn.Linear(30, 20)
    attach_mask(other, "weight", torch.ones(20, 30, dtype=torch.bool))
    stored = get_mask(other)
    assert stored is not None
    assert stored.reference_std == 0.0456
