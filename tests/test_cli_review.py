"""Review fixes of the command line: ``python -m deepzip``, outputs that would replace each
other or the input, and pruning flags that a ``--recipe`` would silently replace."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepzip import __version__
from deepzip.cli import main

_ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=_ROOT, timeout=120
    )


def test_python_dash_m_deepzip_runs_the_command_line(tmp_path: Path) -> None:
    # "No module named deepzip.__main__": only python -m deepzip.cli worked
    done = _python("-m", "deepzip", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"deepzip {__version__}"
    missing = tmp_path / "missing.dzip"
    done = _python("-m", "deepzip", "inspect", str(missing))
    assert done.returncode == 2  # the command's exit code comes through
    assert done.stderr.startswith(f"deepzip: error: {missing}")


def test_importing_deepzip_main_has_no_side_effects() -> None:
    done = _python("-c", "import deepzip.__main__")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


# ------------------------------------------------------------------ outputs kept distinct


def test_check_distinct_sees_one_file_under_two_names(tmp_path: Path) -> None:
    from deepzip.cli._common import _check_distinct
    from deepzip.errors import ConfigError

    _check_distinct("a.json", "-o", None, "--json")
    _check_distinct(str(tmp_path / "a"), "-o", str(tmp_path / "b"), "--json")
    with pytest.raises(ConfigError, match=r"--json .*: the same file as -o"):
        _check_distinct(str(tmp_path / "a"), "-o", str(tmp_path / "." / "a"), "--json")
    target = tmp_path / "t.json"
    target.write_text("{}")
    (tmp_path / "link.json").symlink_to(target)
    with pytest.raises(ConfigError, match="the same file"):
        _check_distinct(str(target), "-o", str(tmp_path / "link.json"), "--json")
    (tmp_path / "hard.json").hardlink_to(target)
    with pytest.raises(ConfigError, match="the same file"):
        _check_distinct(str(target), "-o", str(tmp_path / "hard.json"), "--json")


def _checkpoint(path: Path) -> bytes:
    save_file({"fc.weight": torch.randn(32, 32, generator=torch.Generator().manual_seed(0))},
              str(path))  # fmt: skip
    return path.read_bytes()


def test_compress_refuses_a_json_report_that_would_replace_the_dzip_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the report was written last and replaced the .dzip file
    src = tmp_path / "m.safetensors"
    _checkpoint(src)
    out = str(tmp_path / "o.dzip")
    code = main(["compress", str(src), "-o", out, "--json", str(tmp_path / "." / "o.dzip"),
                 "--no-progress"])  # fmt: skip
    assert code == 2
    assert "deepzip: error: --json " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_compress_refuses_a_json_report_that_would_replace_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the report replaced the checkpoint being compressed
    src = tmp_path / "m.safetensors"
    before = _checkpoint(src)
    code = main(["compress", str(src), "-o", str(tmp_path / "o.dzip"), "--json", str(src),
                 "--no-progress"])  # fmt: skip
    assert code == 2
    assert f"--json {src}: the same file as the input" in capsys.readouterr().err
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_compress_refuses_a_json_report_that_would_replace_a_shard_of_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    shard = model / "model.safetensors"
    before = _checkpoint(shard)
    code = main(["compress", str(model), "-o", str(tmp_path / "o.dzip"), "--json", str(shard),
                 "--no-progress"])  # fmt: skip
    assert code == 2
    assert f"--json {shard}: a file of the model directory" in capsys.readouterr().err
    assert shard.read_bytes() == before
    report = model / "report.json"  # a new file beside the shards is fine
    code = main(["compress", str(model), "-o", str(tmp_path / "o.dzip"), "--json", str(report),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    assert report.is_file()


def test_decompress_refuses_to_replace_the_file_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the .dzip file was replaced by its own decompressed safetensors
    src = tmp_path / "m.safetensors"
    _checkpoint(src)
    dzip = tmp_path / "m.dzip"
    assert main(["compress", str(src), "-o", str(dzip), "--no-progress"]) == 0
    capsys.readouterr()
    before = dzip.read_bytes()
    assert main(["decompress", str(dzip), "-o", str(dzip), "--no-progress"]) == 2
    assert f"-o {dzip}: the same file as the input" in capsys.readouterr().err
    assert dzip.read_bytes() == before


@pytest.mark.parametrize("command", ["prune", "quantize"])
def test_a_json_report_that_would_replace_the_input_checkpoint_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "m.safetensors"
    before = _checkpoint(src)
    args = [command, str(src), "-o", str(tmp_path / "o.safetensors"), "--json", str(src)]
    if command == "prune":
        args += ["--sparsity", "0.5"]
    assert main([*args, "--no-progress", "--device", "cpu"]) == 2
    assert f"--json {src}: the same file as the input" in capsys.readouterr().err
    assert src.read_bytes() == before


@pytest.mark.parametrize("flag", ["-o", "--plot"])
def test_sensitivity_refuses_outputs_that_would_replace_the_input_checkpoint(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "m.safetensors"
    before = _checkpoint(src)
    outputs = {"-o": str(tmp_path / "s.json"), "--plot": str(tmp_path / "s.png"), flag: str(src)}
    args = ["sensitivity", str(src), "-o", outputs["-o"], "--plot", outputs["--plot"]]
    assert main([*args, "--no-progress", "--device", "cpu"]) == 2
    assert f"{flag} {src}: the same file as the input" in capsys.readouterr().err
    assert src.read_bytes() == before


# ------------------------------------------------------------- flags a --recipe replaces

_REPLACED = [
    ("--scope", "global"),
    ("--scope", "layer"),  # even the default value: the recipe decides it
    ("--schedule", "oneshot"),
    ("--retrain-epochs", "0"),
    ("--final-epochs", "0"),
    ("--lr", "0.5"),
    ("--optimizer", "adam"),
    ("--weight-decay", "0.1"),
    ("--batch-size", "7"),
    ("--lr-scale", "1.0"),
]


@pytest.mark.parametrize(("flag", "value"), _REPLACED)
def test_prune_refuses_every_flag_the_recipe_replaces(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # these were ignored silently beside --recipe: their defaults were not None
    recipe = tmp_path / "r.toml"
    recipe.write_text("[prune]\nsparsity = 0.5\n")
    base = ["prune", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o.safetensors")]
    assert main([*base, "--recipe", str(recipe), flag, value, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} would be ignored; set it in the recipe instead" in err


def test_prune_without_a_recipe_keeps_the_documented_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import deepzip.cli.train_commands as train_commands
    from deepzip.cli._common import _prune_job
    from deepzip.config import PruneJob, Recipe, RetrainConfig, ScheduleConfig

    jobs: list[PruneJob] = []

    def stop(args: object, device: object) -> None:
        raise KeyboardInterrupt  # the job is built; nothing else is needed

    def record(args: argparse.Namespace) -> tuple[PruneJob, Recipe | None]:
        job, recipe = _prune_job(args)
        jobs.append(job)
        return job, recipe

    monkeypatch.setattr(train_commands, "_prune_job", record)
    monkeypatch.setattr(train_commands, "_load_model", stop)
    base = ["prune", "x.safetensors", "-o", str(tmp_path / "o.safetensors"), "--device", "cpu"]
    assert main([*base, "--sparsity", "0.5"]) == 130
    job = jobs[-1]
    assert job.prune.scope == "layer"
    assert job.schedule == ScheduleConfig(kind="steps")
    assert job.retrain == RetrainConfig(
        epochs=2, final_epochs=2, lr=0.02, lr_scale=0.1, optimizer="sgd", weight_decay=0.0,
        batch_size=128,
    )  # fmt: skip
    # --steps and --n-steps still follow the (default) schedule kind
    assert main([*base, "--sparsity", "0.5", "--steps", "0.5,1"]) == 130
    assert jobs[-1].schedule.steps == (0.5, 1.0)
    assert main([*base, "--sparsity", "0.5", "--n-steps", "3"]) == 2
    assert "--n-steps is only used with --schedule agp, got --schedule steps" in (
        capsys.readouterr().err
    )
    assert main([*base, "--sparsity", "0.5", "--schedule", "agp", "--n-steps", "3"]) == 130
    assert jobs[-1].schedule == ScheduleConfig(kind="agp", n_steps=3)


def test_prune_help_still_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "layers pruned to one target each or together (default: layer)",
        "how the target is approached (default: steps)",
        "epochs after each step (default: 2)",
        "extra epochs at the end (default: 2)",
        "(dense) learning rate (default: 0.02)",
        "optimizer (default: sgd)",
        "weight decay (default: 0.0)",
        "mini-batch size (default: 128)",
        "retrain at lr × lr-scale (default: 0.1)",
    ):
        assert text in out, text


# ------------------------------------------------------------ the user's journey (review 3)


def test_decompress_progress_bar_ends_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the bar was left at "5/6": to_safetensors reports each tensor before it is written
    from deepzip.cli import _common

    src = tmp_path / "m.safetensors"
    _checkpoint(src)
    dzip = tmp_path / "m.dzip"
    assert main(["compress", str(src), "-o", str(dzip), "--no-progress"]) == 0
    bars: list[object] = []
    real = _common.Progress

    def spy(*args: object, **kwargs: object) -> object:
        bars.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return bars[-1]

    monkeypatch.setattr(_common, "Progress", spy)
    assert main(["decompress", str(dzip), "-o", str(tmp_path / "b.safetensors")]) == 0
    (task,) = bars[-1].tasks  # type: ignore[attr-defined]
    assert task.total == 1
    assert task.completed == task.total
    assert "1/1" in capsys.readouterr().err


def test_quantize_refuses_conv_or_fc_bits_beside_bits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --bits 3 --fc-bits 6 quantized every layer to 3 bits: --fc-bits was ignored silently
    out = tmp_path / "o.safetensors"
    base = ["quantize", str(tmp_path / "missing.safetensors"), "-o", str(out)]
    for flag in ("--conv-bits", "--fc-bits"):
        assert main([*base, "--bits", "3", flag, "6", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"--bits 3 sets every layer: {flag} 6 would be ignored" in err
    assert not out.exists()


def test_quantize_without_bits_keeps_the_paper_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import deepzip.cli.train_commands as train_commands
    from deepzip.config import QuantizeConfig

    seen: list[QuantizeConfig] = []

    def stop(model: object, data: object, config: QuantizeConfig, *a: object, **k: object) -> None:
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_commands, "_load_model", lambda args, device: (None, "m"))
    monkeypatch.setattr(train_commands, "_data", lambda args: None)
    monkeypatch.setattr(train_commands, "quantize_with_finetuning", stop)
    base = ["quantize", "x.safetensors", "-o", str(tmp_path / "o.safetensors"), "--no-progress"]
    assert main(base) == 130
    assert (seen[-1].bits, seen[-1].conv_bits, seen[-1].fc_bits) == (None, 8, 5)
    assert main([*base, "--fc-bits", "3"]) == 130
    assert (seen[-1].bits, seen[-1].conv_bits, seen[-1].fc_bits) == (None, 8, 3)
    assert main([*base, "--bits", "4"]) == 130
    assert seen[-1].bits == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--bits", "3", "--levels", "10"],
            "--levels 10 sets the levels: --bits 3 would be ignored",
        ),
        (
            ["--bits", "3", "--step", "0.01"],
            "--step 0.01 sets the levels: --bits 3 would be ignored",
        ),
        (["--no-quantize", "--levels", "10"], "--no-quantize keeps the values in float: --levels"),
        (["--no-quantize", "--step", "0.01"], "--no-quantize keeps the values in float: --step"),
        (
            ["--no-quantize", "--quantizer", "ecsq"],
            "--no-quantize keeps the values in float: --quantizer",
        ),
        (["--no-quantize", "--lambda", "0.1"], "--no-quantize keeps the values in float: --lambda"),
        (["--no-quantize", "--layout", "dense"], "keeps the values in float: --layout dense"),
        (
            ["--layout", "dense", "--index-bits", "4"],
            "--layout dense stores no relative index: --index-bits 4 would be ignored",
        ),
    ],
)
def test_compress_refuses_quantization_flags_it_would_ignore(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --bits beside --levels/--step, and --quantizer/--lambda beside --no-quantize, were ignored
    src = tmp_path / "m.safetensors"
    _checkpoint(src)
    out = tmp_path / "o.dzip"
    assert main(["compress", str(src), "-o", str(out), *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepzip: error: ")
    assert err.count("\n") == 1
    assert message in err
    assert not out.exists()


def test_compress_default_quantizer_still_applies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepzip.format import DzipReader
    from deepzip.posttrain import DEFAULT_QUANTIZER

    src = tmp_path / "m.safetensors"
    _checkpoint(src)
    out = tmp_path / "o.dzip"
    assert main(["compress", str(src), "-o", str(out), "--levels", "10", "--no-progress"]) == 0
    with DzipReader(out) as reader:
        recipe = reader.metadata["recipe"]
    assert recipe["quantizer"] == DEFAULT_QUANTIZER
    assert recipe["levels"] == 10


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "lenet-300-100", "--epochs", "0", "-o", "OUT"],
        ["prune", "CKPT", "-o", "OUT", "--sparsity", "0.5"],
        ["quantize", "CKPT", "-o", "OUT"],
        ["decompress", "CKPT", "-o", "OUT"],
    ],
)
@pytest.mark.parametrize("name", ["model.pt", "model.ckpt", "model"])
def test_checkpoint_outputs_must_be_named_safetensors(
    argv: list[str], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `deepzip train -o model.pt` wrote safetensors bytes under .pt, which deepzip prune then
    # read with torch.load and failed on; "model.ckpt" could not be read back at all
    out = tmp_path / name
    names = {"OUT": str(out), "CKPT": str(tmp_path / "missing")}
    assert main([names.get(a, a) for a in argv] + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"deepzip: error: -o {out}: a checkpoint is written in safetensors format" in err
    assert "model.safetensors" in err
    assert not out.exists()


def test_run_names_the_builtin_recipes_for_an_unknown_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # "recipe file not found: lenet5" did not say that built-in names exist, or which
    monkeypatch.chdir(tmp_path)
    assert main(["run", "lenet5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepzip: error: lenet5: ")
    assert err.count("\n") == 1
    assert "lenet-300-100-full" in err
    assert "lenet-5," in err
    assert main(["run", "missing.toml", "--no-progress"]) == 2
    assert "missing.toml" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_failing_command_prints_its_error_line_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # on a non-terminal stderr the progress display's end left a blank line above the error
    src = tmp_path / "m.safetensors"
    _checkpoint(src)
    argv = ["compress", str(src), "-o", str(tmp_path / "o.dzip"), "--include", "nothing*"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepzip: error: include pattern 'nothing*'"), repr(err)
    assert err.count("\n") == 1


def test_bench_says_why_a_file_has_no_layer_to_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a pruned-only file printed an empty table and nothing else about its layers
    from deepzip.format import save_checkpoint
    from deepzip.zoo import create_model

    src = save_checkpoint(create_model("lenet-300-100"), tmp_path / "m.safetensors")
    dzip = tmp_path / "m.dzip"
    argv = ["compress", str(src), "-o", str(dzip), "--no-quantize", "--sparsity", "0.5"]
    assert main([*argv, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["bench", str(dzip), "--model", "lenet-300-100", "--repeats", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{dzip}: no quantized (weight-shared) layer, so no layer has a runtime form" in out
    assert "┏" not in out  # no empty table
    assert "whole model: dense" in out


def test_a_file_compressed_from_a_deepzip_checkpoint_names_its_model_for_bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # deepzip train → deepzip compress → deepzip bench failed: "cannot tell the model
    # architecture; pass --model", though the checkpoint records it
    from deepzip.format import DzipReader, save_checkpoint
    from deepzip.zoo import create_model

    src = save_checkpoint(
        create_model("lenet-300-100"), tmp_path / "m.safetensors",
        metadata={"deepzip.model": "lenet-300-100"},
    )  # fmt: skip
    dzip = tmp_path / "m.dzip"
    assert main(["compress", str(src), "-o", str(dzip), "--no-progress"]) == 0
    with DzipReader(dzip) as reader:
        assert reader.metadata["user"] == {"deepzip.model": "lenet-300-100"}
    capsys.readouterr()
    assert main(["bench", str(dzip), "--repeats", "1", "--json"]) == 0
    assert '"model": "lenet-300-100"' in capsys.readouterr().out
    # a checkpoint from elsewhere records nothing
    other = tmp_path / "o.safetensors"
    _checkpoint(other)
    assert main(["compress", str(other), "-o", str(tmp_path / "o.dzip"), "--no-progress"]) == 0
    with DzipReader(tmp_path / "o.dzip") as reader:
        assert reader.metadata["user"] == {}


def test_prune_recipe_takes_a_builtin_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # only a path worked, and an installed deepzip has no src/deepzip/recipes/ to point at
    import deepzip.cli.train_commands as train_commands
    from deepzip.cli._common import _prune_job
    from deepzip.config import PruneJob, builtin_recipe

    jobs: list[PruneJob] = []

    def record(args: argparse.Namespace) -> PruneJob:
        jobs.append(_prune_job(args)[0])
        raise KeyboardInterrupt  # the job is built; nothing else is needed

    monkeypatch.setattr(train_commands, "_prune_job", record)
    monkeypatch.chdir(tmp_path)
    base = ["prune", "x.safetensors", "-o", "o.safetensors", "--device", "cpu"]
    assert main([*base, "--recipe", "lenet-5"]) == 130
    assert jobs[-1] == builtin_recipe("lenet-5")
    assert main([*base, "--recipe", "lenet5"]) == 2
    err = capsys.readouterr().err
    assert "--recipe lenet5: no such recipe file, nor a built-in recipe (" in err
    assert "lenet-300-100-full" in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--no-quantize", "--layout", "dense", "--layer-bits", "fc=3"],  # fc is quantized
        ["--no-quantize", "--quantizer", "kmeans", "--layer-bits", "fc=3"],
        ["--no-quantize", "--index-bits", "4", "--sparsity", "0.5"],  # the sparse floats' gaps
        ["--layout", "sparse", "--index-bits", "4", "--sparsity", "0.5"],
        ["--layout", "dense", "--index-bits", "auto"],
        ["--levels", "10"],
        ["--step", "0.1"],
    ],
)
def test_compress_accepts_the_quantization_flags_it_uses(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "m.safetensors"
    _checkpoint(src)
    out = tmp_path / "o.dzip"
    assert main(["compress", str(src), "-o", str(out), *extra, "--no-progress"]) == 0
    assert out.is_file()
