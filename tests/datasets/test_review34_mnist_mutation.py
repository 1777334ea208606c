"""MNIST loader, splits, download and batching: properties pinned by mutation testing.

Each test kills mutants of ``deepzip/datasets/mnist.py`` that the other tests let live: the
IDX files are hand-built in ``tmp_path``, nothing touches the network or the real data set.
"""

from __future__ import annotations

import io
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from deepzip.datasets import mnist
from deepzip.datasets.mnist import (
    ImageDataset,
    TensorLoader,
    download,
    find_data_dir,
    load_dataset,
    load_split,
    train_val_split,
)
from deepzip.errors import (
    ConfigError,
    DatasetNotFoundError,
    DownloadError,
    IDXFormatError,
    InvalidTensorError,
)


def _idx(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file by hand: magic ``00 00 code ndim``, big-endian uint32 dims, payload."""
    return bytes((0, 0, code, len(dims))) + struct.pack(f">{len(dims)}I", *dims) + payload


def _images(n: int) -> bytes:
    return _idx(0x08, (n, 2, 2), bytes(range(4 * n)))


def _labels(values: list[int]) -> bytes:
    return _idx(0x08, (len(values),), bytes(values))


def _write_set(directory: Path, n_train: int = 6, n_test: int = 3) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (directory / f"{prefix}-images-idx3-ubyte").write_bytes(_images(n))
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(_labels([i % 10 for i in range(n)]))


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hide every real data location; return an empty directory."""
    monkeypatch.delenv("DEEPZIP_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(mnist, "SYSTEM_DATA_ROOT", tmp_path / "system")
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


# ------------------------------------------------------------------------ find_data_dir

NOT_SET = "  - $DEEPZIP_DATA: not set"


def _not_found(name: str, root: str | Path | None = None) -> list[str]:
    with pytest.raises(DatasetNotFoundError) as info:
        find_data_dir(name, root)
    return str(info.value).splitlines()


def test_not_found_says_deepzip_data_is_unset_only_when_it_was_looked_at(
    no_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert NOT_SET in _not_found("mnist")  # neither root nor $DEEPZIP_DATA
    lines = _not_found("mnist", no_data)  # an explicit root: the variable is not looked at
    assert NOT_SET not in lines
    assert lines[1:3] == [f"  - {no_data}", f"  - {no_data / 'mnist'}"]
    monkeypatch.setenv("DEEPZIP_DATA", str(no_data))  # set: it is searched, not "not set"
    lines = _not_found("mnist")
    assert NOT_SET not in lines
    assert f"  - {no_data}" in lines


def test_an_empty_root_is_the_current_directory_as_path_empty_is(
    no_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # root="" searched nothing ("Searched:" and no line) while Path("") searched "." and
    # "mnist"; the docstring says root and root/<name> are considered
    monkeypatch.chdir(no_data)
    assert _not_found("mnist", Path(""))[1:3] == ["  - .", "  - mnist"]
    assert _not_found("mnist", "")[1:3] == ["  - .", "  - mnist"]
    _write_set(no_data / "mnist")
    assert find_data_dir("mnist", "") == find_data_dir("mnist", Path("")) == Path("mnist")
    monkeypatch.setenv("DEEPZIP_DATA", "")  # an empty variable is unset, not the cwd
    assert NOT_SET in _not_found("mnist")


# ------------------------------------------------------------------------- ImageDataset


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (torch.zeros(3, 2, 2), torch.zeros(3), r"N×C×H×W and labels N, got \(3, 2, 2\) and \(3,\)"),
        (torch.zeros(3, 1, 2, 2), torch.zeros(3, 1), r"got \(3, 1, 2, 2\) and \(3, 1\)"),
        (torch.zeros(3, 1, 2, 2), torch.zeros(2), "3 images but 2 labels"),
    ],
)
def test_image_dataset_refuses_shapes_that_are_not_n_c_h_w_and_n(
    images: torch.Tensor, labels: torch.Tensor, match: str
) -> None:
    with pytest.raises(InvalidTensorError, match=f"^mnist/test: .*{match}"):
        ImageDataset(images, labels, "mnist", "test")


def _ds(n: int = 5) -> ImageDataset:
    return ImageDataset(torch.zeros(n, 1, 1, 1), torch.arange(n), "mnist", "train")


def test_subset_hints_at_nonzero_for_a_mask_only() -> None:
    with pytest.raises(InvalidTensorError) as info:
        _ds().subset(torch.tensor([True, False, True, False, True]))
    assert str(info.value).endswith("got torch.bool (for a mask, pass mask.nonzero().flatten())")
    with pytest.raises(InvalidTensorError) as info:
        _ds().subset(torch.tensor([0.0, 1.0]))
    assert str(info.value).endswith("got torch.float32")


def test_subset_takes_every_index_in_minus_len_to_len() -> None:
    assert _ds().subset([-5, 4, 0]).labels.tolist() == [0, 4, 0]


def test_subset_names_the_index_out_of_range() -> None:
    with pytest.raises(InvalidTensorError, match="sample index 5 out of range for 5 samples"):
        _ds().subset([0, 5])
    with pytest.raises(InvalidTensorError, match="sample index -6 out of range for 5 samples"):
        _ds().subset([-6, 4])


# ---------------------------------------------------------------------------- load_split


def _vanish(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    # the files were all there when the search looked, and one is gone when it is read
    monkeypatch.setattr(mnist, "find_data_dir", lambda name, root=None: directory)


@pytest.mark.parametrize("gone", ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_a_file_gone_before_it_is_read_is_dataset_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gone: str
) -> None:
    _write_set(tmp_path)
    (tmp_path / gone).unlink()
    _vanish(monkeypatch, tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        load_split("mnist", "test", tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: missing t10k-images-idx3-ubyte or t10k-labels-idx1-ubyte"
    )


@pytest.mark.parametrize(
    ("labels", "got"),
    [
        (_idx(0x0B, (3,), struct.pack(">3h", 0, 1, 2)), "int16 (3,)"),
        (_idx(0x08, (3, 1), bytes([0, 1, 2])), "uint8 (3, 1)"),
    ],
    ids=["int16", "two-dimensional"],
)
def test_labels_that_are_not_n_uint8_are_an_idx_error_naming_the_file(
    tmp_path: Path, labels: bytes, got: str
) -> None:
    _write_set(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(labels)
    with pytest.raises(IDXFormatError) as info:
        load_split("mnist", "test", tmp_path)
    assert str(info.value) == f"{path}: expected N uint8 labels, got {got}"


def test_an_empty_split_loads(tmp_path: Path) -> None:
    _write_set(tmp_path, n_test=0)
    test = load_split("mnist", "test", tmp_path)
    assert test.images.shape == (0, 1, 2, 2)
    assert test.labels.shape == (0,)


# ---------------------------------------------------------------------- validation split


def test_train_val_split_takes_val_sizes_from_one_to_len_minus_one() -> None:
    for val_size in (1, 9):
        train, val = train_val_split(_ds(10), val_size)
        assert (len(train), len(val)) == (10 - val_size, val_size)


def test_train_val_split_refuses_a_boolean_val_size() -> None:
    with pytest.raises(ConfigError, match=r"val_size must be an integer in \[1, 9\], got True"):
        train_val_split(_ds(10), True)


@pytest.mark.parametrize("val_size", [2.5, 2.0, "2"])
def test_load_dataset_refuses_a_val_size_that_is_not_an_integer(
    tmp_path: Path, val_size: object
) -> None:
    _write_set(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist", tmp_path, val_size=val_size)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"val_size must be in [0, 5] (0: no validation split), got {val_size!r}"
    )


# ------------------------------------------------------------------------------ download


def test_download_takes_a_timeout_below_one_second(tmp_path: Path) -> None:
    timeouts: list[float] = []

    def opener(url: str, *, timeout: float) -> io.BytesIO:
        timeouts.append(timeout)
        raise urllib.error.URLError("offline")

    with pytest.raises(DownloadError, match="offline"):
        download("mnist", tmp_path, opener=opener, timeout=0.5)
    assert timeouts == [0.5]


def test_download_refuses_a_timeout_that_is_not_a_number(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="timeout must be a finite number of seconds > 0, got '5'"
    ):
        download("mnist", tmp_path, timeout="5")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- TensorLoader


def _reference_order(seed_u64: int, epoch: int, n: int) -> list[int]:
    # the documented derivation: numpy's SeedSequence of (seed mod 2**64, epoch) gives one
    # 64-bit word, which seeds the torch generator of that epoch's permutation
    word = np.random.SeedSequence([seed_u64, epoch]).generate_state(1, np.uint64)[0]
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(word))).tolist()


@pytest.mark.parametrize(("seed", "seed_u64"), [(7, 7), (-1, 2**64 - 1), (2**63, 2**63)])
def test_loader_epochs_follow_the_documented_seeding(seed: int, seed_u64: int) -> None:
    labels = torch.arange(20)
    loader = TensorLoader(labels.float(), labels, 20, shuffle=True, seed=seed)
    for epoch in range(3):
        assert next(iter(loader))[1].tolist() == _reference_order(seed_u64, epoch, 20)


def test_loader_seeds_are_taken_mod_two_to_the_64() -> None:
    labels = torch.arange(20)

    def first(seed: int) -> list[int]:
        loader = TensorLoader(labels.float(), labels, 20, shuffle=True, seed=seed)
        return next(iter(loader))[1].tolist()

    assert first(-1) == first(2**64 - 1)
    assert first(0) == first(2**64)
    assert first(0) != first(2**63)


def test_loader_takes_batch_size_one() -> None:
    labels = torch.arange(3)
    loader = TensorLoader(labels.float(), labels, 1)
    assert len(loader) == 3
    assert [y.tolist() for _, y in loader] == [[0], [1], [2]]


@pytest.mark.parametrize("batch_size", [True, 2.0, "2"])
def test_loader_refuses_a_batch_size_that_is_not_an_integer(batch_size: object) -> None:
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1, got"):
        TensorLoader(torch.zeros(3), torch.zeros(3), batch_size)  # type: ignore[arg-type]


def test_loader_refuses_a_boolean_seed() -> None:
    with pytest.raises(ConfigError, match="seed must be an integer, got True"):
        TensorLoader(torch.zeros(3), torch.zeros(3), 2, seed=True)


def test_loader_refuses_images_and_labels_of_different_lengths() -> None:
    with pytest.raises(InvalidTensorError, match=r"^3 images but 2 labels$"):
        TensorLoader(torch.zeros(3, 1), torch.zeros(2), 2)
