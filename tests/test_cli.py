"""End-to-end CLI runs on a tiny synthetic IDX data set (no network, no real data)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from deepzip import BitsOverride, ConfigError, LayerOverride
from deepzip.cli import file_commands, main, train_commands
from deepzip.cli._common import _parse_override, _progress
from deepzip.cli.train_commands import _parse_bits_override
from deepzip.datasets import write_idx


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable 10-class toy set in the Fashion-MNIST file layout (class = bright band)."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 1200), ("t10k", 300)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 3 : 2 * c + 6, 4:24] = 250
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels, gzip=True)
    return root


COMMON = ["--val-size", "200", "--no-progress", "--device", "cpu"]


def _run(data_dir: Path, *args: str) -> int:
    return main([*args, "--data-dir", str(data_dir), *COMMON])


def _train(data_dir: Path, dest: Path, epochs: int) -> None:
    assert _run(data_dir, "train", "lenet-300-100", "-o", str(dest), "--epochs", str(epochs)) == 0


def test_train_prune_sensitivity(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense = tmp_path / "dense.safetensors"
    _train(data_dir, dense, epochs=3)
    assert "test accuracy" in capsys.readouterr().out
    assert dense.is_file()

    pruned, report = tmp_path / "pruned.safetensors", tmp_path / "report.json"
    code = _run(
        data_dir, "prune", str(dense), "-o", str(pruned), "--sparsity", "0.9",
        "--override", "fc3=0.5", "--steps", "0.5,1.0", "--retrain-epochs", "1",
        "--final-epochs", "1", "--json", str(report),
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    for column in ("layer", "weights", "kept %", "fc1.weight", "test accuracy"):
        assert column in out
    data = json.loads(report.read_text())
    kept = {r["name"]: r["kept_fraction"] for r in data["report"]["layers"]}
    assert kept == pytest.approx({"fc1.weight": 0.1, "fc2.weight": 0.1, "fc3.weight": 0.5})
    assert data["test_acc_after"] > 0.8

    sens = tmp_path / "sens.json"
    code = _run(data_dir, "sensitivity", str(pruned), "-o", str(sens), "--sparsities", "0,0.5,0.95")
    assert code == 0
    result = json.loads(sens.read_text())
    assert set(result["layers"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert sens.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_prune_with_recipe_and_errors(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense, out = tmp_path / "dense.safetensors", tmp_path / "p.safetensors"
    _train(data_dir, dense, epochs=1)
    capsys.readouterr()
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[prune]\nsparsity = 0.8\nexclude = ["fc3"]\n'
        '[schedule]\nkind = "oneshot"\n[retrain]\nepochs = 0\nfinal_epochs = 0\n'
    )
    assert _run(data_dir, "prune", str(dense), "-o", str(out), "--recipe", str(recipe)) == 0
    assert "fc3.weight (excluded by pattern 'fc3')" in capsys.readouterr().out

    recipe.write_text("[prune]\nsparsity = 1.0\n")
    assert _run(data_dir, "prune", str(dense), "-o", str(out), "--recipe", str(recipe)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "prune.sparsity must be in [0, 1), got 1.0" in err

    code = _run(data_dir, "prune", str(dense), "-o", str(out), "--sparsity", "0.5",
                "--override", "conv9=0.2")  # fmt: skip
    assert code == 2
    assert "'conv9' matches no prunable layer" in capsys.readouterr().err

    code = _run(data_dir, "prune", str(dense), "-o", str(out), "--sparsity", "0.5",
                "--model", "lenet-5")  # fmt: skip
    assert code == 2
    assert "does not fit the model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (_parse_override, "fc1=x", "--override 'fc1=x': 'x' is not a number"),
        (_parse_override, "fc1", "--override expects GLOB=SPARSITY or GLOB=skip, got 'fc1'"),
        # a number out of range is the config's error, not "is not a number"
        (_parse_override, "fc1=1.5", "overrides['fc1'].sparsity must be in [0, 1), got 1.5"),
        (_parse_bits_override, "fc1=2.5", "--override 'fc1=2.5': '2.5' is not an integer"),
        (_parse_bits_override, "=3", "--override expects GLOB=BITS or GLOB=skip, got '=3'"),
        (
            _parse_bits_override,
            "fc1=9",
            "overrides['fc1'].bits must be an integer from 1 to 8, got 9",
        ),
    ],
)
def test_override_flag_errors_say_what_is_wrong(
    parse: Callable[[str], object], text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value) == message


def test_override_flags_parse() -> None:
    assert _parse_override("fc*=0.25") == LayerOverride("fc*", sparsity=0.25)
    assert _parse_override("fc3=skip") == LayerOverride("fc3", skip=True)
    assert _parse_bits_override("conv1=6") == BitsOverride("conv1", bits=6)
    assert _parse_bits_override("fc3=skip") == BitsOverride("fc3", skip=True)


def test_missing_data_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "train",
            "lenet-300-100",
            "-o",
            str(tmp_path / "x.safetensors"),
            "--data-dir",
            str(tmp_path / "nothing"),
            *COMMON,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deepzip: error:")
    assert err.count("\n") == 0
    assert "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_quantize_with_finetuning(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense, out, report = (tmp_path / n for n in ("d.safetensors", "q.safetensors", "q.json"))
    _train(data_dir, dense, epochs=2)
    code = _run(
        data_dir, "quantize", str(dense), "-o", str(out), "--override", "fc3=3",
        "--importance", "fisher", "--finetune-epochs", "1", "--json", str(report),
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "distinct values" in text
    assert "clustered" in text
    data = json.loads(report.read_text())
    bits = {layer["name"]: layer["bits"] for layer in data["report"]["layers"]}
    assert bits == {"fc1.weight": 5, "fc2.weight": 5, "fc3.weight": 3}
    assert data["acc_finetuned"] > 0.8
    from deepzip.format import read_checkpoint

    ckpt = read_checkpoint(out)
    assert {k: v.codebook.numel() for k, v in ckpt.shared.items()} == {
        "fc1.weight": 32, "fc2.weight": 32, "fc3.weight": 8,
    }  # fmt: skip
    assert _run(data_dir, "quantize", str(dense), "-o", str(out), "--bits", "9") == 2
    assert "quantize.bits must be an integer from 1 to 8, got 9" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", ["train", "prune", "quantize", "sensitivity", "demo", "download"]
)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: deepzip" in capsys.readouterr().out


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """An untrained LeNet-300-100 checkpoint (no training needed to test the checks)."""
    from deepzip.format import save_checkpoint
    from deepzip.zoo import create_model

    return save_checkpoint(create_model("lenet-300-100"), tmp_path / "in.safetensors")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "lenet-300-100", "--epochs", "0", "-o", "OUT"],
        ["prune", "CKPT", "-o", "OUT", "--sparsity", "0.5"],
        ["prune", "CKPT", "-o", "FILE", "--sparsity", "0.5", "--json", "OUT"],
        ["quantize", "CKPT", "-o", "OUT"],
        ["quantize", "CKPT", "-o", "FILE", "--json", "OUT"],
        ["sensitivity", "CKPT", "-o", "OUT"],
        ["sensitivity", "CKPT", "-o", "FILE.json", "--plot", "OUT"],
    ],
)
def test_output_paths_are_checked_before_any_work(
    argv: list[str],
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_data(args: object) -> None:
        raise AssertionError("the data was loaded before the output path was checked")

    monkeypatch.setattr(train_commands, "_data", no_data)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    for out, message in (
        (tmp_path, f"{tmp_path}: is a directory; give a file name"),
        (blocker / "x.out", f"{blocker / 'x.out'}: {blocker} is not a directory"),
    ):
        names = {"OUT": str(out), "CKPT": str(checkpoint), "FILE": str(tmp_path / "f.out"),
                 "FILE.json": str(tmp_path / "f.json")}  # fmt: skip
        assert main([names.get(a, a) for a in argv] + COMMON) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("deepzip: error: ")
        assert err.count("\n") == 0
        assert message in err
    assert not (tmp_path / "f.out").exists()


def test_sensitivity_output_that_is_a_bare_directory_name(
    checkpoint: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # "." has no name for with_suffix(".png"): the output is checked before the plot path
    monkeypatch.chdir(checkpoint.parent)
    assert main(["sensitivity", str(checkpoint), "-o", ".", *COMMON]) == 2
    assert (
        capsys.readouterr().err.strip() == "deepzip: error: -o .: is a directory; give a file name"
    )


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_sensitivity_max_drop_is_checked_before_any_work(
    value: str,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_loading(*args: object) -> None:
        raise AssertionError("the model or data was loaded before --max-drop was checked")

    monkeypatch.setattr(train_commands, "_data", no_loading)
    monkeypatch.setattr(train_commands, "_load_model", no_loading)
    out = tmp_path / "s.json"
    argv = ["sensitivity", str(checkpoint), "-o", str(out), "--max-drop", value, *COMMON]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"deepzip: error: --max-drop must be a finite number of points >= 0, got {float(value)!r}"
    )
    assert not out.exists()


def test_a_recipe_override_without_a_pattern_is_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("[prune]\nsparsity = 0.5\noverrides = [{ sparsity = 0.3 }]\n")
    argv = ["prune", str(checkpoint), "-o", str(tmp_path / "p.safetensors"),
            "--recipe", str(recipe), *COMMON]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"deepzip: error: {recipe}: prune.overrides[0]: missing required key 'pattern' "
        "(got {'sparsity': 0.3})"
    )


@pytest.mark.parametrize("seed", ["-1", str(2**31), "100000000000000000000", "x"])
def test_seed_flag_is_bounded(seed: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["prune", "in.safetensors", "-o", "x", "--sparsity", "0.5", "--seed", seed])
    assert info.value.code == 2
    assert "argument --seed:" in capsys.readouterr().err


def test_os_errors_are_one_line(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def denied(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    def rename_failed(path: object) -> None:  # os.replace(temp, dest): name the destination
        raise IsADirectoryError(21, "Is a directory", "/.x.tmp", None, "/tmp")

    for raiser, message in ((denied, "m.dzip: Permission denied"),
                            (rename_failed, "/tmp: Is a directory")):  # fmt: skip
        monkeypatch.setattr(file_commands, "inspect_dzip", raiser)
        assert main(["inspect", "m.dzip"]) == 2
        assert capsys.readouterr().err.strip() == f"deepzip: error: {message}"
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet-300-100"\n[[stages]]\ntype = "encode"\n')
    taken = tmp_path / "taken"
    taken.write_text("")
    assert _run(data_dir, "run", str(recipe), "--run-dir", str(taken)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"deepzip: error: --run-dir {taken}: is not a directory"


def test_user_text_reaches_the_terminal_as_written(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model[fp16] [/bold].safetensors"
    _train(data_dir, out, epochs=0)
    assert f"→ {out}" in capsys.readouterr().out
    assert out.is_file()


def _bar_then(description: str, exc: BaseException | None) -> None:
    with _progress(True) as progress:
        progress.add_task(description, total=10, completed=3)
        if exc is not None:
            raise exc


def test_progress_bar_is_dropped_on_error_and_kept_on_interrupt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ValueError, match="bad input"):
        _bar_then("failing", ValueError("bad input"))
    assert "failing" not in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        _bar_then("interrupted", KeyboardInterrupt())
    assert "interrupted" in capsys.readouterr().err
    _bar_then("finished", None)
    assert "finished" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--schedule", "agp", "--steps", "0.5,1.0"], "--steps is only used with --schedule steps"),
        (["--schedule", "oneshot", "--steps", "1.0"], "got --schedule oneshot"),
        (["--n-steps", "3"], "--n-steps is only used with --schedule agp, got --schedule steps"),
        (["--schedule", "oneshot", "--n-steps", "3"], "got --schedule oneshot"),
    ],
)
def test_prune_refuses_the_schedule_option_its_kind_ignores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    # checked before the (missing) model file is read
    argv = ["prune", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "p.safetensors")]
    assert main([*argv, "--sparsity", "0.5", *options, *COMMON]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_prune_schedule_options_reach_the_job() -> None:
    from deepzip.cli._common import _schedule
    from deepzip.cli.parser import build_parser

    def schedule(*options: str) -> tuple[str, tuple[float, ...], int]:
        args = build_parser().parse_args(["prune", "m", "-o", "x", *options])
        s = _schedule(args)
        return s.kind, s.steps, s.n_steps

    assert schedule() == ("steps", (0.5, 0.75, 0.875, 1.0), 5)
    assert schedule("--steps", "0.25,1") == ("steps", (0.25, 1.0), 5)
    assert schedule("--schedule", "agp", "--n-steps", "3") == ("agp", (0.5, 0.75, 0.875, 1.0), 3)
    assert schedule("--schedule", "oneshot") == ("oneshot", (0.5, 0.75, 0.875, 1.0), 5)


def test_compress_refuses_bits_with_no_quantize(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.dzip"
    argv = ["compress", str(tmp_path / "none.safetensors"), "-o", str(out), "--no-progress"]
    assert main([*argv, "--no-quantize", "--bits", "3"]) == 2
    assert "--no-quantize keeps the values in float: --bits 3 would be ignored" in (
        capsys.readouterr().err
    )
    assert not out.exists()
