"""The ``.dzip`` verbs: :func:`save`, :func:`load_state_dict`, :func:`load_model`, :func:`inspect`.

:func:`save` writes a model with deepzip's pruning masks and shared weights (or a plain state
dict) into one ``.dzip`` file: quantized tensors as codebook + entropy-coded indices (with
Deep Compression's relative sparse index when pruned), pruned float tensors as sparse index +
values, everything else raw. The other verbs read it back.
"""

from __future__ import annotations

import fnmatch
import json
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip._atomic import atomic_open
from deepzip.config import CoderName, IndexBitsSpec, check_coder, check_index_bits
from deepzip.devices import resolve_device
from deepzip.errors import CheckpointError, ConfigError, InvalidTensorError
from deepzip.format.checkpoint import (
    check_keys_fit,
    check_loadable,
    check_not_meta,
    check_string_metadata,
    load_plain_,
    plain_state_dict,
)
from deepzip.format.dzip_reader import DzipReader
from deepzip.format.dzip_report import InspectReport, SaveReport
from deepzip.format.dzip_spec import (
    SAFETENSORS_DTYPE,
    dtype_itemsize,
)
from deepzip.format.dzip_writer import (
    DzipWriter,
    GapWidth,
    Layout,
    check_layout,
    tensor_bytes,
)
from deepzip.prune.parametrization import get_mask
from deepzip.quantize.api import export_shared, strip_
from deepzip.quantize.shared import SharedTensor
from deepzip.quantize.weightless import WeightlessWeight, get_weightless
from deepzip.targets import CONV_LAYER_TYPES, check_module

__all__ = [
    "CONV_GAP_WIDTH",
    "FC_GAP_WIDTH",
    "IndexBits",
    "gap_width",
    "inspect",
    "load_model",
    "load_state_dict",
    "save",
    "tie_key",
    "to_safetensors",
]

FC_GAP_WIDTH = 5
"""The paper's relative-index width for fully connected (and other non-conv) layers."""

CONV_GAP_WIDTH = 8
"""The paper's relative-index width for convolutions."""

IndexBits = IndexBitsSpec | Mapping[str, IndexBitsSpec] | None
"""Gap width of the relative sparse index: one :data:`IndexBitsSpec` for every tensor,
``{glob: spec}`` (the last matching glob wins, ``"auto"`` elsewhere), or ``None`` (``"auto"``)."""


def _owner(name: str) -> tuple[str, str]:
    return (name.rsplit(".", 1)[0], name.rsplit(".", 1)[1]) if "." in name else ("", name)


def gap_width(spec: IndexBitsSpec, is_conv: bool) -> GapWidth:
    """The writer's gap width for one tensor: ``"paper"`` resolved, the rest as given."""
    if spec == "paper":
        return CONV_GAP_WIDTH if is_conv else FC_GAP_WIDTH
    return spec


def _width_resolver(
    index_bits: IndexBits,
    names: list[str],
    is_conv: Mapping[str, bool],
    alias_of: Mapping[str, str] | None = None,
) -> dict[str, GapWidth]:
    """Gap width per tensor name (see :data:`IndexBits`).

    A tied tensor's data is stored under its first name (``alias_of`` maps every later name
    to it), so a glob matching any of its names sets the stored tensor's width: the last
    glob matching one of them wins.
    """
    if index_bits is None or isinstance(index_bits, (int, str)):
        spec = check_index_bits("index_bits", "auto" if index_bits is None else index_bits)
        return {n: gap_width(spec, is_conv.get(n, False)) for n in names}
    if not isinstance(index_bits, Mapping):
        raise ConfigError(
            "index_bits must be a number of bits, 'auto', 'paper', a {glob: bits} mapping "
            f"or None, got {index_bits!r}"
        )
    out: dict[str, GapWidth] = dict.fromkeys(names, "auto")
    for pattern, bits in index_bits.items():
        if not isinstance(pattern, str):
            raise ConfigError(
                f"index_bits keys are glob patterns (strings), got {pattern!r} "
                f"({type(pattern).__name__})"
            )
        spec = check_index_bits(f"index_bits[{pattern!r}]", bits)
        hits = [
            n
            for n in names
            if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(_owner(n)[0], pattern)
        ]
        if not hits:
            raise ConfigError(
                f"index_bits pattern {pattern!r} matches no tensor "
                f"(tensors include: {', '.join(names[:8])})"
            )
        for n in hits:
            out[n] = gap_width(spec, is_conv.get(n, False))
            target = (alias_of or {}).get(n)
            if target is not None:  # the data is stored under the first name
                out[target] = gap_width(spec, is_conv.get(target, False))
    return out


_TieKey = tuple[Any, ...]
_V = TypeVar("_V")


def tie_key(t: torch.Tensor) -> _TieKey | None:
    """What makes two tensors the very same view: storage, offset, shape, strides, dtype (and
    the negative and conjugate bits, which change the values a view reads).

    ``None`` for a tensor that cannot be told apart from another one by its storage (no
    elements, or no storage address, such as a meta tensor): it is never an alias.
    """
    if t.numel() == 0 or t.layout != torch.strided:
        return None
    ptr = t.untyped_storage().data_ptr()
    if ptr == 0:
        return None
    # a negated view (``c.conj().imag`` beside ``c.imag``) has the same bytes, other values
    view = (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.is_neg(), t.is_conj())
    return (t.device, ptr, *view)


def _tie_keys(
    model: nn.Module | None, state: Mapping[str, torch.Tensor | SharedTensor]
) -> dict[str, _TieKey]:
    """An identity key per tensor name: two names with one key hold the same tensor.

    A plain tensor's key is its storage view (:func:`tie_key`): a module registered
    twice, or a ``Parameter`` shared by two modules, gives several state-dict keys over one
    storage. A parametrized weight of ``model`` (pruned, quantized, Weightless) is computed
    afresh on each access, so its key is its parametrization (the same module registered
    under several names has one); two modules that share an ``original`` but have
    parametrizations of their own may hold different values, and are not tied. A
    ``SharedTensor`` (from a mapping) is keyed by the views of its codebook, indices and
    mask. Names without a key (see :func:`tie_key`) are left out.
    """
    keys: dict[str, _TieKey] = {}
    for name, value in state.items():
        key: _TieKey | None = None
        if isinstance(value, SharedTensor):
            parts = [tie_key(t) for t in (value.codebook, value.indices, value.mask)]
            if all(p is not None for p in parts):
                key = ("shared", *parts)
        else:
            owner_name, attr = _owner(name)
            owner = None if model is None else model.get_submodule(owner_name)
            if owner is not None and parametrize.is_parametrized(owner, attr):
                key = ("parametrized", id(owner.parametrizations[attr]))  # type: ignore[index]
            else:
                key = tie_key(value)
        if key is not None:
            keys[name] = key
    return keys


def _move_to_target(found: dict[str, _V], name: str, target: str) -> None:
    """Give ``target`` the value of its alias ``name`` in ``found`` if it has none itself."""
    if name in found and target not in found:
        found[target] = found[name]


def _json_ready(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return value


def save(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor | SharedTensor],
    path: str | os.PathLike[str],
    *,
    coder: CoderName = "auto",
    index_bits: IndexBits = None,
    layout: Layout = "auto",
    metadata: Mapping[str, str] | None = None,
    recipe: Any = None,
    report: Any = None,
) -> SaveReport:
    """Write a model or state dict to a ``.dzip`` file, atomically.

    From a model: every tensor of its plain state dict, in order (the order the model had
    before it was pruned or quantized: a pruned ``Linear``'s ``weight`` before its ``bias``,
    see :func:`~deepzip.format.checkpoint.plain_state_dict`). A weight with shared-weight
    parametrization (``deepzip.quantize_``) is stored as codebook + coded indices (with the
    relative sparse index when pruned); a layer encoded with Weightless
    (``deepzip.weightless_``) as codebook + its Bloomier filter; a weight with only a pruning
    mask as sparse index + float values; everything else (biases, buffers) raw. From a
    mapping: ``SharedTensor`` values are stored shared (float32), tensors raw.

    Tied tensors are stored once: a name whose tensor is exactly one that an earlier name
    holds (the same storage, offset, shape, strides and dtype; for a parametrized weight,
    deepzip's or the user's, the same parametrization, as when one module is registered under
    two names) is
    written as an alias of the first name (``ALIAS``, format 1.2), which costs only its
    directory entry; a partial overlap is not a tie. The report lists the alias with
    ``alias_of`` set and counts its elements once.

    Args:
        model_or_state_dict: an ``nn.Module`` or ``{name: tensor or SharedTensor}``.
        path: destination; nothing is left there if writing fails.
        coder: entropy coder of every stream: ``"auto"`` (smallest per stream), ``"huffman"``,
            ``"ans"`` or ``"raw"``.
        index_bits: gap width of the relative sparse index (see :data:`IndexBits`); by default
            each tensor's smallest (``"auto"``). ``"paper"`` is Deep Compression's 8 bits for
            convolutions and 5 for everything else (from a mapping, tensors of 3 or more
            dimensions count as convolutions). A glob may name any of a tied tensor's names:
            it sets the width of the data stored under the first.
        layout: ``"auto"`` (the smaller of dense and sparse for each pruned quantized tensor),
            ``"sparse"`` (always the relative index) or ``"dense"``.
        metadata: the caller's string key/values (stored under ``"user"``; a key or value
            that is not a string is refused, not converted).
        recipe: the compression recipe (JSON-ready, or an object with ``to_dict()``).
        report: the per-layer report (JSON-ready, or an object with ``to_dict()``).

    Returns:
        The per-tensor report with the real file size and the ratio to float32.

    Raises:
        ConfigError: bad ``coder``, ``layout``, ``index_bits`` or metadata (checked whatever
            tensors there are).
        InvalidTensorError: a tensor that cannot be stored, such as one on the meta device,
            or a state-dict key that is not a string (names it).
    """
    check_coder(coder)
    check_layout(layout)  # here too: a model with no shared tensor never reaches add_shared
    check_string_metadata(metadata, Path(path))
    weightless: dict[str, WeightlessWeight] = {}
    if isinstance(model_or_state_dict, nn.Module):
        model = model_or_state_dict
        state: Mapping[str, torch.Tensor | SharedTensor] = plain_state_dict(model)
        shared = export_shared(model)
        masks: dict[str, torch.Tensor] = {}
        is_conv: dict[str, bool] = {}
        for name in state:
            owner_name, attr = _owner(name)
            owner = model.get_submodule(owner_name)
            is_conv[name] = isinstance(owner, CONV_LAYER_TYPES)
            filtered = get_weightless(owner, attr)
            if filtered is not None:
                weightless[name] = filtered
            m = get_mask(owner, attr)
            if m is not None and name not in shared:
                masks[name] = m.mask
    elif isinstance(model_or_state_dict, Mapping):
        model, state, shared, masks = None, model_or_state_dict, {}, {}
        is_conv = {}
        for name, value in state.items():
            if not isinstance(name, str):
                raise InvalidTensorError(
                    f"state dict key {name!r} is not a string ({type(name).__name__})"
                )
            if isinstance(value, SharedTensor):
                shared[name] = value
                is_conv[name] = value.indices.dim() >= 3
            elif isinstance(value, torch.Tensor):
                is_conv[name] = value.dim() >= 3
            else:
                raise ConfigError(
                    f"state dict entry {name!r} is a {type(value).__name__}, "
                    "expected a tensor or a SharedTensor"
                )
    else:
        raise ConfigError(
            f"save() takes an nn.Module or a state dict, got {type(model_or_state_dict).__name__}"
        )
    # tied tensors: every later name of one tensor is stored as an alias of the first
    first: dict[_TieKey, str] = {}
    alias_of: dict[str, str] = {}
    for name, key in _tie_keys(model, state).items():
        if key in first:
            alias_of[name] = first[key]
        else:
            first[key] = name
    for name, target in alias_of.items():  # the data goes under the first name, whatever
        _move_to_target(weightless, name, target)  # name the model's walk found it under
        _move_to_target(shared, name, target)
        _move_to_target(masks, name, target)
    widths = _width_resolver(index_bits, list(state), is_conv, alias_of)
    meta: dict[str, Any] = {"user": dict(metadata or {})}
    if recipe is not None:
        meta["recipe"] = _json_ready(recipe)
    if report is not None:
        meta["report"] = _json_ready(report)
    with DzipWriter(path, coder=coder, metadata=meta) as writer:
        for name, value in state.items():
            if name in alias_of:
                writer.add_alias(name, alias_of[name])
            elif name in weightless:
                p = weightless[name]
                dtype = value.dtype if isinstance(value, torch.Tensor) else torch.float32
                shape = tuple(p.indices.shape)
                writer.add_bloomier(
                    name, p.codebook, p.filter_bytes(), shape, dtype=dtype, decoded=p.export()
                )
            elif name in shared:
                dtype = value.dtype if isinstance(value, torch.Tensor) else torch.float32
                writer.add_shared(
                    name, shared[name], dtype=dtype, gap_width=widths[name], layout=layout
                )
            elif name in masks:
                assert isinstance(value, torch.Tensor)
                writer.add_sparse_float(name, value, masks[name], gap_width=widths[name])
            else:
                assert isinstance(value, torch.Tensor)
                writer.add_raw(name, value)
    return writer.report


def load_state_dict(
    path: str | os.PathLike[str], *, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.dzip`` file, dense, with its original name, shape and dtype.

    The names of a tied tensor (an alias and its target) map to one tensor object, as in the
    state dict of a model that ties them.

    Args:
        path: the file.
        device: where to put the tensors (default CPU).

    Raises:
        CorruptFileError, UnsupportedVersionError: the file is damaged or too new (or not a
            regular file: a directory, a FIFO, a device).
        ConfigError: a ``device`` that is not a device name, that this machine does not have,
            or ``meta`` (checked before the file is read; see
            :func:`deepzip.devices.resolve_device`).
    """
    dev = None if device is None else resolve_device(device)
    out: dict[str, torch.Tensor] = {}
    with DzipReader(path) as r:
        aliases = r.aliases
        for e in r.entries:
            if e.name in aliases:  # tied: the same tensor object as its (earlier) target
                out[e.name] = out[aliases[e.name]]
                continue
            t = r.tensor(e.name)
            out[e.name] = t if dev is None else t.to(dev)
    return out


def load_model(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """Load a ``.dzip`` file's dense tensors into ``model`` in place.

    Any pruning masks, shared weights or Weightless encodings on ``model`` are removed first
    (the loaded weights carry the exact zeros and shared values): it ends with plain dense
    tensors, listed by ``model.state_dict()`` in the order the model had before it was
    pruned or quantized (``weight`` before ``bias``). Names and shapes are checked before
    the model is touched. Each value takes the device and dtype of the model's tensor (as
    ``nn.Module.load_state_dict`` does). A tensor under a parametrization of the model's own
    (not deepzip's: ``weight_norm``, say) is set through its ``right_inverse``, as
    ``module.weight = value`` does. A tied tensor's names all get its value: the model may tie
    them (one ``Parameter``, or one module registered twice) or hold separate tensors.

    Args:
        model: a module with the same architecture.
        path: the file.
        strict: the file's tensor names must equal the model's exactly.

    Returns:
        ``model``.

    Raises:
        CheckpointError: missing or unexpected keys (with ``strict``), a shape mismatch, a
            tensor of ``model`` on the meta device (loading into it would copy nothing), or
            one under a parametrization of the model's own without a ``right_inverse``; the
            message names them.
        CorruptFileError, UnsupportedVersionError: the file is damaged or too new.
        ConfigError: ``model`` is not an ``nn.Module`` (checked before the file is read).
    """
    check_module(model, "load_model")
    state = load_state_dict(path)
    expected = plain_state_dict(model)
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    if strict:
        check_keys_fit(Path(path), missing, unexpected)
    for name, t in expected.items():
        if name in state and state[name].shape != t.shape:
            raise CheckpointError(
                f"{Path(path)}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                f"the model expects {tuple(t.shape)}"
            )
    check_not_meta(Path(path), {n: t for n, t in expected.items() if n in state}, saving=False)
    check_loadable(Path(path), model, [n for n in expected if n in state])
    strip_(model)  # (it keeps each module's tensors in their unparametrized order)
    load_plain_(model, {k: v for k, v in state.items() if k in expected}, Path(path))
    return model


def inspect(path: str | os.PathLike[str]) -> InspectReport:
    """Describe a ``.dzip`` file: per-tensor parts and per-section bytes (every checksum checked).

    The sections (header, every tensor part, directory, metadata) add up exactly to the file
    size.

    Raises:
        CorruptFileError, UnsupportedVersionError: the file is damaged or too new (or not
            a regular file: a directory, a FIFO, a device).
    """
    with DzipReader(path) as r:
        return r.inspect()


def to_safetensors(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Decompress a ``.dzip`` file into a ``.safetensors`` file, one tensor at a time.

    Names, shapes and dtypes are exactly those stored; the tensors appear in file order. The
    safetensors header is computed from the ``.dzip`` directory first, then each tensor is
    decoded and written, so memory holds one decoded tensor at a time. The ``.dzip`` file's
    user key/values become the safetensors metadata, plus ``"format": "pt"`` where they have
    no ``"format"`` key of their own (theirs is kept as it is). The write is atomic.

    Args:
        src: the ``.dzip`` file.
        dest: the ``.safetensors`` file to write.
        progress: called with ``(name, index, total)`` before each tensor.

    Returns:
        ``dest`` as a path.

    Raises:
        CorruptFileError, UnsupportedVersionError: the ``.dzip`` file is damaged or too new
            (or not a regular file: a directory, a FIFO, a device).
        InvalidTensorError: a tensor is named ``__metadata__``, which safetensors reserves
            (nothing is written).
    """
    with DzipReader(src) as r:
        meta = dict(r.metadata.get("user", {}))  # strings to strings: the reader checked
        meta.setdefault("format", "pt")  # the caller's own "format" is theirs: kept
        header: dict[str, Any] = {"__metadata__": meta}
        pos = 0
        for e in r.entries:
            if e.name == "__metadata__":  # checked before anything is written
                raise InvalidTensorError(
                    f"{Path(src)}: tensor '__metadata__' cannot be written to {Path(dest)}: "
                    "safetensors reserves that name for its metadata"
                )
            n = e.numel * dtype_itemsize(e.dtype)
            header[e.name] = {
                "dtype": SAFETENSORS_DTYPE[e.dtype],
                "shape": list(e.shape),
                "data_offsets": [pos, pos + n],
            }
            pos += n
        blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
        with atomic_open(dest) as fh:
            fh.write(struct.pack("<Q", len(blob)))
            fh.write(blob)
            for i, e in enumerate(r.entries):
                if progress is not None:
                    progress(e.name, i, len(r.entries))
                fh.write(tensor_bytes(r.tensor(e.name)))
    return Path(dest)
