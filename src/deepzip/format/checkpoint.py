"""Training checkpoints: safetensors files that carry pruning masks and shared weights.

A deepzip checkpoint is a plain ``.safetensors`` file any tool can read: the model's tensors
under their usual names (pruned weights hold exact zeros), plus one ``bool`` tensor per pruning
mask under ``__deepzip_mask__.<parameter name>``; a quantized tensor also has its codebook
(``__deepzip_codebook__.<name>``, float32) and indices (``__deepzip_index__.<name>``, uint8),
so fine-tuning can resume with the same clusters; a layer encoded with Weightless also has its
serialised Bloomier filter (``__deepzip_bloomier__.<name>``, uint8), checked against the
indices and mask when read. The safetensors metadata holds
``deepzip.format = "checkpoint"``, ``deepzip.version``, the masks' reference standard deviations
(JSON), whether each Weightless layer's codebook and bias train (``deepzip.train_encoded``,
JSON, only when there is such a layer) and the caller's string key/values.

Reading never unpickles: ``.safetensors`` is parsed by the safetensors library, and
``.pt``/``.pth`` files are opened with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from deepzip._atomic import atomic_path, os_error_reason
from deepzip._parametrize import own_tensor_order
from deepzip.coding.bloomier import BloomierFilter
from deepzip.errors import CheckpointError, ConfigError, CorruptFileError, InvalidTensorError
from deepzip.prune.api import mask_dict
from deepzip.prune.parametrization import attach_mask, get_mask, get_quantization
from deepzip.quantize.api import export_shared, strip_
from deepzip.quantize.shared import SharedTensor, attach_shared, get_shared
from deepzip.quantize.weightless import attach_weightless, get_weightless
from deepzip.targets import check_module

__all__ = [
    "BLOOMIER_PREFIX",
    "CHECKPOINT_VERSION",
    "CODEBOOK_PREFIX",
    "DEEPZIP_KEY_PREFIX",
    "INDEX_PREFIX",
    "MASK_PREFIX",
    "Checkpoint",
    "apply_checkpoint",
    "check_bloomier_entry",
    "check_checkpoint_file",
    "check_checkpoint_name",
    "check_keys_fit",
    "check_loadable",
    "check_not_meta",
    "check_shared_entry",
    "check_string_metadata",
    "checkpoint_read_errors",
    "load_checkpoint",
    "load_plain_",
    "plain_state_dict",
    "read_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_VERSION = "1"
MASK_PREFIX = "__deepzip_mask__."
CODEBOOK_PREFIX = "__deepzip_codebook__."
INDEX_PREFIX = "__deepzip_index__."
BLOOMIER_PREFIX = "__deepzip_bloomier__."
DEEPZIP_KEY_PREFIX = "__deepzip_"
"""The start of every deepzip entry of a checkpoint (masks, codebooks, indices, filters)."""
_PARAM_SEP = ".parametrizations."
_ROOT_PARAM = "parametrizations."


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as the unpruned model would name it (masks applied, no mask buffers).

    Parametrized tensors appear under their plain name (``fc1.weight``) with their effective
    value, a parametrization that stores several tensors (``weight_norm``'s ``original0``
    and ``original1``) included; the parametrizations' own buffers are left out. The order
    is the unparametrized model's: ``state_dict()`` of a parametrized module lists the
    parametrized tensor after all of the module's other tensors (a pruned ``Linear`` gives
    ``bias`` before ``weight``), and here it is moved back in front of them (see
    :func:`deepzip._parametrize.own_tensor_order`), so that pruning or quantizing a model
    does not change the order of its files.

    Raises:
        InvalidTensorError: a state-dict entry that is not a tensor (a module's extra state
            from ``get_extra_state``), naming its key: a checkpoint or ``.dzip`` file holds
            tensors only.
    """
    out: dict[str, torch.Tensor] = {}
    owners: dict[str, None] = {}  # the names of parametrized modules, in state-dict order
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise InvalidTensorError(
                f"{key}: the state dict holds a {type(value).__name__}, not a tensor (a "
                "module's extra state); only tensors can be saved"
            )
        if key.startswith(_ROOT_PARAM):  # the model itself is parametrized
            owner, rest = "", key[len(_ROOT_PARAM) :]
        elif _PARAM_SEP in key:
            owner, rest = key.split(_PARAM_SEP, 1)
        else:
            out[key] = value.detach()
            continue
        attr, tail = rest.split(".", 1)
        # ``original``, or ``original0``, ``original1``... when the parametrization's
        # right_inverse gives several tensors (``weight_norm``): one plain tensor either way
        if tail == "original" or (tail.startswith("original") and tail[8:].isdigit()):
            plain = f"{owner}.{attr}" if owner else attr
            if plain not in out:
                out[plain] = getattr(model.get_submodule(owner), attr).detach()
                owners[owner] = None
    return {name: out[name] for name in _unparametrized_order(model, list(out), list(owners))}


def _unparametrized_order(model: nn.Module, names: list[str], owners: list[str]) -> list[str]:
    """``names`` (the plain state dict's, in ``model.state_dict()`` order) reordered as the
    model without parametrizations lists them.

    ``state_dict()`` lists a module's own parameters, its own buffers, then its children,
    each module's keys together; a parametrized tensor comes from the ``parametrizations``
    child, registered last. The own tensors of each parametrized module in ``owners`` are
    put back at the start of its keys, in :func:`~deepzip._parametrize.own_tensor_order`.
    One pass: a key's enclosing modules are its name's prefixes.
    """
    present = set(names)
    own_of: dict[str, list[str]] = {}
    for owner in owners:
        prefix = f"{owner}." if owner else ""
        names_of = (prefix + attr for attr in own_tensor_order(model.get_submodule(owner)))
        own_of[owner] = [n for n in names_of if n in present]
    moved = {n for own in own_of.values() for n in own}
    order: list[str] = []
    for name in names:
        parts = name.split(".")
        for depth in range(len(parts)):  # the root, then each enclosing module, outermost first
            owner = ".".join(parts[:depth])
            own = own_of.pop(owner, None)
            if own is not None:  # the first key of this module: its own tensors go here
                order.extend(own)
        if name not in moved:
            order.append(name)
    return order


def _users_parametrizations(module: nn.Module, attr: str) -> list[nn.Module]:
    """The parametrizations on ``module.attr`` that are not deepzip's (``strip_`` keeps them)."""
    if not parametrize.is_parametrized(module, attr):
        return []
    ours = (get_mask(module, attr), get_quantization(module, attr), get_weightless(module, attr))
    return [
        p
        for p in module.parametrizations[attr]  # type: ignore[index]
        if not any(p is o for o in ours)
    ]


def check_loadable(source: object, model: nn.Module, names: Iterable[str]) -> None:
    """Refuse, before ``model`` is touched, a tensor that cannot take a stored value.

    A stored tensor holds the plain value (:func:`plain_state_dict`). Where ``model`` has a
    parametrization of its own on that tensor (not deepzip's, which loading removes), the
    value goes in through the parametrizations' ``right_inverse`` (as ``module.weight =
    value`` does), so each of them must have one.

    Raises:
        CheckpointError: naming ``source``, the tensor and the parametrization without a
            ``right_inverse``.
    """
    for name in names:
        owner_name, attr = name.rsplit(".", 1) if "." in name else ("", name)
        for p in _users_parametrizations(model.get_submodule(owner_name), attr):
            if not hasattr(p, "right_inverse"):
                raise CheckpointError(
                    f"{source}: tensor {name!r} is under the model's parametrization "
                    f"{type(p).__name__}, which has no right_inverse: the stored value cannot "
                    "be loaded into it (remove the parametrization, or give it a "
                    "right_inverse)"
                )


def load_plain_(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: object) -> None:
    """Load tensors named as :func:`plain_state_dict` names them into ``model`` in place.

    Call it after ``strip_`` and :func:`check_loadable`, with names and shapes already
    checked. A tensor under a parametrization the model keeps (the user's own) is set through
    its ``right_inverse``; each value takes the device and dtype of the model's tensor.

    Raises:
        CheckpointError: a name the model's ``load_state_dict`` does not take (naming it).
    """
    direct: dict[str, torch.Tensor] = {}
    through: list[tuple[nn.Module, str, torch.Tensor]] = []
    for name, value in tensors.items():
        owner_name, attr = name.rsplit(".", 1) if "." in name else ("", name)
        owner = model.get_submodule(owner_name)
        if parametrize.is_parametrized(owner, attr):
            through.append((owner, attr, value))
        else:
            direct[name] = value
    result = model.load_state_dict(direct, strict=False)
    if result.unexpected_keys:  # plain_state_dict and load_state_dict disagree on a name
        raise CheckpointError(
            f"{source}: tensors the model did not take: {', '.join(result.unexpected_keys[:5])}"
        )
    with torch.no_grad():
        for owner, attr, value in through:
            current = getattr(owner, attr)
            # a copy: torch stores what right_inverse returns (weight_norm's ``v`` is its
            # input) by ``set_``, which would share one loaded tensor between tensors the
            # model keeps apart
            setattr(owner, attr, value.to(device=current.device, dtype=current.dtype, copy=True))


def check_keys_fit(source: object, missing: list[str], unexpected: list[str]) -> None:
    """Raise if a stored state and a model's do not have the same keys.

    Raises:
        CheckpointError: ``"{source} does not fit the model: missing N key(s): ...;
            unexpected M key(s): ..."``, naming up to five keys of each kind.
    """
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:5])}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:5])}")
    if parts:
        raise CheckpointError(f"{source} does not fit the model: {'; '.join(parts)}")


def check_not_meta(source: object, tensors: Mapping[str, torch.Tensor], *, saving: bool) -> None:
    """Refuse tensors on the ``meta`` device, which have a shape but no values or memory.

    Args:
        source: the file, for the message.
        tensors: the model's tensors that would be loaded (``saving=False``) or written.
        saving: whether they are being written (else loaded into).

    Raises:
        InvalidTensorError: (saving) a meta tensor, named: it has no values to write.
        CheckpointError: (loading) a meta tensor of the model, named: copying into it does
            nothing, so the model would be left without the file's values.
    """
    meta = [name for name, t in tensors.items() if t.is_meta]
    if not meta:
        return
    more = f" (and {len(meta) - 1} more)" if len(meta) > 1 else ""
    if saving:
        raise InvalidTensorError(
            f"{meta[0]}{more}: a tensor on the meta device has no values to write to "
            f"{source}; materialize the model first (model.to_empty(device=...), load weights)"
        )
    raise CheckpointError(
        f"{source}: the model's tensor {meta[0]!r}{more} is on the meta device, which holds "
        "no memory: loading into it would copy nothing; materialize the model first "
        "(model.to_empty(device='cpu'), or build it on a real device)"
    )


class Checkpoint:
    """A checkpoint read from disk: tensors, masks, and metadata."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        reference_std: dict[str, float],
        metadata: dict[str, str],
        shared: dict[str, SharedTensor] | None = None,
        bloomier: dict[str, bytes] | None = None,
        train_encoded: dict[str, bool] | None = None,
    ) -> None:
        self.tensors = tensors
        self.masks = masks
        self.shared = shared or {}
        self.bloomier = bloomier or {}
        self.train_encoded = train_encoded or {}
        self.reference_std = reference_std
        self.metadata = metadata


def check_string_metadata(metadata: object, source: object) -> None:
    """Refuse caller metadata that is not ``None`` or a mapping of strings to strings.

    A value or key of another type is not turned into a string: ``{1: "a", "1": "b"}`` would
    lose one entry, and ``None`` would read back as ``"None"``. A string holding an unpaired
    surrogate (``"\\ud800"``) is not Unicode text and is refused too: no UTF-8 file holds it.

    Raises:
        ConfigError: naming ``source`` (the file) and the first bad key or value.
    """
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise ConfigError(
            f"{source}: metadata must be a mapping of strings to strings, got "
            f"{type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(
                f"{source}: metadata must map strings to strings, got {key!r}: {value!r} "
                f"({type(key).__name__}: {type(value).__name__})"
            )
        for text in (key, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigError(
                    f"{source}: metadata string {text[:40]!a} holds an unpaired surrogate "
                    "(not Unicode text: no file can store it as UTF-8)"
                ) from exc


def check_checkpoint_name(path: str | os.PathLike[str], what: str | None = None) -> None:
    """Refuse a checkpoint name that is not ``.safetensors``.

    A checkpoint is written in safetensors format whatever its name, and read by its suffix
    (``.pt``/``.pth`` with ``torch.load``), so under another name it could not be read back.
    ``what`` names it in the message (default: the path).

    Raises:
        ConfigError: naming the file and the name to use.
    """
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise ConfigError(
            f"{what or os.fsdecode(path)}: a checkpoint is written in safetensors format; name "
            f"it {p.with_suffix('.safetensors').name if p.name else 'model.safetensors'} "
            "(a .pt/.pth name is read with torch.load)"
        )


_RESERVED_KEYS = frozenset(
    {"deepzip.format", "deepzip.version", "deepzip.reference_std", "deepzip.train_encoded"}
)
"""The header keys :func:`save_checkpoint` writes itself (a caller's would be overwritten)."""


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

    Raises:
        ConfigError: ``model`` is not an ``nn.Module``; ``path`` is not named
            ``.safetensors`` (checkpoints are read by their suffix: under another name the
            file could not be read back); ``metadata`` is not a mapping of strings to
            strings, or uses a key deepzip writes (``deepzip.format``, ``deepzip.version``,
            ``deepzip.reference_std``, ``deepzip.train_encoded``); a layer is in the middle of
            an incremental quantization run (SLQ, MLQ,
            INQ: its frozen weights and mask have no place in a checkpoint), named.
        InvalidTensorError: a tensor on the meta device (no values to write), named.
        CheckpointError: the file could not be written (a full disk: safetensors reports it
            with its own error type); no file is left behind.
    """
    check_module(model, "save_checkpoint")
    dest = Path(path)
    check_checkpoint_name(dest)
    check_string_metadata(metadata, dest)
    reserved = sorted(set(metadata or {}) & _RESERVED_KEYS)
    if reserved:
        raise ConfigError(
            f"{dest}: metadata key {reserved[0]!r} is deepzip's own (the checkpoint's "
            f"{', '.join(sorted(_RESERVED_KEYS))}); use another name"
        )
    for mod_name, module in model.named_modules():
        for attr in getattr(module, "parametrizations", {}):
            if get_quantization(module, attr) is not None and get_shared(module, attr) is None:
                name = f"{mod_name}.{attr}" if mod_name else attr
                raise ConfigError(
                    f"{name}: the layer is in the middle of an incremental quantization run "
                    "(a FrozenWeight from SLQ, MLQ or INQ): a checkpoint cannot hold its "
                    f"frozen weights and pruning mask, so {dest} is not written; finish the "
                    "run first, or strip_ the model to save its current weights"
                )
    plain = plain_state_dict(model)
    check_not_meta(dest, plain, saving=True)
    tensors = _unshared({k: v.contiguous().cpu() for k, v in plain.items()})
    masks = mask_dict(model)
    train_encoded: dict[str, bool] = {}
    for name, s in export_shared(model).items():
        tensors[MASK_PREFIX + name] = s.mask.cpu().contiguous()
        tensors[CODEBOOK_PREFIX + name] = s.codebook.cpu().contiguous()
        tensors[INDEX_PREFIX + name] = s.indices.cpu().contiguous()
        owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
        encoded = get_weightless(model.get_submodule(owner), attr)
        if encoded is not None:
            tensors[BLOOMIER_PREFIX + name] = encoded.bloomier.detach().cpu().contiguous()
            train_encoded[name] = encoded.train_encoded
    stds: dict[str, float] = {}
    for name, mask in masks.items():
        tensors[MASK_PREFIX + name] = mask.cpu().contiguous()
        owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
        m = get_mask(model.get_submodule(owner), attr)
        assert m is not None
        stds[name] = float(m.reference_std)
    meta = dict(metadata or {})
    meta.update(
        {
            "deepzip.format": "checkpoint",
            "deepzip.version": CHECKPOINT_VERSION,
            "deepzip.reference_std": json.dumps(stds, sort_keys=True),
        }
    )
    if train_encoded:
        meta["deepzip.train_encoded"] = json.dumps(train_encoded, sort_keys=True)
    with atomic_path(dest) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except SafetensorError as exc:  # a full disk, an I/O error: safetensors' own type
            raise CheckpointError(f"{dest}: cannot write the checkpoint: {exc}") from exc
        _fix_header_order(tmp)
    return dest


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every one whose storage an earlier one uses copied.

    safetensors refuses two entries over one storage, which a model with tied weights (one
    module registered twice, an embedding and an output layer sharing a ``Parameter``) or a
    buffer that is a view of another gives; each name gets its own copy (loading gives them
    the same values, and a model that ties them gets its tie back).
    """
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        elif ptr:
            seen.add(ptr)
        out[name] = t
    return out


def _fix_header_order(path: Path) -> None:
    """Rewrite a safetensors header in place with its keys in one fixed order.

    safetensors writes the metadata in hash order, which changes from one call to the next, so
    the same model gave different bytes. The same keys and values in another order take the
    same number of bytes, so the header keeps its length and the data stays where it is.
    """
    with open(path, "r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        ordered: dict[str, object] = {}
        if "__metadata__" in header:
            ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
        for name in sorted(header, key=lambda n: (header[n]["data_offsets"][0], n)):
            ordered[name] = header[name]
        blob = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(blob) > size:  # the same content cannot grow; never write a longer header here
            raise CheckpointError(
                f"{path}: the reordered safetensors header is {len(blob)} bytes, the written "
                f"one {size}; not rewritten"
            )
        fh.seek(8)
        fh.write(blob + b" " * (size - len(blob)))  # safetensors pads its header with spaces


@contextmanager
def checkpoint_read_errors(path: Path) -> Iterator[None]:
    """An ``OSError`` in the block (looking ``path`` up or reading it: no permission, a
    directory on the way that may not be searched) is a ``CheckpointError`` naming ``path``
    with the reason: ``<path>: cannot read it: no permission``."""
    try:
        yield
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it: {os_error_reason(exc)}") from exc


def check_checkpoint_file(path: Path) -> None:
    """Refuse a checkpoint path that is missing, not a regular file or not readable, before
    a reader opens it (safetensors reports a file it may not read as missing).

    Raises:
        CheckpointError: no such file; a directory, a FIFO (opening it would block) or a
            device (named); a file that cannot be opened for reading (named, with the reason,
            e.g. no permission).
    """
    with checkpoint_read_errors(path):  # (a directory on the way that may not be searched)
        regular = path.is_file()
        present = regular or path.exists()
    if not regular:
        if present:
            raise CheckpointError(f"{path}: not a checkpoint file (not a regular file)")
        raise CheckpointError(f"checkpoint not found: {path}")
    with checkpoint_read_errors(path):
        os.close(os.open(path, os.O_RDONLY))


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    check_checkpoint_file(path)
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
        return load_pickled_state_dict(path), {}
    raise CheckpointError(
        f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors, .pt or .pth"
    )


def load_pickled_state_dict(path: Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The flat tensor state dict of a ``.pt``/``.pth``/``.bin`` file, read with
    ``torch.load(weights_only=True)`` (``mmap``: tensors stay mapped from the file): a state
    dict, or one under ``state_dict``/``model_state_dict``/``model``. Anything else, or a file
    torch cannot read, is a ``CheckpointError`` naming ``path``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for hostile/corrupt pickles
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True): {exc}"
        ) from exc
    return _as_state_dict(path, obj)


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
    tensors = {k: v for k, v in raw.items() if not k.startswith(DEEPZIP_KEY_PREFIX)}
    masks = _with_prefix(raw, MASK_PREFIX)
    codebooks = _with_prefix(raw, CODEBOOK_PREFIX)
    indices = _with_prefix(raw, INDEX_PREFIX)
    filters = _with_prefix(raw, BLOOMIER_PREFIX)
    known = (MASK_PREFIX, CODEBOOK_PREFIX, INDEX_PREFIX, BLOOMIER_PREFIX)
    for k in raw:
        if k.startswith(DEEPZIP_KEY_PREFIX) and not k.startswith(known):
            raise CheckpointError(f"{p}: unknown deepzip entry {k!r} (written by a newer version?)")
    stds: dict[str, float] = {}
    if "deepzip.reference_std" in meta:
        try:
            loaded = json.loads(meta["deepzip.reference_std"])
            stds = {str(k): float(v) for k, v in loaded.items()}
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise CheckpointError(f"{p}: bad deepzip.reference_std metadata: {exc}") from exc
    for name, mask in masks.items():
        if name not in tensors:
            raise CheckpointError(f"{p}: mask for {name!r} but no such tensor in the file")
        if mask.shape != tensors[name].shape:
            raise CheckpointError(
                f"{p}: mask for {name!r} has shape {tuple(mask.shape)}, "
                f"the tensor {tuple(tensors[name].shape)}"
            )
    shared = {
        name: _shared_entry(p, name, cb, indices, masks, tensors) for name, cb in codebooks.items()
    }
    if set(indices) - set(codebooks):
        raise CheckpointError(
            f"{p}: indices without a codebook for {sorted(set(indices) - set(codebooks))[0]!r}"
        )
    bloomier = {name: _bloomier_entry(p, name, data, shared) for name, data in filters.items()}
    train_encoded: dict[str, bool] = {}
    if "deepzip.train_encoded" in meta:
        try:
            loaded = json.loads(meta["deepzip.train_encoded"])
        except (ValueError, RecursionError) as exc:
            raise CheckpointError(f"{p}: bad deepzip.train_encoded metadata: {exc}") from exc
        if not isinstance(loaded, dict) or not all(
            k in bloomier and isinstance(v, bool) for k, v in loaded.items()
        ):
            raise CheckpointError(
                f"{p}: deepzip.train_encoded must map Weightless layers to true or false"
            )
        train_encoded = loaded
    return Checkpoint(
        tensors,
        {k: v.to(torch.bool) for k, v in masks.items()},
        stds,
        meta,
        shared,
        bloomier,
        train_encoded,
    )


def _bloomier_entry(
    path: Path, name: str, data: torch.Tensor, shared: Mapping[str, SharedTensor]
) -> bytes:
    """Validate one Weightless layer's filter: it must decode to the stored indices and mask."""
    if name not in shared:
        raise CheckpointError(f"{path}: Bloomier filter for {name!r} without its codebook")
    return check_bloomier_entry(str(path), name, data, shared[name])


def check_bloomier_entry(where: str, name: str, data: torch.Tensor, shared: SharedTensor) -> bytes:
    """A Weightless layer's serialised filter (a checkpoint's ``__deepzip_bloomier__`` entry),
    once it is known to decode to ``shared``'s indices and mask.

    Raises:
        CheckpointError: naming ``where`` (the file) and the tensor: not 1-D uint8, not a
            valid filter, or one that decodes to other indices, another mask or another
            number of clusters.
    """
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise CheckpointError(f"{where}: Bloomier filter of {name!r} must be 1-D uint8")
    raw = bytes(data.numpy().tobytes())
    try:
        f = BloomierFilter.from_bytes(raw, name=name, n_positions=shared.mask.numel())
    except CorruptFileError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    if f.num_values != shared.codebook.numel() or not f.decodes_to(
        shared.mask.numpy(), shared.indices.numpy()
    ):
        raise CheckpointError(
            f"{where}: the Bloomier filter of {name!r} does not decode to its indices and mask"
        )
    return raw


def _with_prefix(raw: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}


def _shared_entry(
    path: Path,
    name: str,
    codebook: torch.Tensor,
    indices: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
) -> SharedTensor:
    """Validate one quantized tensor's codebook, indices and mask."""
    if name not in indices or name not in masks or name not in tensors:
        raise CheckpointError(f"{path}: codebook for {name!r} without its indices, mask or tensor")
    return check_shared_entry(
        str(path), name, codebook, indices[name], masks[name], tuple(tensors[name].shape)
    )


def check_shared_entry(
    where: str,
    name: str,
    codebook: torch.Tensor,
    index: torch.Tensor,
    mask: torch.Tensor,
    shape: tuple[int, ...],
) -> SharedTensor:
    """A quantized tensor's shared form from its checkpoint entries (``__deepzip_codebook__``,
    ``__deepzip_index__``, ``__deepzip_mask__``), once they are known to fit together.

    Every index must address the codebook, at pruned positions too (decoding gathers them all).

    Raises:
        CheckpointError: naming ``where`` (the file) and the tensor: a codebook that is not 1-D
            float with 1..256 entries, indices that are not uint8 of ``shape``, or an index
            past the codebook.
    """
    if codebook.dim() != 1 or not 1 <= codebook.numel() <= 256 or not codebook.is_floating_point():
        raise CheckpointError(
            f"{where}: tensor {name!r}: its codebook must be 1-D float with 1..256 entries, "
            f"got shape {tuple(codebook.shape)} {codebook.dtype}"
        )
    if index.dtype != torch.uint8 or tuple(index.shape) != shape:
        raise CheckpointError(
            f"{where}: tensor {name!r}: its indices must be uint8 of shape {shape}, "
            f"got {index.dtype} {tuple(index.shape)}"
        )
    if index.numel() and int(index.max()) >= codebook.numel():
        raise CheckpointError(
            f"{where}: tensor {name!r}: an index reaches {int(index.max())}, the codebook has "
            f"{codebook.numel()} entries"
        )
    return SharedTensor(codebook.to(torch.float32), index, mask.to(torch.bool))


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True
) -> Checkpoint:
    """Load a checkpoint into ``model`` in place and re-attach its pruning masks.

    Any masks already on ``model`` are removed first. With ``strict`` the file's tensor names
    must equal the model's exactly. Without it, tensors the model lacks are ignored and the
    model's tensors the file lacks keep their values; a mask (or shared form) is still never
    ignored: one for a tensor the model does not have is an error, since the file says that
    tensor is pruned or quantized and loading without it would silently drop that.

    Everything is checked before the model is touched: a failed load leaves it as it was.

    A tensor under a parametrization of the model's own (not deepzip's: ``weight_norm``, say)
    is set through its ``right_inverse``, as ``module.weight = value`` does.

    Raises:
        CheckpointError: missing or unexpected keys (with ``strict``), a shape mismatch, a
            mask for a tensor the model does not have, a model tensor on the meta device, or
            one under a parametrization of the model's own without a ``right_inverse``
            (names the tensor).
        ConfigError: ``model`` is not an ``nn.Module`` (checked before the file is read).
    """
    check_module(model, "load_checkpoint")
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
    if strict:
        check_keys_fit(source, missing, unexpected)
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
    check_not_meta(source, {n: t for n, t in expected.items() if n in ckpt.tensors}, saving=False)
    check_loadable(source, model, [n for n in expected if n in ckpt.tensors])
    # every mask must name a tensor of the model (even without ``strict``): checked here, so
    # that a bad name fails before strip_ and load_state_dict change the model
    modules: dict[str, nn.Module] = {}
    for name in ckpt.masks:
        if name not in expected:
            raise CheckpointError(
                f"{source}: mask for {name!r}, a tensor the model does not have "
                "(a pruned or quantized tensor is not skipped, even with strict=False)"
            )
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        modules[name] = model.get_submodule(owner)  # exists: the model has the tensor
        users = _users_parametrizations(modules[name], name.rsplit(".", 1)[-1])
        if users:
            raise CheckpointError(
                f"{source}: tensor {name!r} is pruned or quantized in the checkpoint, and "
                f"under the model's own parametrization {type(users[0]).__name__}, which "
                "deepzip does not put a mask or shared weights under: remove it first"
            )
    strip_(model)
    load_plain_(model, {k: v for k, v in ckpt.tensors.items() if k in expected}, source)
    for name, mask in ckpt.masks.items():
        attr = name.rsplit(".", 1)[-1]
        module = modules[name]
        if name in ckpt.bloomier:
            attach_weightless(
                module,
                attr,
                ckpt.shared[name],
                ckpt.bloomier[name],
                train_encoded=ckpt.train_encoded.get(name, True),
            )
            continue
        if name in ckpt.shared:
            attach_shared(module, attr, ckpt.shared[name])
            continue
        m = attach_mask(module, attr, mask.to(getattr(module, attr).device))
        if name in ckpt.reference_std:
            m.reference_std.fill_(ckpt.reference_std[name])
    return ckpt
