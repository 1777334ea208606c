"""What the commands share: the consoles, progress bars, argument helpers and parsers of
option values.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn

from deepzip._atomic import os_error_reason
from deepzip.config import (
    IndexBitsSpec,
    LayerOverride,
    PruneConfig,
    PruneJob,
    Recipe,
    RetrainConfig,
    ScheduleConfig,
    builtin_recipe_data,
    builtin_recipe_names,
    check_index_bits,
    load_toml,
)
from deepzip.datasets import DATASETS, DataSplits, load_dataset
from deepzip.errors import ConfigError, DeepZipError
from deepzip.format import apply_checkpoint, read_checkpoint
from deepzip.format.checkpoint import check_checkpoint_name
from deepzip.prune import StepRecord
from deepzip.train import Callback, FitState, resolve_device
from deepzip.zoo import create_model, model_names

# Piped or redirected output has no terminal width; rich would then squeeze the wide per-layer
# tables into 80 columns, so give it room (a terminal's own width is kept). No emoji codes:
# rich would print ``cuda:-1:`` or a file named ``a:+1:b`` with a thumb in place of ``:-1:``.
console = Console(emoji=False)
if not console.is_terminal:
    console = Console(width=200, emoji=False)
err_console = Console(stderr=True, emoji=False)


class _ProgressCallback(Callback):
    """Training progress bar: one task per epoch, loss and validation accuracy shown."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label
        self.task: Any = None

    def on_epoch_start(self, state: FitState) -> None:
        total = state.batches_per_epoch
        self.task = self.progress.add_task(
            f"{self.label} epoch {state.epoch + 1}/{state.epochs}", total=total
        )

    def on_batch_end(self, state: FitState) -> None:
        self.progress.update(
            self.task,
            advance=1,
            description=(
                f"{self.label} epoch {state.epoch + 1}/{state.epochs} loss {state.epoch_loss:.4f}"
            ),
        )

    def on_epoch_end(self, state: FitState) -> None:
        acc = state.metrics.get("val_accuracy")
        suffix = f" val {100 * acc:.2f}%" if acc is not None else ""
        self.progress.update(
            self.task,
            description=(
                f"{self.label} epoch {state.epoch + 1}/{state.epochs} "
                f"loss {state.epoch_loss:.4f}{suffix}"
            ),
        )


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description}", markup=False),  # layer and tensor names as written
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not enabled,
        transient=False,
    )
    with progress:
        try:
            yield progress
        except Exception:
            # a command that fails leaves no stale bar above its error line (Ctrl-C keeps it:
            # it shows how far the work got), nor the blank line that Progress.stop prints
            # after the bars on a non-terminal: stop the display here, and leave it disabled
            progress.live.transient = True
            if not enabled:
                raise
            progress.live.stop()
            progress.disable = True
            raise


def _data(args: argparse.Namespace) -> DataSplits:
    return load_dataset(args.dataset, args.data_dir, val_size=args.val_size, seed=args.seed)


def _device(text: str | None) -> torch.device:
    """``--device``: :func:`deepzip.train.resolve_device` (which refuses ``meta`` and devices
    this PyTorch cannot make tensors on), its error naming the flag."""
    try:
        return resolve_device(text)
    except ConfigError as exc:
        raise ConfigError(f"--device {text}: {exc}") from exc


def _seed(text: str) -> int:
    """``--seed``: an integer in ``[0, 2**31)``, the range every seed it reaches accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**31), got {value}")
    return value


def _index_bits(text: str) -> IndexBitsSpec:
    """``--index-bits``: a gap width in bits, ``auto`` or ``paper``."""
    spec: object = text if text in ("auto", "paper") else None
    if spec is None:
        try:
            spec = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number of bits, 'auto' or 'paper', got {text!r}"
            ) from None
    try:
        return check_index_bits("--index-bits", spec)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_output(
    path: str | os.PathLike[str] | None, flag: str, *, directory: bool = False
) -> None:
    """Refuse an output path that cannot be written, before any long work starts.

    A file output must not be a directory, a directory output must not be a file, its name
    must fit the file system's limit, and the nearest existing directory above it must be a
    writable directory (missing ones are created when the output is written; a dangling
    symbolic link on the way is not a directory); a directory output that exists must itself
    be writable (the files are written in it). The message says whether the file system is
    read-only or the permission is missing.
    """
    if path is None:
        return
    p = Path(path)
    above = p if directory and p.is_dir() else p.parent
    while not os.path.lexists(above) and above != above.parent:
        above = above.parent
    limit = _name_max(above)
    if limit is not None and len(os.fsencode(p.name)) > limit:  # (before stat() fails on it)
        raise ConfigError(
            f"{flag} {path}: the name is {len(os.fsencode(p.name))} bytes long, over the "
            f"{limit} bytes a file name may have there"
        )
    if not directory and p.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give a file name")
    if directory and p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path}: is not a directory")
    if not above.is_dir():
        raise ConfigError(f"{flag} {path}: {above} is not a directory")
    if not os.access(above, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(above) else errno.EACCES
        reason = os_error_reason(OSError(code, os.strerror(code)))
        raise ConfigError(f"{flag} {path}: cannot write in {above}: {reason}")
    if not directory and _sticky_refuses(p):
        raise ConfigError(
            f"{flag} {path}: cannot replace it: another user's file in {above}, whose sticky "
            "bit lets only the file's owner replace it"
        )


def _sticky_refuses(path: Path) -> bool:
    """Whether the sticky bit of ``path``'s directory (as on ``/tmp``) keeps this process from
    replacing the existing ``path``: only the owner of the file or of the directory (or root)
    may rename over it (POSIX; elsewhere False)."""
    if not hasattr(os, "geteuid"):  # (Windows)
        return False
    try:
        folder, entry = os.stat(path.parent), os.lstat(path)
    except OSError:  # no file to replace (or none that can be seen): nothing refuses
        return False
    uid = os.geteuid()
    return bool(folder.st_mode & stat.S_ISVTX) and uid not in (0, folder.st_uid, entry.st_uid)


def _read_only(directory: Path) -> bool:
    """Whether ``directory`` is on a file system mounted read-only (POSIX; elsewhere False)."""
    if not hasattr(os, "statvfs"):  # (Windows)
        return False
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _name_max(directory: Path) -> int | None:
    """The longest file name (in bytes) ``directory``'s file system takes, if it says."""
    if not hasattr(os, "pathconf"):  # (Windows)
        return None
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return None


def _check_safetensors_output(path: str | os.PathLike[str], flag: str) -> None:
    """Refuse a checkpoint output not named ``.safetensors`` before any work (see
    :func:`deepzip.format.checkpoint.check_checkpoint_name`)."""
    check_checkpoint_name(path, f"{flag} {os.fsdecode(path)}")


def _check_distinct(
    path: str | os.PathLike[str], flag: str, other: str | os.PathLike[str] | None, other_flag: str
) -> None:
    """Refuse two files of one command that name the same file (an output beside another
    output, or beside the input it reads): the one written last would replace the other.

    One file under two names (``./a``, a symbolic or a hard link) counts as the same.
    """
    if other is None:
        return
    p, q = Path(path), Path(other)
    same = p.resolve() == q.resolve()
    if not same and os.path.exists(p) and os.path.exists(q):  # (False where not searchable)
        try:
            same = os.path.samefile(p, q)
        except OSError:  # vanished or unreadable meanwhile: the write reports it
            same = False
    if same:
        raise ConfigError(
            f"{other_flag} {os.fsdecode(other)}: the same file as {flag} {os.fsdecode(path)}; "
            "give it another name"
        )


def _os_error(exc: OSError) -> str:
    """``path: reason`` for an ``OSError`` (the destination of a failed rename); a deepzip
    error that is also an ``OSError`` (a run that cannot write in its directory) is its own
    message, which names the path and the cause."""
    if isinstance(exc, DeepZipError):
        return str(exc)
    reason = exc.strerror or str(exc)
    name = exc.filename2 if exc.filename2 is not None else exc.filename
    return reason if name is None else f"{os.fsdecode(name)}: {reason}"


def _load_model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, str]:
    """The zoo model named by ``--model`` or the checkpoint's metadata, with its weights.

    Without ``--dataset`` (``args.dataset`` is ``None``) the data set becomes the one the
    checkpoint records (``deepzip.dataset``, written by ``train``, ``prune`` and
    ``quantize``), else :data:`DEFAULT_DATASET`."""
    ckpt = read_checkpoint(args.checkpoint)
    name: str | None = args.model or ckpt.metadata.get("deepzip.model")
    if name is None:
        raise ConfigError(
            f"{args.checkpoint}: cannot tell the model architecture; pass --model "
            f"({', '.join(model_names())})"
        )
    if getattr(args, "dataset", DEFAULT_DATASET) is None:  # no --dataset (nor a recipe's)
        recorded = ckpt.metadata.get("deepzip.dataset")
        if recorded is not None and recorded not in DATASETS:
            raise ConfigError(
                f"{args.checkpoint}: its data set {recorded!r} is not one deepzip knows "
                f"({', '.join(DATASETS)}); give --dataset"
            )
        args.dataset = recorded or DEFAULT_DATASET  # the data set it was trained on
    model = create_model(name)
    apply_checkpoint(model, ckpt, strict=True, source=args.checkpoint)
    return model.to(device), name


DEFAULT_DATASET = "fashion-mnist"
"""The data set of a command given no ``--dataset`` (nor a recipe or checkpoint that names
one)."""


def _add_data_args(
    p: argparse.ArgumentParser, *, checkpoint: bool = False, recipe: bool = False
) -> None:
    """The data flags. For a command that reads a ``checkpoint`` ``--dataset`` defaults to
    ``None``: :func:`_load_model` then takes the checkpoint's data set; with ``recipe``
    (``deepzip prune``) the ``--recipe``'s data set comes first, when it names one."""
    if checkpoint or recipe:
        first = "the recipe's, else the checkpoint's" if recipe else "the checkpoint's"
        default, text = None, f"data set (default: {first}, else {DEFAULT_DATASET})"
    else:
        default, text = DEFAULT_DATASET, f"data set (default: {DEFAULT_DATASET})"
    p.add_argument("--dataset", default=default, choices=DATASETS, help=text)
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory with the four IDX files (default: auto-discover)",
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="training images held out for validation (default: 5000)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_checkpoint_args(p: argparse.ArgumentParser, *, output_help: str) -> None:
    p.add_argument("checkpoint", help="input checkpoint (.safetensors, .pt, .pth)")
    p.add_argument("-o", "--output", required=True, help=output_help)
    p.add_argument(
        "--model",
        choices=model_names(),
        default=None,
        help="zoo architecture (default: read from the checkpoint)",
    )


def _add_optimizer_args(
    p: argparse.ArgumentParser,
    *,
    weight_decay: float,
    lr: float = 0.02,
    optimizer: str = "sgd",
    batch_size: int = 128,
    unset: bool = False,
) -> None:
    """``--lr``, ``--optimizer``, ``--weight-decay`` and ``--batch-size`` with these defaults.

    With ``unset`` the flags default to ``None`` (so a command can tell whether they were
    given) and the caller applies the defaults, which the help text still shows.
    """

    def default(value: object) -> object:
        return None if unset else value

    p.add_argument(
        "--lr", type=float, default=default(lr), help=f"(dense) learning rate (default: {lr})"
    )
    p.add_argument(
        "--optimizer",
        default=default(optimizer),
        choices=("sgd", "adam", "adamw"),
        help=f"optimizer (default: {optimizer})",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=default(weight_decay),
        help=f"weight decay (default: {weight_decay})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=default(batch_size),
        help=f"mini-batch size (default: {batch_size})",
    )


def _add_glob_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only layers matching this glob (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="never layers matching this glob (repeatable)",
    )


_Num = TypeVar("_Num", int, float)


def _split_glob(text: str, flag: str, forms: str) -> tuple[str, str]:
    """``GLOB=VALUE`` of ``flag`` (``forms`` says what it accepts, for the error)."""
    pattern, sep, value = text.partition("=")
    if not sep or not pattern:
        raise ConfigError(f"{flag} expects {forms}, got {text!r}")
    return pattern, value


def _glob_number(text: str, value: str, kind: type[_Num], flag: str) -> _Num:
    """The value of ``flag GLOB=VALUE`` as ``kind``; range checks stay with the config."""
    try:
        return kind(value)
    except ValueError as exc:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{flag} {text!r}: {value!r} is not {what}") from exc


def _parse_override(text: str) -> LayerOverride:
    pattern, value = _split_glob(text, "--override", "GLOB=SPARSITY or GLOB=skip")
    if value == "skip":
        return LayerOverride(pattern, skip=True)
    return LayerOverride(pattern, sparsity=_glob_number(text, value, float, "--override"))


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"{flag} expects comma-separated numbers, got {text!r}") from exc


# ``deepzip prune``'s flags that a ``--recipe`` replaces default to ``None``, so that one given
# beside the recipe is refused rather than ignored; without a recipe these values apply.
_PRUNE_DEFAULTS: dict[str, Any] = {
    "scope": "layer",
    "schedule": "steps",
    "retrain_epochs": 2,
    "final_epochs": 2,
    "lr": 0.02,
    "optimizer": "sgd",
    "weight_decay": 0.0,
    "batch_size": 128,
    "lr_scale": 0.1,
}


def _schedule(args: argparse.Namespace) -> ScheduleConfig:
    """``--schedule`` with ``--steps`` or ``--n-steps``; the option the kind ignores is refused."""
    kind = _PRUNE_DEFAULTS["schedule"] if args.schedule is None else args.schedule
    if args.steps is not None and kind != "steps":
        raise ConfigError(f"--steps is only used with --schedule steps, got --schedule {kind}")
    if args.n_steps is not None and kind != "agp":
        raise ConfigError(f"--n-steps is only used with --schedule agp, got --schedule {kind}")
    if kind == "steps":
        if args.steps is None:
            return ScheduleConfig(kind="steps")
        return ScheduleConfig(kind="steps", steps=_floats(args.steps, "--steps"))
    if kind == "agp" and args.n_steps is not None:
        return ScheduleConfig(kind="agp", n_steps=args.n_steps)
    return ScheduleConfig(kind=kind)


def _prune_job(args: argparse.Namespace) -> tuple[PruneJob, Recipe | None]:
    """``deepzip prune``'s job, and the recipe its ``--recipe`` gives (``None`` without one;
    its ``model`` and ``dataset`` may be ``None``). The recipe (a file or a built-in one) is
    read once. The job of a recipe with stages merges every recipe-wide rule; with the model
    at hand, ``deepzip.pipeline.recipe_prune_job`` gives the one a run of the recipe prunes
    with (as ``deepzip prune`` does once it has built the model).

    Raises:
        ConfigError: naming the recipe: no such file nor built-in recipe, or a recipe that is
            not valid (a ``model`` or ``dataset`` that is not a non-empty string included, as
            ``deepzip run`` refuses it).
    """
    if args.recipe is not None:
        # a file, or the name of a built-in recipe (an installed deepzip has no recipes/ path)
        if Path(args.recipe).exists():
            data = load_toml(args.recipe)  # its errors name the file already
        elif args.recipe in builtin_recipe_names():
            data = builtin_recipe_data(args.recipe)
        else:
            raise ConfigError(
                f"--recipe {args.recipe}: no such recipe file, nor a built-in recipe "
                f"({', '.join(builtin_recipe_names())})"
            )
        try:
            job = PruneJob.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{args.recipe}: {exc}") from exc
        try:
            recipe = Recipe.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"--recipe {args.recipe}: {exc}") from exc
        return job, recipe
    args = argparse.Namespace(**vars(args))  # the flags not given take their defaults
    for key, value in _PRUNE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sparsity is None and args.quality is None:
        raise ConfigError("give --sparsity, --quality or --recipe")
    prune = PruneConfig(
        sparsity=args.sparsity,
        quality=args.quality,
        scope=args.scope,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        overrides=tuple(_parse_override(o) for o in args.override),
    )
    schedule = _schedule(args)
    retrain = RetrainConfig(
        epochs=args.retrain_epochs,
        final_epochs=args.final_epochs,
        lr=args.lr,
        lr_scale=args.lr_scale,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
    )
    return PruneJob(prune, schedule, retrain), None


def _add_run_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", default=None, choices=DATASETS, help="overrides the recipe's data set"
    )
    p.add_argument(
        "--data-dir", default=None, help="directory with the four IDX files (default: search)"
    )
    p.add_argument("--val-size", type=int, default=5000, help="validation images (default 5000)")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _demo_recipe() -> Recipe:
    """The built-in whole pipeline for LeNet-300-100 (``lenet-300-100-full``)."""
    return Recipe.builtin("lenet-300-100-full")


def _print_step(record: StepRecord) -> None:
    after = record.accuracy_after_retrain
    acc = f", val {100 * after:.2f}%" if after is not None else ""
    err_console.print(
        f"step {record.step + 1}: kept {100 * record.kept_fraction:.2f}% of weights{acc}"
    )
