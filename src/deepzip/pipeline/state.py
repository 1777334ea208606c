"""A run directory: its files, the stage records in ``state.json``, the fingerprints that
decide whether a run may resume, and the stage checkpoints.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip._atomic import os_error_reason
from deepzip.config import (
    Recipe,
)
from deepzip.datasets import DataSplits
from deepzip.errors import CheckpointError, ConfigError, DeepZipError
from deepzip.format.checkpoint import (
    apply_checkpoint,
    checkpoint_read_errors,
    plain_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from deepzip.prune.schedule import ORIGINAL_P_ATTR
from deepzip.quantize import SharedWeight, get_shared
from deepzip.quantize.weightless import get_weightless

__all__ = [
    "DZIP_FILE",
    "INITIAL_CHECKPOINT",
    "LOCK_FILE",
    "STATE_FILE",
    "STATE_FORMAT",
    "STATE_VERSION",
    "RecipeChangedError",
    "RunLockedError",
    "RunResult",
    "RunWriteError",
    "StageRecord",
    "accuracy_reference",
    "clear_run",
    "data_fingerprint",
    "describe_change",
    "file_sha256",
    "independent_copy",
    "load_stage_checkpoint",
    "lock_run",
    "model_fingerprint",
    "read_run",
    "read_state",
    "recipe_hash",
    "remove_stale_temps",
    "save_stage_checkpoint",
]

STATE_FILE = "state.json"
DZIP_FILE = "model.dzip"
INITIAL_CHECKPOINT = "stage-00-initial.safetensors"
LOCK_FILE = ".deepzip-run.lock"  # deepzip's own name: a run removes the file when it ends
STATE_FORMAT = "deepzip.run"
STATE_VERSION = 1
_DROPOUT_KEY = "deepzip.run.dropout"
_GRAD_KEY = "deepzip.run.shared_grad"
_FROZEN_KEY = "deepzip.run.frozen_codebooks"
_log = logging.getLogger(__name__)


class RecipeChangedError(ConfigError):
    """A run directory holds a run of a different recipe, model or data set, or another deepzip's.

    "Another deepzip" is another version, or the same version with other code (the run records
    a hash of the package's code): its finished stages are not what this code would compute.
    """


class RunLockedError(DeepZipError):
    """Another process is running in the same run directory (it holds the directory's lock)."""


class RunWriteError(DeepZipError, OSError):
    """A run cannot write in its run directory (a full disk, a read-only file system...).

    The message names the run directory, the stage and the cause; as an ``OSError`` it has the
    cause's ``errno`` and ``strerror``, and the run directory as its ``filename``. The run
    records nothing of the stage it was in, so running it again resumes at that stage.
    """

    def __init__(
        self,
        message: str,
        code: int | None = None,
        strerror: str | None = None,
        filename: str | None = None,
    ) -> None:
        super().__init__(message)
        self.errno, self.strerror, self.filename = code, strerror, filename

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] strerror: filename"
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:  # (pickled with the cause, not only the message)
        return type(self), (str(self), self.errno, self.strerror, self.filename)


@dataclass(frozen=True)
class StageRecord:
    """One finished stage (or the starting point, index -1) as recorded in ``state.json``.

    Attributes:
        index: position in the recipe, from 0 (-1 for the model the run started from).
        kind: stage type (``"initial"`` for the start).
        name: the stage's label, if any.
        seed: its seed.
        checkpoint: the checkpoint written after it, relative to the run directory.
        val_acc: validation accuracy after it (``None`` without ``eval_fn``).
        test_acc: test accuracy after it (``None`` without ``test_fn``).
        file_bytes: real ``.dzip`` bytes of the model after it.
        float32_bytes: float32 bytes of every tensor the model needs.
        kept: surviving weights of the compressed tensors / their total.
        seconds: wall time of the stage.
        details: stage-specific JSON (prune steps, per-layer reports...).
    """

    index: int
    kind: str
    name: str | None
    seed: int
    checkpoint: str
    val_acc: float | None
    test_acc: float | None
    file_bytes: int
    float32_bytes: int
    kept: float
    seconds: float
    details: dict[str, Any]

    @property
    def ratio(self) -> float:
        """``float32_bytes / file_bytes``."""
        return self.float32_bytes / self.file_bytes if self.file_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "index": self.index,
            "kind": self.kind,
            "name": self.name,
            "seed": self.seed,
            "checkpoint": self.checkpoint,
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
            "file_bytes": self.file_bytes,
            "float32_bytes": self.float32_bytes,
            "ratio": self.ratio,
            "kept": self.kept,
            "seconds": self.seconds,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRecord:
        """Read back :meth:`to_dict` (``ConfigError`` on a malformed record)."""
        try:
            return cls(
                index=int(data["index"]),
                kind=str(data["kind"]),
                name=data.get("name"),
                seed=int(data["seed"]),
                checkpoint=str(data["checkpoint"]),
                val_acc=None if data.get("val_acc") is None else float(data["val_acc"]),
                test_acc=None if data.get("test_acc") is None else float(data["test_acc"]),
                file_bytes=int(data["file_bytes"]),
                float32_bytes=int(data["float32_bytes"]),
                kept=float(data["kept"]),
                seconds=float(data["seconds"]),
                details=dict(data.get("details") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed stage record in {STATE_FILE}: {exc!r}") from exc


def accuracy_reference(
    initial: StageRecord, stages: Sequence[StageRecord]
) -> tuple[StageRecord, bool]:
    """The record a run's accuracy change is measured from, and whether it is a dense model.

    After a train stage, that stage's record (dense); otherwise the model the run started from,
    which a ``--start`` checkpoint may have pruned or quantized already, so it is not called
    dense.
    """
    if stages and stages[0].kind == "train":
        return stages[0], True
    return initial, False


@dataclass(frozen=True)
class RunResult:
    """The outcome of :func:`run_recipe`.

    Attributes:
        model: the compressed model (shared weights and masks attached).
        recipe: the recipe run.
        run_dir: the run directory.
        initial: the starting point (index -1).
        stages: one record per stage, in order.
        dzip: the ``.dzip`` file written by the encode stage.
        resumed_from: index of the first stage this call ran (0 for a fresh run; the number
            of stages when everything was already done).
    """

    model: nn.Module
    recipe: Recipe
    run_dir: Path
    initial: StageRecord
    stages: tuple[StageRecord, ...]
    dzip: Path
    resumed_from: int

    @property
    def final(self) -> StageRecord:
        """The last stage's record."""
        return self.stages[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "recipe": self.recipe.to_dict(),
            "run_dir": str(self.run_dir),
            "dzip": str(self.dzip),
            "resumed_from": self.resumed_from,
            "initial": self.initial.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
        }


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _same_numbers(data: Any) -> Any:
    """``data`` with every whole float written as an integer (``1.0`` and ``-0.0`` as ``1`` and
    ``0``): equal recipes (``lr = 1`` and ``lr = 1.0`` compare equal) get one JSON form."""
    if isinstance(data, float) and math.isfinite(data) and data == int(data):
        return int(data)
    if isinstance(data, Mapping):
        return {k: _same_numbers(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_same_numbers(v) for v in data]
    return data


def recipe_hash(recipe: Recipe) -> str:
    """SHA-256 of the recipe's canonical JSON form (equal recipes have equal hashes: a number
    written ``1`` or ``1.0`` hashes the same)."""
    canonical = _canonical_json(_same_numbers(recipe.to_dict()))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of the model's (plain) state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(plain_state_dict(model).items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():  # flat: a 0-dim tensor (BatchNorm's num_batches_tracked) has no byte view
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def data_fingerprint(data: DataSplits) -> str:
    """A short identity of the three splits: names, sizes and a hash of every sample."""
    digest = hashlib.sha256()
    for ds in (data.train, data.val, data.test):
        digest.update(f"{ds.name}/{ds.split}/{len(ds)}/{tuple(ds.images.shape)};".encode())
        for t in (ds.images, ds.labels):
            c = t.detach().cpu().contiguous()
            if c.numel():
                digest.update(c.reshape(-1).view(torch.uint8).numpy().data)
    return f"{data.train.name}:{digest.hexdigest()[:32]}"


def _dropout_state(model: nn.Module) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            original = getattr(module, ORIGINAL_P_ATTR, None)
            out[name] = [float(module.p), float(module.p if original is None else original)]
    return out


def _restore_dropout(model: nn.Module, state: Mapping[str, Sequence[float]]) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and name in state:
            p, original = state[name]
            module.p = float(p)
            if float(p) != float(original):
                setattr(module, ORIGINAL_P_ATTR, float(original))


def _shared_layers(model: nn.Module) -> Iterator[tuple[str, SharedWeight, bool]]:
    """``(tensor name, its SharedWeight, whether it is a Weightless layer)`` for every
    weight-shared tensor of ``model``."""
    for mod_name, module in model.named_modules():
        for attr in getattr(module, "parametrizations", {}) or {}:
            shared = get_shared(module, attr)
            if shared is not None:
                name = f"{mod_name}.{attr}" if mod_name else attr
                yield name, shared, get_weightless(module, attr) is not None


def _grad_rules(model: nn.Module) -> dict[str, str]:
    return {name: shared.grad for name, shared, _ in _shared_layers(model)}


def _frozen_codebooks(model: nn.Module) -> list[str]:
    """The weight-shared tensors (not Weightless ones: their checkpoint entry says whether they
    train) whose codebook does not train, sorted."""
    return sorted(
        name
        for name, shared, weightless in _shared_layers(model)
        if not weightless and not shared.codebook.requires_grad
    )


def save_stage_checkpoint(model: nn.Module, path: Path, metadata: Mapping[str, str]) -> None:
    """Write a stage checkpoint (atomically): weights, masks, codebooks, and in its metadata
    the dropout rates, grad rules and frozen codebooks that :func:`load_stage_checkpoint`
    restores."""
    meta = dict(metadata)
    meta[_DROPOUT_KEY] = _canonical_json(_dropout_state(model))
    meta[_GRAD_KEY] = _canonical_json(_grad_rules(model))
    frozen = _frozen_codebooks(model)
    if frozen:  # (absent when none, as in the files of earlier versions)
        meta[_FROZEN_KEY] = _canonical_json(frozen)
    save_checkpoint(model, path, metadata=meta)


def load_stage_checkpoint(model: nn.Module, path: Path, *, sha256: str | None = None) -> None:
    """Load a stage checkpoint into ``model``: weights, masks, codebooks, dropout, grad rules,
    and which codebooks do not train (INQ's; SLQ/MLQ's with ``train_codebook = false``).

    ``sha256``: the digest the run recorded for the file; a file whose bytes differ is refused.

    Raises:
        CheckpointError: the file is missing, unreadable, does not fit the model, or its
            SHA-256 is not ``sha256``.
    """
    if sha256 is not None:
        restore = "Restore it, or restart the run (restart=True; --restart on the command line)"
        if not path.is_file():
            raise CheckpointError(f"{path}: the run wrote this checkpoint, it is gone. {restore}")
        with checkpoint_read_errors(path):
            found = file_sha256(path)
        if found != sha256:
            raise CheckpointError(
                f"{path}: changed since the run wrote it (SHA-256 {found[:16]}…, recorded "
                f"{sha256[:16]}…); resuming from it would not give the run's result. {restore}"
            )
    ckpt = read_checkpoint(path)
    apply_checkpoint(model, ckpt, strict=True, source=str(path))
    try:
        dropout = json.loads(ckpt.metadata.get(_DROPOUT_KEY, "{}"))
        grads = json.loads(ckpt.metadata.get(_GRAD_KEY, "{}"))
        frozen = json.loads(ckpt.metadata.get(_FROZEN_KEY, "[]"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: bad run metadata: {exc}") from exc
    _restore_dropout(model, dropout)
    for name, rule in grads.items():
        owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
        shared = get_shared(model.get_submodule(owner), attr)
        if shared is None or rule not in ("sum", "mean"):
            raise CheckpointError(f"{path}: grad rule for {name!r} does not fit the model")
        shared.grad = rule
    if not isinstance(frozen, list):
        raise CheckpointError(f"{path}: frozen codebooks must be a list, got {frozen!r}")
    for name in frozen:
        shared = None
        if isinstance(name, str) and name in ckpt.shared and name not in ckpt.bloomier:
            owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
            shared = get_shared(model.get_submodule(owner), attr)
        if shared is None:
            raise CheckpointError(f"{path}: frozen codebook {name!r} does not fit the model")
        shared.codebook.requires_grad_(False)


def independent_copy(model: nn.Module) -> nn.Module:
    """A deep copy that can be stripped or re-parametrized without touching ``model``.

    ``copy.deepcopy`` of a parametrized module shares its generated ``Parametrized<Class>``
    class, on which ``torch.nn.utils.parametrize`` stores the tensor properties: removing a
    parametrization from the copy would delete the original's property too. Each parametrized
    module of the copy gets its own class.
    """
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)
    return clone


def read_state(path: Path) -> dict[str, Any]:
    """Read and check a run's ``state.json`` (``ConfigError`` when it is not a usable one)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:  # (no permission: the run is there, restarting would discard it)
        raise ConfigError(f"{path}: cannot read the run state: {os_error_reason(exc)}") from exc
    try:
        state = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable run state ({exc}); rerun with restart") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path}: not a deepzip run state file")
    if state.get("version") != STATE_VERSION:
        raise ConfigError(
            f"{path}: run state version {state.get('version')!r}, this deepzip reads "
            f"{STATE_VERSION}; rerun with restart"
        )
    for key, kind in (("identity", dict), ("recipe", dict), ("initial", dict), ("stages", list)):
        if not isinstance(state.get(key), kind):
            raise ConfigError(
                f"{path}: malformed run state: {key!r} must be a JSON "
                f"{'object' if kind is dict else 'array'}, got {state.get(key)!r}; "
                "rerun with restart"
            )
    digests = state.get("sha256", {})  # absent in a state written before files were hashed
    if not isinstance(digests, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in digests.items()
    ):
        raise ConfigError(
            f"{path}: malformed run state: 'sha256' must map file names to digests, got "
            f"{digests!r}; rerun with restart"
        )
    return state


def read_run(run_dir: str | os.PathLike[str]) -> tuple[Recipe, StageRecord, list[StageRecord]]:
    """The recipe, starting point and finished stages recorded in a run directory.

    Raises:
        ConfigError: no run there, or an unreadable state file.
    """
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{Path(run_dir)}: no deepzip run here (no {STATE_FILE})")
    state = read_state(path)
    recipe = Recipe.from_dict(state["recipe"])
    initial = StageRecord.from_dict(state["initial"])
    return recipe, initial, [StageRecord.from_dict(r) for r in state["stages"]]


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The first difference between two recipes' dict forms, in words.

    A stage added, removed or replaced is told as the list of stage types before and after;
    with the same types, the first stage whose settings differ and up to three of them.
    """
    old_stages, new_stages = old.get("stages", []), new.get("stages", [])
    old_types = [str(s.get("type")) for s in old_stages]
    new_types = [str(s.get("type")) for s in new_stages]
    if old_types != new_types:  # compared by position, the settings of unrelated stages
        return f"the stages changed ({', '.join(old_types)} → {', '.join(new_types)})"
    for i, (a, b) in enumerate(zip(old_stages, new_stages, strict=True)):
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            parts = [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys[:3]]
            return f"stage {i + 1} ({b.get('type')}) changed ({'; '.join(parts)})"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "recipe " + "; ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys[:3])


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier run wrote (only the files a run writes)."""
    for pattern in (STATE_FILE, DZIP_FILE, "stage-*.safetensors", "sensitivity-*.json"):
        for path in run_dir.glob(pattern):
            path.unlink()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ``deepzip._atomic``'s temporary files of the files a run writes: ".<name>.<8 hex>.tmp"
_RUN_TEMP = re.compile(
    r"\.(state\.json|model\.dzip|stage-\d+-.+\.safetensors|sensitivity-\d+\.json)"
    r"\.[0-9a-f]{8}\.tmp"
)


# the directories a run measures a size in (``tempfile``'s names, prefixed ".measure-NN-")
_MEASURE_DIR = re.compile(r"\.measure-\d{2,}-[a-z0-9_]+")


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Remove the temporary files of the run's own files, and the directories it measures
    sizes in, that a killed run left in ``run_dir`` (call it while holding the run's lock);
    return them. Only names these temporaries can have are removed: a file or directory of
    the user's that merely starts the same way (``.measure-notes/``) is kept."""
    stale = [p for p in run_dir.glob(".*.tmp") if _RUN_TEMP.fullmatch(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    measuring = [
        p
        for p in run_dir.glob(".measure-*")
        if _MEASURE_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
    ]
    for path in measuring:
        shutil.rmtree(path, ignore_errors=True)
    return stale + measuring


@contextmanager
def lock_run(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock (``run_dir/.deepzip-run.lock``, :data:`LOCK_FILE`) for the
    block; the directory must exist.

    The lock is an advisory ``flock`` (``msvcrt.locking`` on Windows) that the system drops
    when the process ends, however it ends: a killed run leaves no lock behind. The lock file
    is removed when the block ends. On a file system that cannot lock files the block runs
    unlocked, with a warning logged; in a directory this process cannot write to, unlocked. A
    lock file this process may not write (another user's) is locked through a read-only
    descriptor, and left there.

    Raises:
        RunLockedError: another process holds the lock.
    """
    path = run_dir / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            if exc.errno not in _READ_ONLY:
                raise
            try:  # another user's lock file (a run of theirs holds it, or was killed)
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                fd = -1  # nothing can be written there: a finished run is only read back
                break
        try:
            _lock_fd(fd, run_dir)
            try:  # a holder that finished meanwhile removed the file we locked: lock anew
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    if fd < 0:
        yield
        return
    try:
        yield
    finally:
        try:
            if sys.platform != "win32":  # (Windows cannot remove an open file)
                try:
                    path.unlink(missing_ok=True)  # while locked: nobody can hold the old file
                except OSError as exc:  # another user's, in a directory it may not leave
                    if exc.errno not in _READ_ONLY:
                        raise
        finally:
            os.close(fd)  # releases the lock


# errors of creating the lock file in a directory this process cannot write to
_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}
# errors of a file system that has no locks (some network and FUSE file systems)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _lock_fd(fd: int, run_dir: Path) -> None:
    busy = (
        f"{run_dir}: another deepzip run is using this run directory (it holds "
        f"{run_dir / LOCK_FILE}); wait for it to end, or use another run directory"
    )
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise RunLockedError(busy) from exc
    else:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunLockedError(busy) from exc
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            _log.warning(
                "%s: this file system cannot lock files (%s); running unlocked", run_dir, exc
            )
