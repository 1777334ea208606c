"""Data sets: IDX files, MNIST and Fashion-MNIST loading, splitting and fast batching.

Loading never touches the network: the files are looked for in ``$DEEPZIP_DATA``,
``~/.cache/deepzip/<name>`` and Debian's ``/usr/share/datasets/<name>``, and
:func:`download` fetches them only when asked. Tune on the validation split, never on the
test split.
"""

from __future__ import annotations

from deepzip.datasets.idx import read_idx, write_idx
from deepzip.datasets.mnist import (
    DATASETS,
    NORMALIZATION,
    DataSplits,
    ImageDataset,
    TensorLoader,
    UrlOpener,
    download,
    find_data_dir,
    load_dataset,
    load_split,
    train_val_split,
)

__all__ = [
    "DATASETS",
    "NORMALIZATION",
    "DataSplits",
    "ImageDataset",
    "TensorLoader",
    "UrlOpener",
    "download",
    "find_data_dir",
    "load_dataset",
    "load_split",
    "read_idx",
    "train_val_split",
    "write_idx",
]
