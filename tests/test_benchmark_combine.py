"""benchmarks/incremental.py --combine: per-model runs become one results file."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmark_module import load_benchmark

bench = load_benchmark("incremental", "bench_incremental_combine")


def _model(acc: float) -> dict[str, Any]:
    accs = {"slq_5": acc, "kmeans_3": 0.8, "slq_3": 0.81, "mlq_3": 0.79}
    return {
        "dense_acc": 0.9,
        "acc": accs,
        "bytes": dict.fromkeys(accs, 100),
        "runs": {key: [{"seed": 0, "lr": 1e-4}] for key in accs},
        "dense_bytes": 400,
        "float32_bytes": 400,
    }


def _part(name: str, acc: float, seconds: float) -> dict[str, Any]:
    settings = {
        "benchmark": "incremental",
        "dataset": "fashion-mnist",
        "quick": False,
        "budget": {"batches": 1280},
        "seeds": 3,
        "schedules": {"slq": {"steps": [0.5, 1.0]}},
        "torch": "2.13.0",
        "threads": 2,
        "machine": "x86_64",
    }
    return {
        **settings,
        "command": f"python benchmarks/incremental.py --models {name}",
        "model_args": {name: {"width": 8}},
        "seconds": seconds,
        "targets": {},
        "models": {name: _model(acc)},
    }


def test_combine_merges_models_and_recomputes_the_targets() -> None:
    a, b = _part("lenet-5", 0.8995, 10.0), _part("tiny-resnet", 0.85, 5.0)
    out = bench.combine([a, b])
    assert list(out["models"]) == ["lenet-5", "tiny-resnet"]
    assert out["models"]["lenet-5"] == a["models"]["lenet-5"]
    assert out["model_args"] == {"lenet-5": {"width": 8}, "tiny-resnet": {"width": 8}}
    assert out["seconds"] == 15.0
    assert out["command"] == a["command"] + " + " + b["command"]
    assert out["threads"] == 2
    # 0.8995 is within 0.1 point of 0.9; 0.85 is not; mlq_3 (0.79) does not beat k-means
    assert out["targets"]["lenet-5"]["slq_5_within_0.1_of_dense"] is True
    assert out["targets"]["tiny-resnet"]["slq_5_within_0.1_of_dense"] is False
    assert out["targets"]["lenet-5"]["slq_3_beats_kmeans"] is True
    assert out["targets"]["lenet-5"]["mlq_3_beats_kmeans"] is False
    assert "| tiny-resnet | SLQ | 5 | 0.0001 | 85.00% | -5.00 | 100 | 4.0× |" in bench.table(out)


@pytest.mark.parametrize("key", ["threads", "budget", "seeds", "torch", "quick"])
def test_combine_refuses_parts_run_with_other_settings(key: str) -> None:
    a, b = _part("lenet-5", 0.9, 1.0), _part("tiny-resnet", 0.9, 1.0)
    b = copy.deepcopy(b)
    b[key] = {"other": 1}
    with pytest.raises(ValueError, match=f"'{key}' differs"):
        bench.combine([a, b])


def test_combine_refuses_a_model_twice_and_a_single_part() -> None:
    a = _part("lenet-5", 0.9, 1.0)
    with pytest.raises(ValueError, match="model 'lenet-5' is in two result files"):
        bench.combine([a, copy.deepcopy(a)])
    with pytest.raises(ValueError, match="at least two"):
        bench.combine([a])


def test_the_command_line_writes_the_combined_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for name, acc in (("lenet-5", 0.9), ("tiny-resnet", 0.85)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_part(name, acc, 1.0)), encoding="utf-8")
        paths.append(str(path))
    out = tmp_path / "all.json"
    assert bench.main(["--combine", *paths, "--out", str(out)]) == 0
    assert list(json.loads(out.read_text(encoding="utf-8"))["models"]) == [
        "lenet-5",
        "tiny-resnet",
    ]
    assert "results →" in capsys.readouterr().out
