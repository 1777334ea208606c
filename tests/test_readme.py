"""The README's recipe snippets parse as recipes (a renamed key would break them silently)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deepzip.config import Recipe, load_toml

ROOT = Path(__file__).resolve().parent.parent
FULL = ROOT / "src" / "deepzip" / "recipes" / "lenet-300-100-full.toml"


def _toml_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def _stages(block: str, tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "block.toml"
    path.write_text(block, encoding="utf-8")
    stages: list[dict[str, Any]] = load_toml(path)["stages"]
    return stages


def test_readme_recipe_stages_parse_after_the_shipped_train_and_prune(tmp_path: Path) -> None:
    blocks = _toml_blocks()
    assert blocks, "the README has no toml block"
    base = load_toml(FULL)
    head = [s for s in base["stages"] if s["type"] in ("train", "prune")]
    for block in blocks:
        stages = _stages(block, tmp_path)
        recipe = Recipe.from_dict({**base, "stages": head + stages})
        assert [s.kind for s in recipe.stages] == ["train", "prune"] + [s["type"] for s in stages]


def test_readme_weightless_stage_keeps_the_benchmark_retraining(tmp_path: Path) -> None:
    (block,) = [b for b in _toml_blocks() if 'type = "weightless"' in b]
    recipe = {"model": "lenet-300-100", "dataset": "fashion-mnist"}
    stage = Recipe.from_dict({**recipe, "stages": _stages(block, tmp_path)}).stages[0]
    cfg = stage.config
    assert cfg.weightless.train_encoded
    assert cfg.retrain.optimizer == "adam"
    assert cfg.retrain.retrain_lr == 1e-3
    assert cfg.retrain.epochs == 20
    assert cfg.retrain.distill == 0.5
    assert cfg.quantize.bits == 2


def test_readme_command_lines_parse() -> None:
    # every `deepzip ...` line of the README's sh blocks names real commands and flags
    import shlex

    from deepzip.cli import build_parser

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("#")[0].strip().replace("[--json]", "--json")
            if command.startswith("deepzip "):
                lines.append(command)
    assert len(lines) >= 10
    parser = build_parser()
    for command in lines:
        parser.parse_args(shlex.split(command)[1:])  # SystemExit on an unknown flag
