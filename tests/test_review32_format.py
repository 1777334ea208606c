"""Session 32: ``to_safetensors`` keeps the caller's own ``"format"`` metadata key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import deepzip as dz
from deepzip.format.api import to_safetensors


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"format": "np", "task": "demo"}, {"format": "np", "task": "demo"}),
        ({"format": "pt"}, {"format": "pt"}),
        ({"task": "demo"}, {"format": "pt", "task": "demo"}),
        ({}, {"format": "pt"}),
    ],
)
def test_to_safetensors_adds_format_pt_only_where_the_file_has_no_format_key(
    tmp_path: Path, user: dict[str, str], expected: dict[str, str]
) -> None:
    # it overwrote the caller's "format" value with "pt": their metadata was lost
    path = tmp_path / "m.dzip"
    dz.save({"w": torch.arange(6.0).reshape(2, 3)}, path, metadata=user)
    dest = to_safetensors(path, tmp_path / "m.safetensors")
    with safe_open(str(dest), "pt") as fh:
        assert fh.metadata() == expected
        assert torch.equal(fh.get_tensor("w"), torch.arange(6.0).reshape(2, 3))
