"""Second look at review 29's changes to the pipeline, config, CLI, pruning and post-training
code: a run directory of an earlier deepzip whose recipe only hashes differently, emoji codes
in the command's output, and ``layer_bits`` that are not ``(glob, bits)`` pairs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepzip.errors import ConfigError


def _checkpoint(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    save_file({"fc1.weight": torch.randn(64, 64, generator=g)}, str(path))
    return path


# ------------------------------------------------------------------ run state of an earlier deepzip


def test_an_equal_recipe_hashed_by_an_earlier_deepzip_is_not_called_a_different_recipe(
    tmp_path: Path,
) -> None:
    """recipe_hash now writes whole floats as integers, so a state.json of the previous
    version holds another hash for the same recipe: the refusal must say the deepzip
    differs, not give an empty 'different recipe' reason ("...: recipe . Use another...")."""
    from deepzip.config import Recipe
    from deepzip.pipeline import RecipeChangedError, run_recipe
    from deepzip.pipeline.state import _canonical_json
    from pipeline_toy import toy_data, toy_model

    recipe = Recipe.from_dict({"stages": [{"type": "quantize", "bits": 3}, {"type": "encode"}]})
    run_recipe(toy_model(), recipe, tmp_path, data=toy_data(), device="cpu")
    state_path = tmp_path / "state.json"
    state = json.loads(state_path.read_text("utf-8"))
    old_hash = hashlib.sha256(_canonical_json(recipe.to_dict()).encode("utf-8")).hexdigest()
    assert old_hash != state["identity"]["recipe_sha256"]  # the recipe has whole floats
    state["identity"]["recipe_sha256"] = old_hash  # as the earlier deepzip wrote it
    state["identity"]["deepzip"]["code_sha256"] = "0" * 64
    state_path.write_text(json.dumps(state), "utf-8")
    with pytest.raises(RecipeChangedError) as info:
        run_recipe(toy_model(), recipe, tmp_path, data=toy_data(), device="cpu")
    message = str(info.value)
    assert "different recipe" not in message, message
    assert "made by deepzip" in message
    assert "code 000000000000" in message


def test_a_changed_recipe_is_still_told(tmp_path: Path) -> None:
    from deepzip.config import Recipe
    from deepzip.pipeline import RecipeChangedError, run_recipe
    from pipeline_toy import toy_data, toy_model

    recipe = Recipe.from_dict({"stages": [{"type": "quantize", "bits": 3}, {"type": "encode"}]})
    run_recipe(toy_model(), recipe, tmp_path, data=toy_data(), device="cpu")
    other = Recipe.from_dict({"stages": [{"type": "quantize", "bits": 2}, {"type": "encode"}]})
    with pytest.raises(RecipeChangedError, match=r"different recipe.*stage 1 \(quantize\)"):
        run_recipe(toy_model(), other, tmp_path, data=toy_data(), device="cpu")


# ------------------------------------------------------------------ emoji codes in CLI output


def test_error_line_keeps_a_device_string_as_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich turned ':-1:' of '--device cuda:-1: ...' into a thumbs-down emoji."""
    from deepzip.cli import main

    out = str(tmp_path / "x.safetensors")
    assert main(["train", "lenet-300-100", "-o", out, "--device", "cuda:-1"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda:-1:" in err, err
    assert "\N{THUMBS DOWN SIGN}" not in err


def test_error_line_keeps_a_file_name_as_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepzip.cli import main

    missing = tmp_path / "a:thumbs_up:b.dzip"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err, err
    assert "\N{THUMBS UP SIGN}" not in err


def test_output_line_keeps_a_file_name_as_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepzip.cli import main

    src = _checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "m:smile:.dzip"
    assert main(["compress", str(src), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in " ".join(printed.split()), printed
    assert "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in printed


# ------------------------------------------------------------------ post-training layer_bits


@pytest.mark.parametrize(
    "layer_bits",
    [{"fc1": 4}, (("fc1", 4, 5),), [("fc1", 4)], ("fc1",)],
    ids=["dict", "triple", "list", "bare"],
)
def test_post_train_config_layer_bits_must_be_pairs(layer_bits: object) -> None:
    """A {glob: bits} dict (as the attribute's docstring said) iterated as its keys, each
    'fc1' split into 'f' and 'c' (ValueError, or bits 'c' blamed on glob 'f')."""
    from deepzip.posttrain import PostTrainConfig

    with pytest.raises(ConfigError, match=r"layer_bits must be a tuple of \(glob, bits\) pairs"):
        PostTrainConfig(layer_bits=layer_bits)  # type: ignore[arg-type]


def test_post_train_config_layer_bits_none_is_refused() -> None:
    """bits None passed QuantizeConfig (per-layer defaults) and was then ignored: the tensor
    got the default levels, silently."""
    from deepzip.posttrain import PostTrainConfig

    with pytest.raises(ConfigError, match=r"layer_bits\['fc1'\]: bits must be an integer"):
        PostTrainConfig(layer_bits=(("fc1", None),))  # type: ignore[arg-type]
    assert PostTrainConfig(layer_bits=(("fc1", 4),)).levels_for("fc1.weight") == 16


def test_compress_checkpoint_layer_bits_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    from deepzip.posttrain import compress_checkpoint

    src = _checkpoint(tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match=r"layer_bits must be a \{glob: bits\} mapping"):
        compress_checkpoint(src, tmp_path / "m.dzip", layer_bits=[("fc1", 4)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"layer_bits\['fc1'\]"):
        compress_checkpoint(src, tmp_path / "m.dzip", layer_bits={"fc1": None})  # type: ignore[dict-item]
    assert not (tmp_path / "m.dzip").exists()


# ------------------------------------------------------------------ prune --recipe's keys


def _zoo_checkpoint(path: Path) -> Path:
    import deepzip as dz
    from deepzip.zoo import create_model

    torch.manual_seed(0)
    dz.save_checkpoint(
        create_model("lenet-300-100"), path, metadata={"deepzip.model": "lenet-300-100"}
    )
    return path


def _prune_argv(tmp_path: Path, recipe: Path) -> list[str]:
    empty = tmp_path / "data"
    empty.mkdir(exist_ok=True)
    return ["prune", str(_zoo_checkpoint(tmp_path / "m.safetensors")),
            "-o", str(tmp_path / "p.safetensors"), "--recipe", str(recipe),
            "--data-dir", str(empty), "--device", "cpu", "--no-progress"]  # fmt: skip


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("deepzip: error: ")
    return lines[0]


@pytest.mark.parametrize("key", ["dataset", "model"])
def test_prune_recipe_with_an_empty_dataset_or_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    """`dataset = ""` was dropped silently (the job trained on Fashion-MNIST); `deepzip run`
    refuses it."""
    from deepzip.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'{key} = ""\n[prune]\nsparsity = 0.5\n')
    assert main(_prune_argv(tmp_path, recipe)) == 2
    line = _one_error_line(capsys)
    assert f"--recipe {recipe}: {key} must be a non-empty string, got ''" in line
    assert not (tmp_path / "p.safetensors").exists()


def test_prune_recipe_with_an_unknown_dataset_names_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepzip.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text('dataset = "cifar10"\n[prune]\nsparsity = 0.5\n')
    argv = _prune_argv(tmp_path, recipe)
    assert main(argv) == 2
    assert f"--recipe {recipe}: dataset 'cifar10' is not a data set" in _one_error_line(capsys)
    # --dataset replaces the recipe's: its own data set is then looked for
    assert main([*argv, "--dataset", "mnist"]) == 2
    assert _one_error_line(capsys).startswith("deepzip: error: mnist data not found")
