from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from deepzip import (
    CheckpointError,
    ConfigError,
    InvalidTensorError,
    LayerOverride,
    PruneConfig,
    load_checkpoint,
    prune_,
    read_checkpoint,
    save,
    save_checkpoint,
)
from deepzip.config import QuantizeConfig
from deepzip.prune import get_mask, mask_dict


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 4))


def test_mask_survives_save_load_round_trip(mlp: nn.Module, tmp_path: Path) -> None:
    prune_(mlp, PruneConfig(quality=0.8, overrides=(LayerOverride("3", sparsity=0.5),)))
    masks = mask_dict(mlp)
    path = save_checkpoint(mlp, tmp_path / "p.safetensors", metadata={"note": "x"})
    fresh = _mlp()
    ckpt = load_checkpoint(fresh, path)
    assert ckpt.metadata["note"] == "x"
    loaded = mask_dict(fresh)
    assert set(loaded) == set(masks)
    for k in masks:
        assert torch.equal(loaded[k], masks[k])
    for a, b in zip(mlp.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    m_old, m_new = get_mask(mlp[0]), get_mask(fresh[0])
    assert m_old is not None
    assert m_new is not None
    assert float(m_new.reference_std) == float(m_old.reference_std)
    # the mask still holds through training after loading
    opt = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        fresh(torch.randn(8, 20)).sum().backward()
        opt.step()
    assert torch.count_nonzero(fresh[0].weight[~loaded["0.weight"]]) == 0


def test_plain_names_readable_without_deepzip(mlp: nn.Module, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    prune_(mlp, PruneConfig(sparsity=0.5))
    path = save_checkpoint(mlp, tmp_path / "p.safetensors")
    raw = load_file(str(path))
    assert set(raw) == {
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
        "__deepzip_mask__.0.weight",
        "__deepzip_mask__.3.weight",
    }
    plain = _mlp()
    plain.load_state_dict({k: v for k, v in raw.items() if not k.startswith("__")})
    assert int((plain[0].weight == 0).sum()) == 640


def test_keys_that_do_not_fit_the_model(mlp: nn.Module, tmp_path: Path) -> None:
    path = save_checkpoint(mlp, tmp_path / "p.safetensors")
    other = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    with pytest.raises(
        CheckpointError,
        match=r"missing 2 key\(s\): 2.bias, 2.weight; "
        r"unexpected 2 key\(s\): 3.bias, 3.weight",
    ):
        load_checkpoint(other, path)
    wrong = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 4))
    with pytest.raises(
        CheckpointError,
        match=r"tensor '0.weight' has shape \(64, 20\), "
        r"the model expects \(32, 20\) \(and 2 more\)",
    ):
        load_checkpoint(wrong, path)


def test_pt_state_dict_read_with_weights_only(mlp: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"state_dict": mlp.state_dict()}, path)
    fresh = _mlp()
    load_checkpoint(fresh, path)
    assert torch.equal(fresh[0].weight, mlp[0].weight)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_checkpoint(tmp_path / "evil.pt")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(bad)
    (tmp_path / "x.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint type '.ckpt'"):
        read_checkpoint(tmp_path / "x.ckpt")


def test_failed_write_leaves_no_file(
    mlp: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deepzip.format.checkpoint as mod

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(mod, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(mlp, tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_load_leaves_pruned_model_untouched(mlp: nn.Module, tmp_path: Path) -> None:
    other = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    path = save_checkpoint(other, tmp_path / "other.safetensors")
    prune_(mlp, PruneConfig(sparsity=0.5))
    masks = mask_dict(mlp)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(mlp, path)
    assert mask_dict(mlp).keys() == masks.keys()


def test_quantized_checkpoint_round_trip(mlp: nn.Module, tmp_path: Path) -> None:
    from deepzip.quantize import export_shared, quantize_

    prune_(mlp, PruneConfig(sparsity=0.7))
    quantize_(mlp, QuantizeConfig(bits=3))
    path = save_checkpoint(mlp, tmp_path / "q.safetensors")
    fresh = _mlp()
    load_checkpoint(fresh, path)
    before, after = export_shared(mlp), export_shared(fresh)
    assert before.keys() == after.keys() == {"0.weight", "3.weight"}
    for k in before:
        assert torch.equal(before[k].codebook, after[k].codebook)
        assert torch.equal(before[k].indices, after[k].indices)
        assert torch.equal(before[k].mask, after[k].mask)
    x = torch.randn(5, 20)
    mlp.eval()
    fresh.eval()
    assert torch.equal(mlp(x), fresh(x))


def test_a_model_that_is_itself_a_pruned_layer_round_trips(tmp_path: Path) -> None:
    lin = nn.Linear(16, 8)
    prune_(lin, PruneConfig(sparsity=0.5))
    path = save_checkpoint(lin, tmp_path / "lin.safetensors")
    fresh = nn.Linear(16, 8)
    load_checkpoint(fresh, path)
    assert torch.equal(fresh.weight, lin.weight)
    mask = get_mask(fresh)
    assert mask is not None
    assert int(mask.mask.sum()) == 64


def test_bad_train_encoded_metadata_is_rejected(
    tmp_path: Path, weightless_mlp: nn.Sequential
) -> None:
    path = save_checkpoint(weightless_mlp, tmp_path / "w.safetensors")
    assert read_checkpoint(path).train_encoded == {"0.weight": False}
    tensors = load_file(str(path))
    for bad in ("{", '{"2.weight": false}', '{"0.weight": 0}', "[]"):
        save_file(tensors, str(path), metadata={"deepzip.train_encoded": bad})
        with pytest.raises(CheckpointError, match=r"deepzip\.train_encoded"):
            read_checkpoint(path)


def test_the_same_model_gives_the_same_bytes(mlp: nn.Module, tmp_path: Path) -> None:
    # safetensors writes its metadata in hash order, which changed from one call to the next
    import json
    import struct

    from safetensors import safe_open

    from deepzip.quantize import quantize_

    prune_(mlp, PruneConfig(sparsity=0.5))
    quantize_(mlp, QuantizeConfig(bits=3))
    meta = {key: f'{i} é \n "quoted"' for i, key in enumerate("hgfedcba")}
    files = []
    for i in range(6):
        path = tmp_path / f"run{i}.safetensors"
        save_checkpoint(mlp, path, metadata=meta)
        files.append(path.read_bytes())
    assert all(f == files[0] for f in files)
    size = struct.unpack("<Q", files[0][:8])[0]
    assert size % 8 == 0
    header = json.loads(files[0][8 : 8 + size])
    assert next(iter(header)) == "__metadata__"
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    offsets = [entry["data_offsets"][0] for name, entry in header.items() if name != "__metadata__"]
    assert offsets == sorted(offsets)
    with safe_open(str(tmp_path / "run0.safetensors"), "pt") as f:
        assert {k: v for k, v in f.metadata().items() if k in meta} == meta
    fresh = _mlp().eval()
    load_checkpoint(fresh, tmp_path / "run5.safetensors")
    x = torch.randn(4, 20)
    assert torch.equal(fresh(x), mlp.eval()(x))


@pytest.mark.parametrize("key", ["deepzip.reference_std", "deepzip.train_encoded"])
def test_deeply_nested_json_metadata_is_a_checkpoint_error(tmp_path: Path, key: str) -> None:
    path = tmp_path / "deep.safetensors"
    deep = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError
    save_file({"w": torch.zeros(2)}, str(path), metadata={key: deep})
    with pytest.raises(CheckpointError, match=rf"deep\.safetensors: bad {key} metadata"):
        read_checkpoint(path)


@pytest.mark.parametrize("strict", [True, False])
def test_a_mask_for_a_tensor_the_model_lacks_fails_before_touching_it(
    tmp_path: Path, strict: bool
) -> None:
    path = tmp_path / "extra.safetensors"
    save_file(
        {
            "fc.weight": torch.ones(2, 2),
            "fc.bias": torch.ones(2),
            "fc.extra": torch.ones(3),
            "__deepzip_mask__.fc.extra": torch.ones(3, dtype=torch.bool),
        },
        str(path),
        metadata={"deepzip.format": "checkpoint"},
    )
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(2, 2))
    prune_(model, PruneConfig(sparsity=0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    match = "unexpected 1 key" if strict else "mask for 'fc.extra', a tensor the model does not"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(model, path, strict=strict)
    after = model.state_dict()
    assert after.keys() == before.keys()  # the mask is still attached
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_strict_false_still_loads_masks_of_tensors_the_model_has(tmp_path: Path) -> None:
    layer, fresh = nn.Linear(4, 3), nn.Linear(4, 3)
    pruned = nn.Sequential(layer)
    prune_(pruned, PruneConfig(sparsity=0.5))
    path = save_checkpoint(pruned, tmp_path / "p.safetensors")
    bigger = nn.Sequential(fresh, nn.Linear(3, 2))  # 1.* is missing from the file
    load_checkpoint(bigger, path, strict=False)
    assert torch.equal(fresh.weight, layer.weight)
    assert mask_dict(bigger).keys() == {"0.weight"}


def test_save_checkpoint_fsyncs_before_the_rename(
    mlp: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(mlp, tmp_path / "c.safetensors")
    assert calls == ["fsync", "replace", "fsync"]  # the file, its name, then the directory


@pytest.mark.parametrize("name", ["model.pt", "model.ckpt", "model"])
def test_a_checkpoint_is_named_safetensors(mlp: nn.Module, tmp_path: Path, name: str) -> None:
    # safetensors bytes under .pt were then read with torch.load (and .ckpt not at all)
    with pytest.raises(ConfigError, match=r"name it model\.safetensors"):
        save_checkpoint(mlp, tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    assert read_checkpoint(save_checkpoint(mlp, tmp_path / "model.SafeTensors")).tensors


class _WithExtraState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def get_extra_state(self) -> dict[str, int]:
        return {"version": 3}

    def set_extra_state(self, state: object) -> None:
        pass


def test_extra_state_that_is_not_a_tensor_is_named(tmp_path: Path) -> None:
    # AttributeError: 'dict' object has no attribute 'detach'
    model = nn.Sequential(_WithExtraState())
    with pytest.raises(InvalidTensorError, match=r"^0\._extra_state: the state dict holds a dict"):
        save_checkpoint(model, tmp_path / "m.safetensors")
    with pytest.raises(InvalidTensorError, match=r"^0\._extra_state: "):
        save(model, tmp_path / "m.dzip")
    assert list(tmp_path.iterdir()) == []
