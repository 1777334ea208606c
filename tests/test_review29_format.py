"""Review 29, the ``.dzip`` save/load API and checkpoints: valid use, typed refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

import deepzip as dz
from deepzip.errors import CheckpointError, ConfigError, InvalidTensorError
from deepzip.format import plain_state_dict
from deepzip.prune.parametrization import get_mask
from deepzip.quantize.incremental.parametrization import attach_frozen


class _Double(nn.Module):
    """A parametrization of the user's own, with a right inverse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x / 2


class _Symmetric(nn.Module):
    """A parametrization of the user's own, without a right inverse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.triu() + x.triu(1).T


def _normed() -> nn.Sequential:
    return nn.Sequential(weight_norm(nn.Linear(4, 4)), weight_norm(nn.Conv1d(2, 3, 3)))


def _save_and_load(model: nn.Module, fresh: nn.Module, path: Path) -> None:
    if path.suffix == ".dzip":
        dz.save(model, path)
        dz.load_model(fresh, path)
    else:
        dz.save_checkpoint(model, path)
        dz.load_checkpoint(fresh, path)


@pytest.mark.parametrize("suffix", [".dzip", ".safetensors"])
def test_weight_norm_weights_are_saved_and_loaded(tmp_path: Path, suffix: str) -> None:
    # weight_norm stores original0 and original1: the weight was left out of the file
    torch.manual_seed(0)
    model = _normed()
    with torch.no_grad():
        model[0].parametrizations.weight.original0.mul_(3)
    want = {k: v.clone() for k, v in plain_state_dict(model).items()}
    assert sorted(want) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    path = tmp_path / f"m{suffix}"
    fresh = _normed()
    _save_and_load(model, fresh, path)
    got = plain_state_dict(fresh)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7)
    assert parametrize.is_parametrized(fresh[0], "weight")  # still the user's weight_norm
    plain = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(2, 3, 3))  # and into a plain model
    _save_and_load(model, plain, tmp_path / f"p{suffix}")
    for name, value in plain.state_dict().items():
        assert torch.equal(value, want[name])


@pytest.mark.parametrize("suffix", [".dzip", ".safetensors"])
def test_a_parametrization_of_the_users_own_takes_the_value(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    parametrize.register_parametrization(model[0], "weight", _Double())
    fresh = nn.Sequential(nn.Linear(4, 4))
    parametrize.register_parametrization(fresh[0], "weight", _Double())
    _save_and_load(model, fresh, tmp_path / f"m{suffix}")
    assert torch.equal(fresh[0].weight, model[0].weight)
    assert isinstance(fresh[0].parametrizations.weight[0], _Double)


@pytest.mark.parametrize("suffix", [".dzip", ".safetensors"])
@pytest.mark.parametrize("strict", [True, False])
def test_a_parametrization_without_right_inverse_is_refused_untouched(
    tmp_path: Path, suffix: str, strict: bool
) -> None:
    # was a RuntimeError after the masks were stripped (strict), or the weight silently kept
    # its old value (strict=False)
    def make() -> nn.Sequential:
        m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        parametrize.register_parametrization(m[1], "weight", _Symmetric())
        return m

    torch.manual_seed(0)
    source = make()
    path = tmp_path / f"m{suffix}"
    dz.save(source, path) if suffix == ".dzip" else dz.save_checkpoint(source, path)
    target = make()
    dz.prune_(target, dz.PruneConfig(sparsity=0.5, include=("0",)))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    load = dz.load_model if suffix == ".dzip" else dz.load_checkpoint
    with pytest.raises(CheckpointError, match=r"'1\.weight' is under the model's .*_Symmetric"):
        load(target, path, strict=strict)
    assert get_mask(target[0]) is not None  # not touched
    after = target.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_a_layer_in_an_incremental_run_is_not_checkpointed(tmp_path: Path) -> None:
    # its pruning mask and frozen weights were silently dropped from the checkpoint
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    mask = torch.rand(8, 8) > 0.5
    frozen = attach_frozen(model[0], "weight", mask)
    frozen.freeze_(mask.reshape(-1).nonzero()[:1, 0], torch.tensor([0.25]))
    path = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match=r"^0\.weight: .*incremental quantization run"):
        dz.save_checkpoint(model, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "metadata",
    ["abc", [("a", "b")], {1: "a"}, {"a": None}, {"a": 3}, {"a": "b", "c": {"d": "e"}}],
)
def test_metadata_must_map_strings_to_strings(tmp_path: Path, metadata: Any) -> None:
    # was an AttributeError (not a mapping), or str() of each key and value: {1: "a", "1": "b"}
    # lost an entry and None read back as "None"
    for name in ("m.dzip", "m.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"old")
        save = dz.save if name.endswith(".dzip") else dz.save_checkpoint
        with pytest.raises(ConfigError, match="metadata must"):
            save(nn.Linear(2, 2), path, metadata=metadata)
        assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dzip", "m.safetensors"]


def test_unicode_metadata_round_trips(tmp_path: Path) -> None:
    meta = {"é🙂": "値" * 1000, "": "", "k": "line\nbreak\x00"}
    dz.save(nn.Linear(2, 2), tmp_path / "m.dzip", metadata=meta)
    assert dz.inspect(tmp_path / "m.dzip").metadata["user"] == meta
    dz.save_checkpoint(nn.Linear(2, 2), tmp_path / "m.safetensors", metadata=meta)
    got = dz.read_checkpoint(tmp_path / "m.safetensors").metadata
    assert {k: got[k] for k in meta} == meta


def test_a_bad_layout_is_refused_without_any_shared_tensor(tmp_path: Path) -> None:
    # checked only when a shared tensor reached the writer: a plain model saved fine
    for model in (nn.Linear(2, 2), {"w": torch.ones(3)}):
        with pytest.raises(ConfigError, match="layout must be one of"):
            dz.save(model, tmp_path / "m.dzip", layout="compact")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_state_dict_key_that_is_not_a_string(tmp_path: Path) -> None:
    # was a TypeError from the tie detection
    with pytest.raises(InvalidTensorError, match=r"state dict key 1 is not a string \(int\)"):
        dz.save({1: torch.ones(2)}, tmp_path / "m.dzip")  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_an_index_bits_glob_that_is_not_a_string(tmp_path: Path) -> None:
    # was a TypeError from fnmatch
    with pytest.raises(ConfigError, match=r"index_bits keys are glob patterns .*got 3 \(int\)"):
        dz.save({"w": torch.ones(2)}, tmp_path / "m.dzip", index_bits={3: 4})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight
        self.register_buffer("table", torch.arange(6.0))
        self.register_buffer("head", self.table[:3])  # a view of another buffer


def test_a_checkpoint_of_tied_weights(tmp_path: Path) -> None:
    # safetensors refused tensors sharing a storage: a RuntimeError for any model with tied
    # weights, a module registered twice, or a buffer viewing another
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    twice = nn.Sequential(lin, nn.ReLU(), lin)
    path = tmp_path / "twice.safetensors"
    dz.save_checkpoint(twice, path)
    shared = nn.Linear(4, 4)
    fresh = nn.Sequential(shared, nn.ReLU(), shared)
    dz.load_checkpoint(fresh, path)
    assert fresh[0] is fresh[2]
    assert torch.equal(fresh[2].weight, lin.weight)
    untied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    dz.load_checkpoint(untied, path)
    assert torch.equal(untied[0].bias, lin.bias)
    assert torch.equal(untied[2].bias, lin.bias)

    model = _Tied()
    path = tmp_path / "tied.safetensors"
    dz.save_checkpoint(model, path)
    first = path.read_bytes()
    dz.save_checkpoint(model, path)
    assert path.read_bytes() == first  # still deterministic
    back = _Tied()
    dz.load_checkpoint(back, path)
    for name, value in plain_state_dict(model).items():
        assert torch.equal(plain_state_dict(back)[name], value), name
    assert back.out.weight is back.emb.weight  # the tie is kept


def test_a_mask_under_the_users_parametrization_fails_before_touching(tmp_path: Path) -> None:
    # attach_mask refused it after strip_ and load_state_dict had changed the model
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    dz.prune_(model, dz.PruneConfig(sparsity=0.5, include=("0",)))
    parametrize.register_parametrization(model[0], "weight", _Double())
    path = tmp_path / "m.safetensors"
    dz.save_checkpoint(model, path)
    target = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    dz.prune_(target, dz.PruneConfig(sparsity=0.5, include=("1",)))
    parametrize.register_parametrization(target[0], "weight", _Double())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"'0\.weight' is pruned .* parametrization _Double"):
        dz.load_checkpoint(target, path)
    assert get_mask(target[1]) is not None
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())
    plain = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))  # a model without it takes it
    dz.load_checkpoint(plain, path)
    assert torch.equal(plain[0].weight, model[0].weight)
    assert get_mask(plain[0]) is not None


def test_tied_weight_norm_file_into_separate_modules_stays_separate(tmp_path: Path) -> None:
    # the file ties the two names (one tensor object when loaded); weight_norm's right_inverse
    # returns its input, which torch stores with set_: two modules the model keeps apart
    # must not end up sharing one storage
    torch.manual_seed(0)
    lin = weight_norm(nn.Linear(4, 4))
    path = tmp_path / "m.dzip"
    report = dz.save(nn.Sequential(lin, nn.ReLU(), lin), path)
    assert report.tensors[2].alias_of == "0.weight"
    model = nn.Sequential(weight_norm(nn.Linear(4, 4)), nn.ReLU(), weight_norm(nn.Linear(4, 4)))
    dz.load_model(model, path)
    torch.testing.assert_close(model[2].weight, lin.weight)
    first = model[0].parametrizations.weight.original1
    second = model[2].parametrizations.weight.original1
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
