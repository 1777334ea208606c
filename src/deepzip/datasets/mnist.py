"""MNIST and Fashion-MNIST: locating, loading, splitting, downloading and batching.

Both data sets ship as the same four IDX files (raw or ``.gz``). Nothing here touches the
network except :func:`download`; loading only looks in local directories, in the order
documented in :func:`find_data_dir`.

Model selection (thresholds, sparsity levels, epochs) must be done on the validation split
made by :func:`train_val_split` / :func:`load_dataset`, never on the test split, which is for
the final report only.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from deepzip._atomic import atomic_open, os_error_reason
from deepzip.datasets.idx import read_idx
from deepzip.errors import (
    ConfigError,
    DatasetNotFoundError,
    DownloadError,
    IDXFormatError,
    InvalidTensorError,
)

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "FILES",
    "MIRRORS",
    "NORMALIZATION",
    "SYSTEM_DATA_ROOT",
    "DataSplits",
    "ImageDataset",
    "Split",
    "TensorLoader",
    "UrlOpener",
    "download",
    "find_data_dir",
    "load_dataset",
    "load_split",
    "train_val_split",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "test"]

DATASETS = ("mnist", "fashion-mnist")
"""Names of the supported data sets."""

NORMALIZATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}
"""Mean and standard deviation of the training pixels scaled to [0, 1]."""

FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Split -> (images file, labels file); each may also be present with a ``.gz`` suffix."""

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
"""Where Debian's data set packages install (``dataset-fashion-mnist``: ``fashion-mnist/``)."""

MIRRORS: dict[str, str] = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}
"""Base URLs of the official downloads."""

CHECKSUMS: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}
"""Data set -> official file name -> MD5 of the ``.gz`` file."""

_NUM_CLASSES = 10
_CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class UrlOpener(Protocol):
    """A callable like :func:`urllib.request.urlopen`: ``opener(url, timeout=...)``."""

    def __call__(self, url: str, /, *, timeout: float) -> AbstractContextManager[_Readable]:
        """Open ``url`` for reading, giving up after ``timeout`` seconds."""
        ...


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def _all_files() -> tuple[str, ...]:
    return tuple(f for pair in FILES.values() for f in pair)


def _locate(directory: Path, base: str) -> Path | None:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _holds(directory: Path) -> bool:
    return all(_locate(directory, base) is not None for base in _all_files())


def _default_cache() -> Path:
    return Path.home() / ".cache" / "deepzip"


def _apt_hint(name: str) -> list[str]:
    if name == "fashion-mnist":
        return ["sudo apt-get install dataset-fashion-mnist  (Debian/Ubuntu)"]
    return []


_FILES_HINT = (
    "put the four IDX files in a directory DIR and pass it as the data directory "
    "(root=DIR; deepzip --data-dir DIR) or export DEEPZIP_DATA=DIR"
)


def find_data_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Find the directory holding the four IDX files of a data set.

    With ``root``, only ``root`` and ``root/<name>`` are considered. Otherwise the search
    order is: ``$DEEPZIP_DATA`` and ``$DEEPZIP_DATA/<name>``, ``~/.cache/deepzip/<name>``,
    then the Debian package directory ``/usr/share/datasets/<name>`` (see
    :data:`SYSTEM_DATA_ROOT`). A directory qualifies when it holds all four files of
    :data:`FILES`, each raw or ``.gz``.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        root: Directory to use instead of searching.

    Returns:
        The directory that holds the files.

    Raises:
        ConfigError: ``name`` is not a known data set.
        DatasetNotFoundError: No searched directory holds the files; the message lists the
            places searched and the ways to get the data.
    """
    _check_name(name)
    env = os.environ.get("DEEPZIP_DATA")
    given = root if root is not None else (env or None)  # an empty $DEEPZIP_DATA is unset
    base = Path(given).expanduser() if given is not None else None  # root="" is Path("")
    candidates = [base, base / name] if base is not None else []
    if root is None:
        candidates += [_default_cache() / name, SYSTEM_DATA_ROOT / name]
    refused: dict[Path, str] = {}
    for directory in candidates:
        try:
            found = _holds(directory)
        except OSError as exc:  # one it may not look in (another user's home): search on
            refused[directory] = os_error_reason(exc)
            continue
        if found:
            logger.debug("%s data found in %s", name, directory)
            return directory
    files = ", ".join(_all_files())
    lines = [f"{name} data not found: no directory holds {files} (raw or .gz). Searched:"]
    if root is None and not env:
        lines.append("  - $DEEPZIP_DATA: not set")
    lines += [
        f"  - {directory}"
        + (f" (cannot look in it: {refused[directory]})" if directory in refused else "")
        for directory in candidates
    ]
    lines.append("To get the data, do one of:")
    hints = [
        *_apt_hint(name),
        f"deepzip download {name} --root DIR  (needs a network), then export DEEPZIP_DATA=DIR",
        _FILES_HINT,
    ]
    lines += [f"  - {hint}" for hint in hints]
    raise DatasetNotFoundError("\n".join(lines))


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """An in-memory image classification split.

    Attributes:
        images: ``float32`` tensor of shape ``N×1×H×W`` (normalised unless asked otherwise).
        labels: ``int64`` tensor of shape ``N`` with class indices.
        name: Data set name, such as ``"fashion-mnist"``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Raises:
        InvalidTensorError: ``images`` or ``labels`` is not a tensor, or their shapes are
            not ``N×C×H×W`` and ``N``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str

    def __post_init__(self) -> None:
        for what, t in (("images", self.images), ("labels", self.labels)):
            if not isinstance(t, torch.Tensor):
                raise InvalidTensorError(
                    f"{self.name}/{self.split}: {what} must be a tensor, got {type(t).__name__}"
                )
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise InvalidTensorError(
                f"{self.name}/{self.split}: images must be N×C×H×W and labels N, got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise InvalidTensorError(
                f"{self.name}/{self.split}: {self.images.shape[0]} images but "
                f"{self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.labels.shape[0])

    def subset(
        self, indices: torch.Tensor | Sequence[int], *, split: str | None = None
    ) -> ImageDataset:
        """Select samples by index.

        Args:
            indices: Sample indices, in the order wanted (integers in ``[-len, len)``).
            split: Split name of the result; defaults to this split's name.

        Returns:
            A new data set holding copies of the selected samples.

        Raises:
            InvalidTensorError: ``indices`` are not integers (a boolean mask or floats, which
                would select other samples) or one is out of range.
        """
        index = torch.as_tensor(indices)
        where = f"{self.name}/{self.split}"
        if index.numel() and (index.dtype == torch.bool or index.is_floating_point()):
            mask = index.dtype == torch.bool
            hint = " (for a mask, pass mask.nonzero().flatten())" if mask else ""
            raise InvalidTensorError(
                f"{where}: subset takes integer sample indices, got {index.dtype}{hint}"
            )
        index = index.to(torch.long)
        if index.numel() and not -len(self) <= int(index.min()) <= int(index.max()) < len(self):
            bad = int(index.max()) if int(index.max()) >= len(self) else int(index.min())
            raise InvalidTensorError(
                f"{where}: sample index {bad} out of range for {len(self)} samples"
            )
        return ImageDataset(self.images[index], self.labels[index], self.name, split or self.split)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train, validation and test splits of one data set.

    Attributes:
        train: Training samples (the official training set less the validation samples).
        val: Validation samples, drawn from the official training set; empty if none.
        test: The official test set; use it only for the final report.
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset


def _read_split(split: str, directory: Path) -> tuple[NDArray[np.generic], NDArray[np.generic]]:
    image_base, label_base = FILES[split]
    image_path, label_path = _locate(directory, image_base), _locate(directory, label_base)
    if image_path is None or label_path is None:
        raise DatasetNotFoundError(f"{directory}: missing {image_base} or {label_base}")
    images, labels = read_idx(image_path), read_idx(label_path)
    files = f"{image_path} and {label_path}"
    if images.dtype != np.uint8 or images.ndim != 3:
        raise IDXFormatError(
            f"{image_path}: expected N×H×W uint8 images, got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXFormatError(
            f"{label_path}: expected N uint8 labels, got {labels.dtype} {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(f"{files}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= _NUM_CLASSES:
        raise IDXFormatError(
            f"{label_path}: label {int(labels.max())} out of range 0..{_NUM_CLASSES - 1}"
        )
    return images, labels


def load_split(
    name: str,
    split: Split,
    root: str | os.PathLike[str] | None = None,
    *,
    normalize: bool = True,
) -> ImageDataset:
    """Load the official train or test split.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        split: ``"train"`` or ``"test"``.
        root: Data directory; searched for with :func:`find_data_dir` when omitted.
        normalize: Standardise pixels with :data:`NORMALIZATION`; otherwise scale to [0, 1].

    Returns:
        The split, images as ``float32`` ``N×1×H×W`` and labels as ``int64``.

    Raises:
        ConfigError: Unknown data set or split.
        DatasetNotFoundError: The files are not found.
        IDXFormatError: A file is malformed or the images and labels do not match.
    """
    _check_name(name)
    if split not in FILES:
        raise ConfigError(f"unknown split {split!r}; known: {', '.join(FILES)}")
    images, labels = _read_split(split, find_data_dir(name, root))
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    if normalize:
        mean, std = NORMALIZATION[name]
        x.sub_(mean).div_(std)
    return ImageDataset(x, torch.from_numpy(labels).to(torch.int64), name, split)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise ConfigError(f"seed must be an integer from -2**63 to 2**64 - 1, got {seed!r}")


def train_val_split(
    ds: ImageDataset, val_size: int = 5000, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Split a data set into training and validation parts by a seeded random permutation.

    Choose thresholds and other settings on the validation part, never on the test set.
    Both parts keep the original sample order; the result depends only on ``len(ds)``,
    ``val_size`` and ``seed``.

    Args:
        ds: The data set to split, normally the official training split.
        val_size: Number of validation samples, an integer in ``[1, len(ds) - 1]``.
        seed: Seed of the permutation, an integer from ``-2**63`` to ``2**64 - 1``.

    Returns:
        ``(train, val)``, with split names ``"train"`` and ``"val"``.

    Raises:
        ConfigError: ``val_size`` or ``seed`` is not an integer or is out of range.
    """
    if (
        isinstance(val_size, bool)
        or not isinstance(val_size, int)
        or not 1 <= val_size <= len(ds) - 1
    ):
        raise ConfigError(f"val_size must be an integer in [1, {len(ds) - 1}], got {val_size!r}")
    _check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds), generator=generator)
    val_index = perm[:val_size].sort().values
    train_index = perm[val_size:].sort().values
    return ds.subset(train_index, split="train"), ds.subset(val_index, split="val")


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    normalize: bool = True,
) -> DataSplits:
    """Load train, validation and test splits.

    The validation split is carved out of the official training set with
    :func:`train_val_split`; tune on it, and keep the test split for the final report.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        root: Data directory; searched for with :func:`find_data_dir` when omitted.
        val_size: Validation samples, in ``[0, len(train) - 1]``; 0 gives an empty
            validation split.
        seed: Seed of the train/validation permutation (see :func:`train_val_split`).
        normalize: Standardise pixels with :data:`NORMALIZATION`.

    Returns:
        The three splits.

    Raises:
        ConfigError: Unknown data set, ``val_size`` out of range, or a bad ``seed``.
        DatasetNotFoundError: The files are not found.
        IDXFormatError: A file is malformed.
    """
    _check_seed(seed)  # also when val_size is 0 and the seed goes unused
    directory = find_data_dir(name, root)
    train = load_split(name, "train", directory, normalize=normalize)
    test = load_split(name, "test", directory, normalize=normalize)
    # checked here, not only by train_val_split: that one needs at least one sample
    if (
        isinstance(val_size, bool)
        or not isinstance(val_size, int)
        or not 0 <= val_size < len(train)
    ):
        raise ConfigError(
            f"val_size must be in [0, {len(train) - 1}] (0: no validation split), got {val_size!r}"
        )
    if val_size == 0:
        return DataSplits(train, train.subset([], split="val"), test)
    train, val = train_val_split(train, val_size, seed)
    return DataSplits(train, val, test)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, md5: str, opener: UrlOpener, timeout: float, hint: str) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    with atomic_open(dest) as out:
        try:
            with opener(url, timeout=timeout) as response:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"cannot download {url}: {exc}; {hint}") from exc
        if digest.hexdigest() != md5:
            raise DownloadError(
                f"checksum mismatch for {url}: MD5 {digest.hexdigest()}, expected {md5}; {hint}"
            )


def download(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    opener: UrlOpener | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the four ``.gz`` files of a data set from the official mirror.

    Files go to ``root/<name>/``, each written atomically and kept only if its MD5 matches
    :data:`CHECKSUMS`. Files already present with the right checksum are not fetched again.
    Export ``DEEPZIP_DATA=root`` (or use the default ``root``) for the loaders to find them.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        root: Parent directory; defaults to ``~/.cache/deepzip``, which is searched by default.
        opener: Replacement for :func:`urllib.request.urlopen`, called as
            ``opener(url, timeout=timeout)``.
        timeout: Seconds to wait for the server on each request.

    Returns:
        The directory holding the files.

    Raises:
        ConfigError: Unknown data set, or ``timeout`` not a finite number > 0.
        DownloadError: A request failed or a file's checksum does not match; no partial
            file is left behind.
    """
    _check_name(name)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise ConfigError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    directory = (Path(root).expanduser() if root is not None else _default_cache()) / name
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    open_url: UrlOpener = opener if opener is not None else urllib.request.urlopen
    hint = "offline alternatives: " + "; or ".join([*_apt_hint(name), _FILES_HINT])
    try:
        for file_name, md5 in CHECKSUMS[name].items():
            dest = directory / file_name
            if dest.is_file() and _md5(dest) == md5:
                logger.info("%s already present", dest)
                continue
            url = MIRRORS[name] + file_name
            logger.info("downloading %s", url)
            _fetch(url, dest, md5, open_url, timeout, hint)
    except BaseException:
        for d in created:  # innermost first: the directories made here, while still empty
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return directory


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed for one epoch's shuffle, mixed from ``(seed, epoch)``."""
    state = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, np.uint64)
    return int(state[0])


class TensorLoader:
    """A batch iterator over in-memory tensors, much faster than a ``DataLoader``.

    Each epoch indexes the tensors with one permutation (when shuffling) and then yields
    slices. Every call of ``iter()`` starts a new epoch; epoch ``e`` is shuffled with a
    generator seeded from the pair ``(seed, e)`` (numpy's ``SeedSequence``), so runs are
    reproducible and nearby seeds share no epoch's order (with ``seed + e``, seed ``s + 1``
    replayed seed ``s``'s orders one epoch later).

    Args:
        images: Inputs, first dimension indexing the samples.
        labels: Targets, same first dimension as ``images``.
        batch_size: Samples per batch.
        shuffle: Shuffle the samples at the start of every epoch.
        seed: Base seed of the shuffling, an integer.
        drop_last: Drop the last batch when it is smaller than ``batch_size``.

    Raises:
        ConfigError: ``batch_size < 1``, or a ``seed`` that is not an integer.
        InvalidTensorError: ``images`` or ``labels`` is not a tensor of at least one
            dimension, or they differ in length.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        for what, t in (("images", images), ("labels", labels)):
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                got = "a 0-d tensor" if isinstance(t, torch.Tensor) else type(t).__name__
                raise InvalidTensorError(
                    f"{what} must be a tensor whose first dimension indexes the samples, got {got}"
                )
        if images.shape[0] != labels.shape[0]:
            raise InvalidTensorError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self._epoch = 0

    @property
    def dataset_size(self) -> int:
        """Number of samples."""
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.dataset_size // self.batch_size
        return math.ceil(self.dataset_size / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Start a new epoch.

        Returns:
            An iterator of ``(images, labels)`` batches.
        """
        images, labels = self.images, self.labels
        if self.shuffle:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self._epoch))
            perm = torch.randperm(self.dataset_size, generator=generator)
            images, labels = images[perm.to(images.device)], labels[perm.to(labels.device)]
        self._epoch += 1
        return self._batches(images, labels)

    def _batches(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield images[start : start + self.batch_size], labels[start : start + self.batch_size]
