"""Training checkpoints: safetensors files that carry pruning masks.

A deepzip checkpoint is a plain ``.safetensors`` file any tool can read: the model's tensors
under their usual names (pruned weights hold exact zeros), plus one ``bool`` tensor per pruning
mask under ``__deepzip_mask__.<parameter name>``. The safetensors metadata holds
``deepzip.format = "checkpoint"``, ``deepzip.version``, the masks' reference standard deviations
(JSON) and the caller's string key/values.

Reading never unpickles: ``.safetensors`` is parsed by the safetensors library, and
``.pt``/``.pth`` files are opened with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from deepzip._atomic import atomic_path
from deepzip.errors import CheckpointError
from deepzip.prune.api import mask_dict, strip_
from deepzip.prune.parametrization import attach_mask, get_mask

__all__ = [
    "CHECKPOINT_VERSION",
    "MASK_PREFIX",
    "Checkpoint",
    "apply_checkpoint",
    "load_checkpoint",
    "plain_state_dict",
    "read_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_VERSION = "1"
MASK_PREFIX = "__deepzip_mask__."
_PARAM_SEP = ".parametrizations."


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as the unpruned model would name it (masks applied, no mask buffers).

    Parametrized tensors appear under their plain name (``fc1.weight``) with their effective
    value; the parametrizations' own buffers are left out.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if _PARAM_SEP not in key:
            out[key] = value.detach()
            continue
        owner, rest = key.split(_PARAM_SEP, 1)
        attr, tail = rest.split(".", 1)
        if tail == "original":
            module = model.get_submodule(owner)
            out[f"{owner}.{attr}" if owner else attr] = getattr(module, attr).detach()
    return out


class Checkpoint:
    """A checkpoint read from disk: tensors, masks, and metadata."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        reference_std: dict[str, float],
        metadata: dict[str, str],
    ) -> None:
        self.tensors = tensors
        self.masks = masks
        self.reference_std = reference_std
        self.metadata = metadata


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model`` (and its pruning masks) to a ``.safetensors`` checkpoint, atomically.

    Args:
        model: any module, pruned or not.
        path: destination; written to a temporary file in the same directory, then renamed.
        metadata: extra string key/values stored in the file header.

    Returns:
        The path written.
    """
    dest = Path(path)
    tensors = {k: v.contiguous().cpu() for k, v in plain_state_dict(model).items()}
    masks = mask_dict(model)
    stds: dict[str, float] = {}
    for name, mask in masks.items():
        tensors[MASK_PREFIX + name] = mask.cpu().contiguous()
        owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
        m = get_mask(model.get_submodule(owner), attr)
        assert m is not None
        stds[name] = float(m.reference_std)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(
        {
            "deepzip.format": "checkpoint",
            "deepzip.version": CHECKPOINT_VERSION,
            "deepzip.reference_std": json.dumps(stds, sort_keys=True),
        }
    )
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return dest


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    if suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for hostile/corrupt pickles
            raise CheckpointError(
                f"{path}: cannot be read with torch.load(weights_only=True): {exc}"
            ) from exc
        return _as_state_dict(path, obj), {}
    raise CheckpointError(
        f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors, .pt or .pth"
    )


def _as_state_dict(path: Path, obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
        bad = [
            k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
        ]
        if not bad:
            return dict(obj)
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a tensor; expected a state dict")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a state dict")


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint (``.safetensors``, or a ``.pt``/``.pth`` state dict) without pickle.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a state dict.
    """
    p = Path(path)
    raw, meta = _read_tensors(p)
    masks = {
        k[len(MASK_PREFIX) :]: v.to(torch.bool) for k, v in raw.items() if k.startswith(MASK_PREFIX)
    }
    tensors = {k: v for k, v in raw.items() if not k.startswith(MASK_PREFIX)}
    stds: dict[str, float] = {}
    if "deepzip.reference_std" in meta:
        try:
            loaded = json.loads(meta["deepzip.reference_std"])
            stds = {str(k): float(v) for k, v in loaded.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{p}: bad deepzip.reference_std metadata: {exc}") from exc
    for name, mask in masks.items():
        if name not in tensors:
            raise CheckpointError(f"{p}: mask for {name!r} but no such tensor in the file")
        if mask.shape != tensors[name].shape:
            raise CheckpointError(
                f"{p}: mask for {name!r} has shape {tuple(mask.shape)}, "
                f"the tensor {tuple(tensors[name].shape)}"
            )
    return Checkpoint(tensors, masks, stds, meta)


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True
) -> Checkpoint:
    """Load a checkpoint into ``model`` in place and re-attach its pruning masks.

    Any masks already on ``model`` are removed first. With ``strict`` the file's tensor names
    must equal the model's exactly.

    Raises:
        CheckpointError: missing or unexpected keys, or a shape mismatch (names the tensor).
    """
    return apply_checkpoint(model, read_checkpoint(path), strict=strict, source=str(path))


def apply_checkpoint(
    model: nn.Module, ckpt: Checkpoint, *, strict: bool = True, source: str = "checkpoint"
) -> Checkpoint:
    """Load an already read :class:`Checkpoint` into ``model`` (see :func:`load_checkpoint`).

    ``source`` names the checkpoint in error messages.
    """
    expected = plain_state_dict(model)  # validated before the model is touched
    missing = sorted(set(expected) - set(ckpt.tensors))
    unexpected = sorted(set(ckpt.tensors) - set(expected))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:5])}")
        raise CheckpointError(f"{source} does not fit the model: {'; '.join(parts)}")
    mismatched = [
        n for n, t in expected.items() if n in ckpt.tensors and ckpt.tensors[n].shape != t.shape
    ]
    if mismatched:
        name = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CheckpointError(
            f"{source}: tensor {name!r} has shape {tuple(ckpt.tensors[name].shape)}, "
            f"the model expects {tuple(expected[name].shape)}{more}"
        )
    strip_(model)
    model.load_state_dict({k: v for k, v in ckpt.tensors.items() if k in expected}, strict=strict)
    for name, mask in ckpt.masks.items():
        owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
        try:
            module = model.get_submodule(owner)
        except AttributeError as exc:
            raise CheckpointError(f"{source}: mask for {name!r} names no module") from exc
        m = attach_mask(module, attr, mask.to(getattr(module, attr).device))
        if name in ckpt.reference_std:
            m.reference_std.fill_(ckpt.reference_std[name])
    return ckpt
