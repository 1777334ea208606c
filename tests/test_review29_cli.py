"""Review 29 of the command line as a new user meets it: repeated ``--layer-bits`` globs,
``prune --recipe`` (a ``--json`` report over the recipe file, the recipe's data set and
model), the layers ``sensitivity`` leaves out, devices PyTorch cannot use, example inputs too
large to make, ``-v`` and a closed output pipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepzip.cli import main

_ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=_ROOT, timeout=120
    )


def _checkpoint(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    save_file({"fc1.weight": torch.randn(64, 64, generator=g),
               "fc2.weight": torch.randn(32, 64, generator=g)}, str(path))  # fmt: skip
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("deepzip: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ --layer-bits order


def test_layer_bits_glob_given_again_wins_over_one_given_between() -> None:
    from deepzip.cli.file_commands import _layer_bits

    # the last matching glob wins: 'fc*' given last must come after 'fc1*'
    assert list(_layer_bits(["fc*=4", "fc1*=2", "fc*=3"]).items()) == [("fc1*", 2), ("fc*", 3)]
    assert list(_layer_bits(["a=1", "b=2"]).items()) == [("a", 1), ("b", 2)]


def test_compress_layer_bits_last_flag_decides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import deepzip as dz

    src = _checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "m.dzip"
    flags = ["--layer-bits", "fc*=4", "--layer-bits", "fc1*=2", "--layer-bits", "fc*=3"]
    assert main(["compress", str(src), "-o", str(out), *flags, "--no-progress"]) == 0
    k = {t.name: t.k for t in dz.inspect(out).tensors}
    assert k["fc1.weight"] == 8  # 'fc*=3', given last (a dict kept 'fc*' first: 2 bits)
    assert k["fc2.weight"] == 8


# ------------------------------------------------------------------ --json over the recipe


def test_prune_refuses_a_json_report_over_the_recipe_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the recipe the command reads was replaced by the JSON report
    recipe = tmp_path / "r.toml"
    text = '[prune]\nsparsity = 0.5\n[schedule]\nkind = "oneshot"\n'
    recipe.write_text(text)
    code = main(["prune", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "p.safetensors"),
                 "--recipe", str(recipe), "--json", str(recipe), "--no-progress"])  # fmt: skip
    assert code == 2
    line = _error_line(capsys)
    assert f"--json {recipe}: the same file as --recipe {recipe}" in line
    assert recipe.read_text() == text


def test_prune_json_named_like_a_builtin_recipe_is_not_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a built-in name is no file: a report of that name replaces nothing the command reads
    monkeypatch.chdir(tmp_path)
    code = main(["prune", "m.safetensors", "-o", "p.safetensors", "--recipe", "lenet-5",
                 "--json", "lenet-5", "--no-progress"])  # fmt: skip
    assert code == 2
    assert "checkpoint not found: m.safetensors" in _error_line(capsys)


def _zoo_checkpoint(path: Path, name: str = "lenet-300-100") -> Path:
    import deepzip as dz
    from deepzip.zoo import create_model

    torch.manual_seed(0)
    dz.save_checkpoint(create_model(name), path, metadata={"deepzip.model": name})
    return path


def test_prune_takes_the_data_set_its_recipe_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a recipe's `dataset = "mnist"` was dropped: the job pruned on Fashion-MNIST, unsaid
    ckpt = _zoo_checkpoint(tmp_path / "m.safetensors")
    recipe = tmp_path / "r.toml"
    recipe.write_text('dataset = "mnist"\n[prune]\nsparsity = 0.5\n')
    empty = tmp_path / "data"
    empty.mkdir()
    argv = ["prune", str(ckpt), "-o", str(tmp_path / "p.safetensors"), "--recipe", str(recipe),
            "--data-dir", str(empty), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert _error_line(capsys).startswith("deepzip: error: mnist data not found")
    # --dataset overrides the recipe's, as for `deepzip run`
    assert main([*argv, "--dataset", "fashion-mnist"]) == 2
    assert _error_line(capsys).startswith("deepzip: error: fashion-mnist data not found")


def test_prune_refuses_a_recipe_for_another_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _zoo_checkpoint(tmp_path / "m.safetensors")
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet-5"\n[prune]\nsparsity = 0.5\n')
    code = main(["prune", str(ckpt), "-o", str(tmp_path / "p.safetensors"),
                 "--recipe", str(recipe), "--device", "cpu", "--no-progress"])  # fmt: skip
    assert code == 2
    line = _error_line(capsys)
    assert f"--recipe {recipe} is for model 'lenet-5', not the checkpoint's 'lenet-300-100'" in line
    assert not (tmp_path / "p.safetensors").exists()


def test_prune_help_says_where_the_data_set_comes_from(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no line break inside "fashion-mnist"

    def help_text(command: str) -> str:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    assert "(default: the recipe's, else the checkpoint's, else fashion-mnist)" in help_text(
        "prune"
    )
    assert "(default: the checkpoint's, else fashion-mnist)" in help_text("quantize")
    assert "(default: fashion-mnist)" in help_text("train")


# ------------------------------------------------------------------ sensitivity skips


def _idx_dir(root: Path) -> Path:
    import numpy as np

    from deepzip.datasets import write_idx

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28),
                  dtype=np.uint8))  # fmt: skip
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return root


def test_sensitivity_lists_the_layers_it_leaves_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # prune, quantize and compress print theirs; sensitivity printed a baseline and nothing
    # else when every layer was excluded
    ckpt = _zoo_checkpoint(tmp_path / "m.safetensors")
    data = _idx_dir(tmp_path)
    code = main(["sensitivity", str(ckpt), "-o", str(tmp_path / "s.json"), "--exclude", "fc*",
                 "--sparsities", "0.5", "--data-dir", str(data), "--val-size", "100",
                 "--device", "cpu", "--no-progress"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "not analysed: fc1.weight (excluded by pattern 'fc*')" in out
    assert "not analysed: fc3.bias (excluded by pattern 'fc*')" in out


# ------------------------------------------------------------------ --device


@pytest.mark.parametrize("device", ["meta", "ve"])
def test_a_device_pytorch_cannot_use_is_one_line(
    device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --device meta failed in training with "Tensor.item() cannot be called on meta tensors",
    # --device xpu / hpu / ve ... with AssertionError, ModuleNotFoundError, NotImplementedError
    code = main(["train", "lenet-300-100", "-o", str(tmp_path / "t.safetensors"),
                 "--epochs", "0", "--device", device, "--no-progress"])  # fmt: skip
    assert code == 2
    assert f"--device {device}" in _error_line(capsys)
    assert not (tmp_path / "t.safetensors").exists()


def test_cli_device_keeps_the_cpu() -> None:
    from deepzip.cli._common import _device

    assert _device("cpu") == torch.device("cpu")


# ------------------------------------------------------------------ bench example input


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--batch", str(10**20)),
        ("--input-shape", str(10**20)),
        ("--input-shape", "100000,100000,100000"),
    ],
)
def test_bench_example_input_too_large_is_one_line(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # TypeError "Overflow when unpacking long long", RuntimeError "can't allocate memory"
    code = main(["bench", str(tmp_path / "m.dzip"), "--model", "lenet-300-100", flag, value])
    assert code == 2
    line = _error_line(capsys)
    assert f"{flag} {value}" in line
    assert "cannot make an example input" in line


# ------------------------------------------------------------------ -v


def test_verbose_logs_deepzips_debug_messages_not_every_librarys() -> None:
    # -v set the root logger to DEBUG: matplotlib's font manager alone printed 268 lines; and
    # the deepzip logger stayed at DEBUG for a later main() in the same process
    code = (
        "import logging\n"
        "import deepzip.cli.parser as parser\n"
        "seen = []\n"
        "def probe(args):\n"
        "    seen.append((logging.getLogger('deepzip.x').isEnabledFor(logging.DEBUG),"
        " logging.getLogger('matplotlib').isEnabledFor(logging.DEBUG)))\n"
        "    return 0\n"
        "parser.cmd_inspect = probe\n"
        "from deepzip.cli import main\n"
        "main(['-v', 'inspect', 'x.dzip'])\n"
        "main(['inspect', 'x.dzip'])\n"
        "print(seen, logging.getLogger('deepzip.x').isEnabledFor(logging.DEBUG))\n"
    )
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[(True, False), (False, False)] False"


def test_without_verbose_debug_messages_stay_hidden() -> None:
    code = (
        "import logging\n"
        "from deepzip.cli import main\n"
        "main(['inspect', 'missing.dzip'])\n"
        "print(logging.getLogger('deepzip.x').isEnabledFor(logging.DEBUG))\n"
    )
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


# ------------------------------------------------------------------ closed pipe


def test_a_closed_output_pipe_is_no_error_line(tmp_path: Path) -> None:
    # `deepzip inspect m.dzip --json | head -1`: "deepzip: error: Broken pipe", status 2,
    # where the table form of the same command exits 1 quietly (rich's rule)
    src = _checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "m.dzip"
    assert main(["compress", str(src), "-o", str(out), "--no-progress"]) == 0
    for extra in (["--json"], []):
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepzip", "inspect", str(out), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=_ROOT,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()  # the reader goes away before the command writes
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 1, err
        assert err == ""
