"""DzipWriter refuses what its own reader would reject, with typed errors and no output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from deepzip.errors import ConfigError, DeepZipError, InvalidTensorError
from deepzip.format import DzipReader, DzipWriter, load_state_dict, save
from deepzip.format.dzip_spec import canonical_json


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def _write(
    path: Path,
    metadata: Any = None,
    *,
    name: str = "b",
    replace_metadata: bool = False,
) -> None:
    """Write one small tensor; ``replace_metadata``: set ``metadata`` through the attribute."""
    with DzipWriter(path, metadata=None if replace_metadata else metadata) as w:
        w.add_raw(name, torch.tensor([1.0]))
        if replace_metadata:
            w.metadata = metadata


# ------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("bad", [[1, 2], "text", 3, None])
def test_metadata_replaced_by_a_non_object_is_refused(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "m.dzip"
    pattern = rf"m\.dzip: metadata must be a mapping .*, got {type(bad).__name__}"
    with pytest.raises(ConfigError, match=pattern):
        _write(path, bad, replace_metadata=True)
    assert _leftovers(tmp_path) == []


def test_metadata_may_be_replaced_by_another_mapping(tmp_path: Path) -> None:
    from types import MappingProxyType

    path = tmp_path / "m.dzip"
    _write(path, MappingProxyType({"b": 1, "a": [2]}), replace_metadata=True)
    with DzipReader(path) as r:
        assert r.metadata == {"a": [2], "b": 1}


@pytest.mark.parametrize(
    ("metadata", "key", "where"),
    [
        ({"recipe": {9: "a", 10: "b"}}, "9", r"\$\['recipe'\]"),
        ({1: "x"}, "1", r"\$"),
        ({"a": [{"ok": 1}, {"b": {None: 2}}]}, "None", r"\$\['a'\]\[1\]\['b'\]"),
        ({"a": ({"t": {2.5: 0}},)}, "2.5", r"\$\['a'\]\[0\]\['t'\]"),
        ({"a": {True: 0}}, "True", r"\$\['a'\]"),
    ],
)
def test_non_string_metadata_keys_are_refused(
    tmp_path: Path, metadata: dict[Any, Any], key: str, where: str
) -> None:
    # json.dumps writes 9 and 10 as "9" and "10" but sorts them as numbers: "9" before "10",
    # not the code-point order canonical JSON needs
    path = tmp_path / "k.dzip"
    with pytest.raises(ConfigError, match=rf"k\.dzip: .*object key {key} in {where} is not a"):
        _write(path, metadata)
    assert _leftovers(tmp_path) == []
    with pytest.raises(ConfigError, match=f"object key {key} "):
        canonical_json(metadata)


def test_canonical_json_matches_the_spec_for_string_keys() -> None:
    obj = {"recipe": {"9": "a", "10": "b", "é": [1, {"z": 0, "a": 1.5}]}, "a": None}
    want = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()
    assert canonical_json(obj) == want
    assert canonical_json(obj).startswith(b'{"a":null,"recipe":{"10":"b","9":"a"')


@pytest.mark.parametrize("make", ["cycle", "deep", "nan", "surrogate"])
def test_unserialisable_metadata_is_a_config_error(tmp_path: Path, make: str) -> None:
    metadata: dict[str, Any] = {}
    if make == "cycle":
        metadata["self"] = metadata
    elif make == "deep":
        inner: list[Any] = []
        metadata["deep"] = inner
        for _ in range(100_000):
            inner.append([])
            inner = inner[0]
    elif make == "nan":
        metadata["x"] = float("nan")
    else:
        metadata["x"] = "a\udc80"
    path = tmp_path / "u.dzip"
    with pytest.raises(ConfigError, match=r"u\.dzip: metadata is not JSON-serialisable"):
        _write(path, metadata)
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------- names


def test_a_name_with_a_lone_surrogate_is_an_invalid_tensor(tmp_path: Path) -> None:
    path = tmp_path / "s.dzip"
    with pytest.raises(InvalidTensorError, match=r"'fc\\udc80\.weight' is not valid Unicode"):
        _write(path, name="fc\udc80.weight")
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------- writer life cycle


def test_a_finished_writer_cannot_be_entered_again(tmp_path: Path) -> None:
    path = tmp_path / "once.dzip"
    w = DzipWriter(path)
    with w:
        w.add_raw("a", torch.tensor([1.0, 2.0]))
    first = path.read_bytes()

    def again() -> None:
        with w:
            w.add_raw("b", torch.tensor([3.0]))

    with pytest.raises(DeepZipError, match=r"once\.dzip: this DzipWriter was already used"):
        again()
    assert path.read_bytes() == first  # the first file is intact
    assert list(load_state_dict(path)) == ["a"]
    assert _leftovers(tmp_path) == ["once.dzip"]


def test_a_writer_cannot_be_entered_while_open_or_after_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "w.dzip"
    w = DzipWriter(path)

    def nested() -> None:
        with w:
            w.add_raw("a", torch.tensor([1.0]))
            with w:  # would write a second header into the same temporary file
                pass

    with pytest.raises(DeepZipError, match="already used"):
        nested()
    assert _leftovers(tmp_path) == []
    with pytest.raises(DeepZipError, match="already used"):
        w.__enter__()  # after the failed block
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------- bool bytes


def test_bool_tensors_are_written_as_0_or_1(tmp_path: Path) -> None:
    # a uint8 tensor viewed as bool: bytes 2 and 255 read as True; the format needs 0 or 1
    m = torch.tensor([0, 2, 1, 255, 0, 128], dtype=torch.uint8).view(torch.bool).reshape(2, 3)
    path = tmp_path / "b.dzip"
    save({"m": m, "plain": torch.tensor([True, False])}, path)
    state = load_state_dict(path)
    assert state["m"].tolist() == [[False, True, True], [True, False, True]]
    assert state["m"].view(torch.uint8).tolist() == [[0, 1, 1], [1, 0, 1]]
    assert state["plain"].tolist() == [True, False]
    assert m.view(torch.uint8).tolist() == [[0, 2, 1], [255, 0, 128]]  # input not modified


# ------------------------------------------------------------------------------ odd strides


def test_contiguous_tensors_with_a_wide_stride_on_a_size_1_dimension(tmp_path: Path) -> None:
    """``w[:1, 0]`` is contiguous (one element) with stride 4: writing it raised RuntimeError
    (a view to bytes needs stride 1)."""
    w = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    state = {
        "col": w[:1, 0],  # (1,), stride (4,)
        "block": w[1:2, 2:3].expand(1, 1),  # (1, 1), strides (4, 1)
        "t": w.t()[:, :1][:1],  # (1, 1), strides (1, 4)
        "ints": torch.arange(8).reshape(2, 4)[:1, 3],
        "bools": torch.tensor([[True, False], [False, True]])[:1, 1],
    }
    assert all(t.is_contiguous() and t.numel() == 1 for t in state.values())
    path = tmp_path / "s.dzip"
    save(state, path)
    back = load_state_dict(path)
    for name, value in state.items():
        assert torch.equal(back[name], value), name
    with DzipWriter(tmp_path / "f.dzip") as writer:
        writer.add_sparse_float("col", w[:1, 0], torch.tensor([True]))
    assert load_state_dict(tmp_path / "f.dzip")["col"].tolist() == [0.0]
