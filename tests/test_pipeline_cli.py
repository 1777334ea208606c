"""``deepzip run`` and ``deepzip demo`` end to end on a tiny synthetic IDX data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from deepzip.cli import _common, file_commands, main, run_commands, train_commands
from deepzip.config import PruneConfig
from deepzip.datasets import write_idx
from deepzip.format import save_checkpoint
from deepzip.prune import prune_
from deepzip.zoo import create_model

RECIPE = """
name = "tiny LeNet-300-100"
model = "lenet-300-100"
dataset = "fashion-mnist"
seed = 2

[[overrides]]
pattern = "fc3"
sparsity = 0.5
bits = 6

[[stages]]
type = "train"
epochs = 2
lr = 0.05

[[stages]]
type = "prune"
sparsity = 0.9
[stages.schedule]
kind = "oneshot"
[stages.retrain]
epochs = 1
final_epochs = 0

[[stages]]
type = "quantize"
fc_bits = 4

[[stages]]
type = "finetune"
epochs = 1

[[stages]]
type = "encode"
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable 10-class toy set in the Fashion-MNIST file layout (class = bright band)."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 1000), ("t10k", 300)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 3 : 2 * c + 6, 4:24] = 250
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as they like (the default 80 columns wrap cell text)."""
    wide = Console(width=250)
    for module in (_common, train_commands, run_commands, file_commands):
        monkeypatch.setattr(module, "console", wide)


def _args(data_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--val-size", "200", "--no-progress", "--device", "cpu"]


def test_run_resume_and_changed_recipe(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, run_dir = tmp_path / "tiny.toml", tmp_path / "run"
    recipe.write_text(RECIPE)
    argv = ["run", str(recipe), "--run-dir", str(run_dir), *_args(data_dir)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = f"report → {run_dir / 'report' / 'report.html'}"
    for text in ("stages", "per-layer compression", "fc1.weight", "weight bits (P+Q+C)",
                 "decoded from the file", report, "% dense → "):  # fmt: skip
        assert text in captured.out
    assert "stage 3 (quantize) done" in captured.err
    state = json.loads((run_dir / "state.json").read_text())
    assert [s["kind"] for s in state["stages"]] == [
        "train", "prune", "quantize", "finetune", "encode",
    ]  # fmt: skip
    kept = state["stages"][1]["details"]["report"]["layers"]
    assert [round(layer["kept_fraction"], 3) for layer in kept] == [0.1, 0.1, 0.5]
    dzip = (run_dir / "model.dzip").read_bytes()
    assert state["stages"][-1]["details"]["decoded_test_acc"] > 0.5
    assert "dense test accuracy" in (run_dir / "report" / "report.html").read_text()

    # the same command again: nothing reruns, the same file
    assert main(argv) == 0
    assert "5 of 5 stage(s) already done" in capsys.readouterr().err
    assert (run_dir / "model.dzip").read_bytes() == dzip

    # a changed recipe is refused with one line naming the change, unless --restart
    recipe.write_text(RECIPE.replace("fc_bits = 4", "fc_bits = 3"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "stage 3 (quantize) changed (fc_bits: 4 → 3)" in err
    assert "--restart" in err


def test_run_from_a_pruned_start_does_not_call_it_dense(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = create_model("lenet-300-100")
    prune_(model, PruneConfig(sparsity=0.9))
    start = save_checkpoint(model, tmp_path / "pruned.safetensors")
    recipe = tmp_path / "q.toml"
    recipe.write_text(
        'model = "lenet-300-100"\ndataset = "fashion-mnist"\n'
        '[[stages]]\ntype = "quantize"\nbits = 4\n[[stages]]\ntype = "encode"\n'
    )
    argv = ["run", str(recipe), "--start", str(start), "--run-dir", str(tmp_path / "r")]
    assert main([*argv, *_args(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "% at the start → " in out
    assert "% dense → " not in out
    html = (tmp_path / "r" / "report" / "report.html").read_text()
    assert "starting test accuracy" in html
    assert "dense test accuracy" not in html


def test_run_errors_are_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(RECIPE.replace('type = "finetune"', 'type = "finetuen"'))
    assert main(["run", str(recipe), *_args(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "stage 4: unknown stage type 'finetuen'" in err
    recipe.write_text(RECIPE.replace('pattern = "fc3"', 'pattern = "conv3"'))
    code = main(["run", str(recipe), "--run-dir", str(tmp_path / "r"), *_args(data_dir)])
    assert code == 2
    assert "pattern 'conv3' matches no compressible layer" in capsys.readouterr().err
    recipe.write_text(RECIPE.replace('model = "lenet-300-100"\n', ""))
    assert main(["run", str(recipe), *_args(data_dir)]) == 2
    assert "the recipe names no model" in capsys.readouterr().err


def test_demo_quick(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--out-dir", str(out), "--dataset", "mnist", *_args(data_dir)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "lenet-300-100 on mnist: stages" in text  # --dataset is honoured
    assert "lenet-300-100: per-layer compression" in text
    assert f"report → {out / 'report' / 'report.html'}" in text
    assert (out / "model.dzip").is_file()
    kinds = [s["kind"] for s in json.loads((out / "state.json").read_text())["stages"]]
    assert kinds[-3:] == ["quantize", "finetune", "encode"]


@pytest.mark.parametrize("command", ["run", "demo"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "--restart" in capsys.readouterr().out


def test_stage_names_are_shown_as_written(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "named.toml"
    recipe.write_text(RECIPE.replace('type = "prune"', 'type = "prune"\nname = "p[/bold]"'))
    argv = ["run", str(recipe), "--run-dir", str(tmp_path / "r"), *_args(data_dir)]
    assert main(argv) == 0  # not a rich MarkupError after all the work
    assert "2. prune (p[/bold])" in capsys.readouterr().out


def test_validation_data_is_required_up_front(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, run_dir = tmp_path / "s.toml", tmp_path / "r"
    recipe.write_text(
        RECIPE.replace('[[stages]]\ntype = "prune"', '[[stages]]\ntype = "sensitivity"\n'
                       'sparsities = [0.0, 0.5]\n\n[[stages]]\ntype = "prune"')
    )  # fmt: skip
    argv = ["run", str(recipe), "--run-dir", str(run_dir), *_args(data_dir), "--val-size", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "deepzip: error: stage 2 (sensitivity) needs validation data: --val-size must be > 0, got 0"
    )
    assert not run_dir.exists()  # nothing trained, nothing written


def test_run_a_builtin_pruning_recipe_by_name(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "lenet-300-100-full" in capsys.readouterr().out  # --help lists the built-in names
    run_dir = tmp_path / "r"
    argv = ["run", "lenet-300-100", "--quick", "--run-dir", str(run_dir), *_args(data_dir)]
    assert main(argv) == 0  # the pruning recipe shipped under the model's name runs that model
    assert "lenet-300-100 on fashion-mnist: stages" in capsys.readouterr().out
    kinds = [s["kind"] for s in json.loads((run_dir / "state.json").read_text())["stages"]]
    assert kinds == ["train", "prune", "encode"]
