"""Review fixes: module targeting, post-training compression and the training CLI commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from deepzip import PruneConfig, QuantizeConfig, prune_, quantize_
from deepzip.cli import main
from deepzip.errors import CheckpointError, ConfigError
from deepzip.format import load_state_dict
from deepzip.posttrain import PostTrainConfig, compress_checkpoint
from deepzip.targets import check_patterns_match, select_targets

# ------------------------------------------------------------------------------- targets


def test_a_weight_norm_parameter_is_skipped_with_its_reason() -> None:
    # weight_norm's parametrization stores original0 and original1, no single `original`:
    # selecting targets raised AttributeError, and so did prune_ and quantize_
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(8, 8)), nn.Linear(8, 4))
    sel = select_targets(model)
    assert sel.names() == ["1.weight"]
    reason = {s.name: s.reason for s in sel.skipped}["0.weight"]
    assert "computed by _WeightNorm from original0, original1, a parametrization" in reason
    before = model[0].weight.detach().clone()
    report = prune_(model, PruneConfig(sparsity=0.5))
    assert [r.name for r in report.layers] == ["1.weight"]
    assert torch.equal(model[0].weight.detach(), before)
    assert "0.weight" in {s.name for s in report.skipped}


def test_an_uninitialized_lazy_parameter_is_a_config_error_naming_it() -> None:
    # it was torch's ValueError from inside the pruning mask
    with pytest.raises(ConfigError, match=r"0\.weight is an uninitialized parameter .*LazyLinear"):
        select_targets(nn.Sequential(nn.LazyLinear(4)))
    with pytest.raises(ConfigError, match=r"0\.weight is an uninitialized"):
        prune_(nn.Sequential(nn.LazyLinear(4)), PruneConfig(sparsity=0.5))
    with pytest.raises(ConfigError, match=r"0\.weight is an uninitialized"):
        quantize_(nn.Sequential(nn.LazyLinear(4)), QuantizeConfig(bits=2))
    # once initialized it is an ordinary Linear target
    lazy = nn.Sequential(nn.LazyLinear(4))
    lazy(torch.zeros(1, 3))
    assert select_targets(lazy).names() == ["0.weight"]


def test_globs_given_as_one_string_are_refused() -> None:
    # a string is a Sequence[str]: "0.weight" was read as the globs '0', '.', 'w', ...
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ConfigError, match=r"include must be a sequence of globs, got the string"):
        select_targets(model, include="0.weight")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"exclude must be a sequence of globs"):
        check_patterns_match(model, "0", "exclude")  # type: ignore[arg-type]


def test_an_unmatched_glob_on_a_bare_layer_names_its_parameters() -> None:
    # the message listed the submodules' names: none for a bare layer ("layers include: ")
    with pytest.raises(ConfigError, match=r"matches no layer \(parameters: weight, bias\)"):
        select_targets(nn.Linear(4, 4), include=("fc1",))


# ----------------------------------------------------------------------------- posttrain


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(32, 32, generator=g), "a.bias": torch.randn(32, generator=g)}


def test_compress_globs_given_as_one_string_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    save_file(_state(), str(src))
    with pytest.raises(ConfigError, match=r"include must be a sequence of globs"):
        compress_checkpoint(src, tmp_path / "o.dzip", include="a.weight")
    with pytest.raises(ConfigError, match=r"exclude must be a tuple of non-empty glob strings"):
        PostTrainConfig(exclude="a")  # type: ignore[arg-type]
    assert not (tmp_path / "o.dzip").exists()


def test_compress_refuses_to_replace_the_checkpoint_it_reads(tmp_path: Path) -> None:
    # the atomic rename replaced the source checkpoint with the .dzip file
    state = _state()
    st = tmp_path / "m.safetensors"
    save_file(state, str(st))
    pt = tmp_path / "m.pt"
    torch.save(state, pt)
    shards = tmp_path / "hf"
    shards.mkdir()
    shutil.copy(st, shards / "model-00001-of-00001.safetensors")
    for src, dest in (
        (st, st),
        (pt, pt),
        (shards, shards / "model-00001-of-00001.safetensors"),
        (st, tmp_path / "." / "m.safetensors"),
    ):
        before = dest.read_bytes()
        with pytest.raises(ConfigError, match="is the checkpoint being compressed"):
            compress_checkpoint(src, dest)
        assert dest.read_bytes() == before
    compress_checkpoint(st, tmp_path / "m.dzip")  # another name is fine


# ----------------------------------------------------------------------------------- CLI


def test_sensitivity_refuses_a_plot_that_would_replace_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # -o s.png made the default plot path s.png too: the plot replaced the JSON result
    ckpt = str(tmp_path / "missing.safetensors")  # refused before the checkpoint is read
    same_json = ["-o", str(tmp_path / "s.json"), "--plot", str(tmp_path / "." / "s.json")]
    for extra in (["-o", str(tmp_path / "s.png")], same_json):
        assert main(["sensitivity", ckpt, *extra, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("deepzip: error: --plot")
        assert "the same file as -o" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["prune", "quantize"])
def test_a_json_report_that_would_replace_the_checkpoint_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out.safetensors")
    args = [command, str(tmp_path / "missing.safetensors"), "-o", out, "--json", out]
    if command == "prune":
        args += ["--sparsity", "0.5"]
    assert main([*args, "--no-progress"]) == 2
    assert "--json " + out + ": the same file as -o" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_prune_refuses_pruning_flags_beside_a_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --recipe replaces the pruning flags: --sparsity 0.5 and --include were ignored silently
    recipe = tmp_path / "r.toml"
    recipe.write_text(json.dumps({}))  # never read: refused first
    base = ["prune", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o.safetensors")]
    assert main([*base, "--recipe", str(recipe), "--sparsity", "0.5", "--include", "fc1"]) == 2
    err = capsys.readouterr().err
    assert "--sparsity, --include would be ignored; set them in the recipe instead" in err
    assert main([*base, "--recipe", str(recipe), "--override", "fc1=0.2"]) == 2
    assert "--override would be ignored; set it in the recipe" in capsys.readouterr().err


def test_a_hugging_face_hub_snapshot_of_symbolic_links_is_read(tmp_path: Path) -> None:
    # the hub cache links snapshots/<rev>/<shard> to ../../blobs/<hash>: the index's shards were
    # resolved through the links and refused as "not a file in" the snapshot directory
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    state = _state()
    save_file({"a.weight": state["a.weight"]}, str(blobs / "h1"))
    save_file({"a.bias": state["a.bias"]}, str(blobs / "h2"))
    weight_map = {"a.weight": "model-1.safetensors", "a.bias": "model-2.safetensors"}
    (blobs / "h3").write_text(json.dumps({"weight_map": weight_map}))
    for link, blob in (("model-1.safetensors", "h1"), ("model-2.safetensors", "h2"),
                       ("model.safetensors.index.json", "h3")):  # fmt: skip
        (snap / link).symlink_to(Path("../../blobs") / blob)
    report = compress_checkpoint(snap, tmp_path / "o.dzip")
    assert {r.name for r in report.tensors} == {"a.weight", "a.bias"}
    # a shard named by a path is still refused, link or not
    for name in ("../blobs/h1", "sub/model-1.safetensors", ".."):
        (blobs / "h3").write_text(json.dumps({"weight_map": {"a.weight": name}}))
        with pytest.raises(CheckpointError, match="is not a file in"):
            compress_checkpoint(snap, tmp_path / "o.dzip")


def test_quantize_leaves_a_weight_under_a_foreign_parametrization_alone() -> None:
    # quantize_ replaced orthogonal's parametrization with its own SharedWeight, silently
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    nn.utils.parametrizations.orthogonal(model[0])
    before = model[0].weight.detach().clone()
    report = quantize_(model, QuantizeConfig(bits=2))
    reason = {s.name: s.reason for s in report.skipped}["0.weight"]
    assert reason.startswith("Linear.weight: computed by _Orthogonal from original, a param")
    assert [type(p).__name__ for p in model[0].parametrizations.weight] == ["_Orthogonal"]
    assert torch.equal(model[0].weight.detach(), before)
    assert model[2].weight.detach().unique().numel() <= 4


def test_tied_tensors_of_a_pickled_state_dict_are_stored_once(tmp_path: Path) -> None:
    # an embedding and an output layer sharing one tensor were compressed and written twice
    torch.manual_seed(0)
    w = torch.randn(64, 32)
    state = {"emb.weight": w, "mid.weight": torch.randn(32, 32), "head.weight": w}
    torch.save(state, tmp_path / "tied.pt")
    torch.save({k: v.clone() for k, v in state.items()}, tmp_path / "untied.pt")
    tied = compress_checkpoint(tmp_path / "tied.pt", tmp_path / "tied.dzip", sparsity=0.5, bits=4)
    untied = compress_checkpoint(
        tmp_path / "untied.pt", tmp_path / "untied.dzip", sparsity=0.5, bits=4
    )
    records = {r.name: r for r in tied.tensors}
    assert records["head.weight"].alias_of == "emb.weight"
    assert {r.name: r.alias_of for r in untied.tensors}["head.weight"] is None
    assert tied.file_bytes < untied.file_bytes
    decoded = load_state_dict(tmp_path / "tied.dzip")
    assert torch.equal(decoded["head.weight"], decoded["emb.weight"])
    assert torch.equal(
        decoded["emb.weight"], load_state_dict(tmp_path / "untied.dzip")["emb.weight"]
    )
    # names with different settings are compressed each by its own
    other = compress_checkpoint(
        tmp_path / "tied.pt", tmp_path / "o.dzip", sparsity=0.5, bits=4, layer_bits={"head": 2}
    )
    assert {r.name: r.alias_of for r in other.tensors}["head.weight"] is None
    decoded = load_state_dict(tmp_path / "o.dzip")
    assert decoded["head.weight"].unique().numel() <= 4 + 1
    assert decoded["emb.weight"].unique().numel() > 5
