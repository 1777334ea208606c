"""Session 34: a checkpoint that exists but may not be read is named with the reason. As a
user other than root, safetensors reported such a file as missing ("No such file or
directory"), and an unreadable shard index escaped as a bare PermissionError. The tests run
as root, which may read anything, so the refusal of the kernel is emulated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import deepzip as dz
from deepzip.errors import CheckpointError
from permissions import unreadable


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(8, 8, generator=g), "fc.bias": torch.zeros(8)}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_an_unreadable_checkpoint_is_named_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    src = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save(_tensors(), src)
    else:
        save_file(_tensors(), str(src))
    out = tmp_path / "out.dzip"
    unreadable(monkeypatch, src)
    with pytest.raises(CheckpointError) as info:
        dz.compress_checkpoint(src, out)
    assert str(info.value) == f"{src}: cannot read it: no permission"
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_an_unreadable_shard_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = _tensors()
    save_file({"fc.weight": tensors["fc.weight"]}, str(tmp_path / "a.safetensors"))
    save_file({"fc.bias": tensors["fc.bias"]}, str(tmp_path / "b.safetensors"))
    index = {"weight_map": {"fc.weight": "a.safetensors", "fc.bias": "b.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path.parent / f"{tmp_path.name}.dzip"
    dz.compress_checkpoint(tmp_path, out)  # readable: it compresses
    out.unlink()
    unreadable(monkeypatch, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError) as info:
        dz.compress_checkpoint(tmp_path, out)
    assert str(info.value) == f"{tmp_path / 'b.safetensors'}: cannot read it: no permission"
    assert not out.exists()


def test_an_unreadable_shard_index_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file(_tensors(), str(tmp_path / "a.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"fc.weight": "a.safetensors"}}))
    unreadable(monkeypatch, index)
    out = tmp_path.parent / f"{tmp_path.name}.dzip"
    with pytest.raises(CheckpointError) as info:
        dz.compress_checkpoint(tmp_path, out)
    assert str(info.value) == f"{index}: cannot read it: no permission"


def test_a_shard_index_that_is_not_utf8_is_still_not_an_index(tmp_path: Path) -> None:
    save_file(_tensors(), str(tmp_path / "a.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="not a safetensors index"):
        dz.compress_checkpoint(tmp_path, tmp_path.parent / f"{tmp_path.name}.dzip")
