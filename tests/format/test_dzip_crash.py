"""A crash mid-write leaves no file at the destination, or the old file intact."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import deepzip.format.dzip_writer as dzip_writer
from deepzip.errors import ConfigError
from deepzip.format import DzipWriter, load_state_dict, save
from deepzip.quantize.shared import SharedTensor


def _state() -> dict[str, torch.Tensor | SharedTensor]:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 8, (64, 32), generator=g, dtype=torch.uint8)
    mask = torch.rand(64, 32, generator=g) > 0.5
    return {
        "fc1.weight": SharedTensor(torch.linspace(-1, 1, 8), idx * mask, mask),
        "fc1.bias": torch.randn(64, generator=g),
        "fc2.weight": SharedTensor(torch.linspace(-1, 1, 8), idx, torch.ones_like(mask)),
        "fc2.bias": torch.randn(64, generator=g),
    }


class _CrashError(RuntimeError):
    pass


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("existing", [False, True])
def test_exception_mid_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    dest = tmp_path / "model.dzip"
    old = b"the previous file"
    if existing:
        dest.write_bytes(old)
    calls = []
    real = dzip_writer.encode_symbols

    def crashing(*args: object, **kwargs: object) -> object:
        calls.append(1)
        # fc1.weight codes 3 streams (sparse and dense candidates); the 4th call encodes
        # fc2.weight, after two regions are on disk
        if len(calls) == 4:
            raise _CrashError("simulated crash")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dzip_writer, "encode_symbols", crashing)
    with pytest.raises(_CrashError):
        save(_state(), dest)
    assert len(calls) == 4
    assert dest.read_bytes() == old if existing else not dest.exists()
    assert _leftovers(tmp_path) == []


def test_failure_while_finishing(tmp_path: Path) -> None:
    """Metadata that is not JSON fails in the last step; the old file stays."""
    dest = tmp_path / "model.dzip"
    save({"a": torch.ones(3)}, dest)
    before = dest.read_bytes()
    writer = DzipWriter(dest, metadata={"bad": object()})
    with pytest.raises(ConfigError, match="not JSON-serialisable"), writer as w:
        w.add_raw("a", torch.zeros(3))
    assert dest.read_bytes() == before
    assert _leftovers(tmp_path) == []
    assert load_state_dict(dest)["a"].tolist() == [1.0, 1.0, 1.0]


def test_process_killed_mid_write(tmp_path: Path) -> None:
    """A hard kill (os._exit) half-way: the destination still holds the old, valid file."""
    dest = tmp_path / "model.dzip"
    save({"a": torch.ones(3)}, dest)
    before = dest.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, torch
        import deepzip.format.dzip_writer as w
        from deepzip.format import DzipWriter
        real = w.DzipWriter._emit
        def dying(self, *args, **kwargs):
            out = real(self, *args, **kwargs)
            if len(self.records) == 2:
                self._fh.flush()
                os._exit(9)
            return out
        w.DzipWriter._emit = dying
        with DzipWriter({str(dest)!r}) as wr:
            for i in range(4):
                wr.add_raw(f"t{{i}}", torch.full((1000,), float(i)))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    assert dest.read_bytes() == before
    assert load_state_dict(dest)["a"].tolist() == [1.0, 1.0, 1.0]
    # the killed writer's temporary file is the only trace, and it is not a .dzip name
    assert all(name.startswith(".model.dzip.") for name in _leftovers(tmp_path))
