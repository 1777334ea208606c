"""Regression tests from a review of the runtime's timing and threading: each failed before
its fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.errors import ConfigError
from deepzip.format import save
from deepzip.runtime import bench, kernels, timing

# ---------------------------------------------------------------- CUDA synchronization


def _record_timing(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Replace the clock and ``torch.cuda.synchronize`` with recorders (no GPU needed)."""
    events: list[tuple[str, object]] = []
    ticks = iter(range(10**6))

    def clock() -> float:
        events.append(("clock", None))
        return float(next(ticks))

    def synchronize(device: object = None) -> None:
        events.append(("sync", device))

    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    return events


def _candidates(events: list[tuple[str, object]], n: int) -> list[Any]:
    def make(i: int) -> Any:
        return lambda: events.append(("call", i))

    return [make(i) for i in range(n)]


def test_interleaved_medians_synchronizes_cuda_around_every_timed_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = _record_timing(monkeypatch)
    evict = lambda: events.append(("evict", None))  # noqa: E731
    cuda = torch.device("cuda:0")
    times = timing.interleaved_medians(
        _candidates(events, 2), repeats=2, warmup=1, before_each=evict, device="cuda:0"
    )
    sync = ("sync", cuda)
    expected: list[tuple[str, object]] = [("call", 0), ("call", 1), sync]  # warm-up, waited for
    for i in (0, 1, 1, 0):  # the order rotates from one repetition to the next
        expected += [("evict", None), sync, ("clock", None), ("call", i), sync, ("clock", None)]
    assert events == expected
    assert times == [[1e3, 1e3], [1e3, 1e3]]  # one tick per timed call


@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu"), "meta"])
def test_interleaved_medians_does_not_synchronize_off_cuda(
    monkeypatch: pytest.MonkeyPatch, device: torch.device | str | None
) -> None:
    events = _record_timing(monkeypatch)
    timing.interleaved_medians(_candidates(events, 2), repeats=1, warmup=0, device=device)
    tick = ("clock", None)
    assert events == [tick, ("call", 0), tick, tick, ("call", 1), tick]


def test_interleaved_medians_rejects_a_bad_device() -> None:
    with pytest.raises(ConfigError, match="nonsense"):
        timing.interleaved_medians([lambda: None], repeats=1, device="nonsense")


def test_the_benchmarks_time_on_the_device_of_the_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    dz.prune_(model, dz.PruneConfig(sparsity=0.9))
    dz.quantize_(model, dz.QuantizeConfig())
    path = tmp_path / "m.dzip"
    save(model, path)
    devices: list[object] = []
    real = timing.interleaved_medians

    def spy(*args: Any, **kwargs: Any) -> list[list[float]]:
        devices.append(kwargs.get("device", "missing"))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "interleaved_medians", spy)
    fresh = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 64)
    bench.benchmark_layers(path, fresh, x, repeats=1, warmup=0)
    bench.benchmark_model(path, fresh, x, repeats=1, warmup=0)
    assert devices == [torch.device("cpu")] * 3


def test_the_work_device_is_the_inputs_or_else_a_cuda_parameters() -> None:
    x = torch.zeros(1, 2)
    assert bench._work_device(x, nn.Linear(2, 2)) == torch.device("cpu")
    meta = nn.Linear(2, 2, device="meta")
    assert bench._work_device(torch.zeros(1, 2, device="meta"), meta) == torch.device("meta")


# ---------------------------------------------------------------- numba threading layer

_THREADS_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    import torch
    sys.path.insert(0, sys.argv[1])
    from runtime_helpers import make_shared
    from deepzip.runtime.sparse import _PARALLEL_MIN_WORK
    from deepzip.runtime.sparse_linear import SparseLinear

    torch.set_num_threads(2)
    layer = SparseLinear.from_shared(make_shared((512, 1024), 0.6), None, backend="numba")
    assert layer.cols.numel() >= _PARALLEL_MIN_WORK  # the parallel kernels run
    xs = [torch.randn(1024), torch.randn(3, 1024)]
    refs = [layer(x) for x in xs]
    errors = []

    def work(k):
        try:
            for _ in range(30):
                torch.testing.assert_close(layer(xs[k % 2]), refs[k % 2])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import numba
    assert numba.threading_layer() == "workqueue", numba.threading_layer()
    assert not errors, errors
    print("ok")
    """
)


def test_parallel_kernels_survive_concurrent_threads_on_the_workqueue_layer() -> None:
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_parallel_kernels_take_no_lock_on_a_thread_safe_layer() -> None:
    import numba
    import numpy as np

    k = kernels.kernels()
    y = np.empty(1, dtype=np.float32)
    one = np.ones(2, dtype=np.float32)
    k.spmv(np.array([0, 0], dtype=np.int64), np.empty(0, np.uint8), np.empty(0, np.int32), one,
           np.zeros(1, np.float32), np.empty(0, np.float32), y)  # fmt: skip
    assert y[0] == 0.0
    layer = numba.threading_layer()
    assert kernels._GUARD.layer == layer
    assert kernels._GUARD.lock_free is (layer != "workqueue")
