"""MNIST/Fashion-MNIST locating, loading, splitting, downloading and batching, offline."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import urllib.error
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from deepzip.datasets import mnist
from deepzip.datasets.idx import write_idx
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
)


def _make_dataset(
    directory: Path, n_train: int = 40, n_test: int = 12, *, compress: bool = False
) -> None:
    """Write four synthetic IDX files with 4×4 images."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images, gzip=compress)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels, gzip=compress)


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hide every real data location; return an empty directory usable as a root."""
    monkeypatch.delenv("DEEPZIP_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(mnist, "SYSTEM_DATA_ROOT", tmp_path / "system")
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_not_found_message(no_data: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        find_data_dir("fashion-mnist")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "DEEPZIP_DATA" in message
    assert "deepzip download fashion-mnist --root DIR" in message
    assert str(no_data.parent / "home" / ".cache" / "deepzip" / "fashion-mnist") in message
    assert str(no_data.parent / "system" / "fashion-mnist") in message


def test_not_found_mnist_has_no_apt_line(no_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPZIP_DATA", str(no_data))
    with pytest.raises(DatasetNotFoundError) as info:
        find_data_dir("mnist")
    message = str(info.value)
    assert "apt-get" not in message
    assert str(no_data) in message
    assert "export DEEPZIP_DATA=DIR" in message


def test_explicit_root_missing_files(no_data: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(no_data))):
        find_data_dir("mnist", no_data)


def test_unknown_name() -> None:
    with pytest.raises(ConfigError, match="fashion-mnist"):
        find_data_dir("cifar10")


def test_search_order(no_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system = tmp_path / "system" / "fashion-mnist"
    _make_dataset(system, compress=True)
    assert find_data_dir("fashion-mnist") == system
    cache = tmp_path / "home" / ".cache" / "deepzip" / "fashion-mnist"
    _make_dataset(cache)
    assert find_data_dir("fashion-mnist") == cache
    env = tmp_path / "env"
    _make_dataset(env / "fashion-mnist")
    monkeypatch.setenv("DEEPZIP_DATA", str(env))
    assert find_data_dir("fashion-mnist") == env / "fashion-mnist"
    _make_dataset(env)
    assert find_data_dir("fashion-mnist") == env


@pytest.mark.parametrize("compress", [False, True])
def test_load_split_normalised(tmp_path: Path, compress: bool) -> None:
    _make_dataset(tmp_path, compress=compress)
    raw = load_split("mnist", "train", tmp_path, normalize=False)
    norm = load_split("mnist", "train", tmp_path)
    assert raw.images.shape == (40, 1, 4, 4)
    assert raw.images.dtype == torch.float32
    assert norm.labels.dtype == torch.int64
    assert len(norm) == 40
    assert (norm.name, norm.split) == ("mnist", "train")
    pixels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (40, 4, 4), np.uint8))
    torch.testing.assert_close(raw.images[:, 0], pixels.float() / 255)
    torch.testing.assert_close(norm.images, (raw.images - 0.1307) / 0.3081)


def test_normalisation_constants_by_hand(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.full((1, 1, 2), [0, 255], np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(1, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 1, 2), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(1, np.uint8))
    images = load_split("fashion-mnist", "train", tmp_path).images.flatten().tolist()
    assert images == pytest.approx([-0.2860 / 0.3530, (1 - 0.2860) / 0.3530])


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((3, 4), np.uint8), np.zeros(3, np.uint8), "N×H×W"),
        (np.zeros((3, 2, 2), np.uint8), np.zeros(4, np.uint8), "3 images but 4 labels"),
        (np.zeros((3, 2, 2), np.uint8), np.array([0, 10, 1], np.uint8), "label 10"),
        (np.zeros((3, 2, 2), np.float32), np.zeros(3, np.uint8), "float32"),
    ],
)
def test_inconsistent_files(
    tmp_path: Path, images: np.ndarray, labels: np.ndarray, match: str
) -> None:
    _make_dataset(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(IDXFormatError, match=match) as info:
        load_split("mnist", "test", tmp_path)
    assert "t10k-" in str(info.value)


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid"):
        load_split("mnist", "valid", tmp_path)  # type: ignore[arg-type]


def test_train_val_split_deterministic_and_disjoint(tmp_path: Path) -> None:
    _make_dataset(tmp_path, n_train=50)
    ds = load_split("mnist", "train", tmp_path)
    ds = ImageDataset(ds.images, torch.arange(50), ds.name, ds.split)
    train, val = train_val_split(ds, val_size=10, seed=3)
    again_train, again_val = train_val_split(ds, val_size=10, seed=3)
    _, other_val = train_val_split(ds, val_size=10, seed=4)
    assert (len(train), len(val)) == (40, 10)
    assert (train.split, val.split) == ("train", "val")
    assert torch.equal(val.labels, again_val.labels)
    assert torch.equal(train.labels, again_train.labels)
    assert not torch.equal(val.labels, other_val.labels)
    ids = torch.cat([train.labels, val.labels]).sort().values
    assert torch.equal(ids, torch.arange(50))
    torch.testing.assert_close(val.images, ds.images[val.labels])


@pytest.mark.parametrize("val_size", [0, -1, 50])
def test_train_val_split_bad_size(tmp_path: Path, val_size: int) -> None:
    _make_dataset(tmp_path, n_train=50)
    with pytest.raises(ConfigError, match="val_size"):
        train_val_split(load_split("mnist", "train", tmp_path), val_size=val_size)


def test_load_dataset(tmp_path: Path) -> None:
    _make_dataset(tmp_path / "mnist", n_train=40, n_test=12)
    splits = load_dataset("mnist", tmp_path, val_size=8, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 8, 12)
    assert splits.test.split == "test"
    no_val = load_dataset("mnist", tmp_path, val_size=0)
    assert (len(no_val.train), len(no_val.val)) == (40, 0)
    assert no_val.val.images.shape == (0, 1, 4, 4)


@pytest.mark.parametrize("val_size", [-1, 40])
def test_load_dataset_names_the_val_sizes_it_accepts(tmp_path: Path, val_size: int) -> None:
    # "val_size must be in [1, 39]" although 0 (no validation split) is accepted
    _make_dataset(tmp_path / "mnist", n_train=40, n_test=12)
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist", tmp_path, val_size=val_size)
    assert str(info.value) == (
        f"val_size must be in [0, 39] (0: no validation split), got {val_size}"
    )
    with pytest.raises(ConfigError, match=r"val_size must be in \[0, 39\]"):
        load_dataset("mnist", tmp_path, val_size=True)


def _payloads() -> dict[str, bytes]:
    return {
        name: gzip.compress(name.encode() * 1000, mtime=0)
        for name in mnist.CHECKSUMS["fashion-mnist"]
    }


def _fake_opener(payloads: dict[str, bytes], calls: list[str]) -> Callable[..., io.BytesIO]:
    def opener(url: str, *, timeout: float) -> io.BytesIO:
        assert timeout > 0
        calls.append(url)
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])

    return opener


def test_download_with_fake_opener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = _payloads()
    sums = {name: hashlib.md5(data).hexdigest() for name, data in payloads.items()}
    monkeypatch.setitem(mnist.CHECKSUMS, "fashion-mnist", sums)
    calls: list[str] = []
    directory = download("fashion-mnist", tmp_path, opener=_fake_opener(payloads, calls))
    assert directory == tmp_path / "fashion-mnist"
    assert sorted(p.name for p in directory.iterdir()) == sorted(payloads)
    for name, data in payloads.items():
        assert (directory / name).read_bytes() == data
    assert calls == [mnist.MIRRORS["fashion-mnist"] + name for name in payloads]
    download("fashion-mnist", tmp_path, opener=_fake_opener(payloads, calls))
    assert len(calls) == 4


def test_download_network_error_leaves_nothing(tmp_path: Path) -> None:
    def opener(url: str, *, timeout: float) -> io.BytesIO:
        raise urllib.error.URLError("no network")

    with pytest.raises(DownloadError, match="no network") as info:
        download("mnist", tmp_path / "new" / "root", opener=opener)
    message = str(info.value)
    assert mnist.MIRRORS["mnist"] in message
    assert "DEEPZIP_DATA" in message
    assert "--data-dir DIR" in message
    assert "\n" not in message
    # the directories it made are gone again (an empty mnist/ was left behind)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match="no network"):
        download("mnist", tmp_path, opener=opener)
    assert [p.name for p in (tmp_path / "mnist").iterdir()] == ["notes.txt"]


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download("fashion-mnist", tmp_path, opener=_fake_opener(_payloads(), []))
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert not (tmp_path / "fashion-mnist").exists()


def test_loader_covers_every_sample_once() -> None:
    images, labels = torch.arange(23.0).reshape(23, 1), torch.arange(23)
    loader = TensorLoader(images, labels, 5, shuffle=True, seed=7)
    assert (len(loader), loader.dataset_size) == (5, 23)
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
        seen = torch.cat([y for _, y in batches])
        assert torch.equal(seen.sort().values, labels)
        assert all(torch.equal(x[:, 0].long(), y) for x, y in batches)
        epochs.append(seen)
    assert not torch.equal(epochs[0], epochs[1])
    replay = TensorLoader(images, labels, 5, shuffle=True, seed=7)
    assert [torch.equal(torch.cat([y for _, y in replay]), e) for e in epochs] == [True, True]


def test_nearby_seeds_share_no_epoch_order() -> None:
    # seed s + 1 once replayed seed s's orders one epoch late (epoch e used seed + e), so the
    # "independent" seeds of a benchmark and the steps of iterative pruning shared their data
    labels = torch.arange(50)

    def orders(seed: int) -> list[tuple[int, ...]]:
        loader = TensorLoader(labels.float(), labels, 50, shuffle=True, seed=seed)
        return [tuple(next(iter(loader))[1].tolist()) for _ in range(6)]

    seen = [order for seed in range(5) for order in orders(seed)]
    assert len(set(seen)) == len(seen) == 30


def test_loader_order_and_drop_last() -> None:
    labels = torch.arange(10)
    loader = TensorLoader(labels.float(), labels, 4, drop_last=True)
    assert len(loader) == 2
    assert [y.tolist() for _, y in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("batch_size", [0, -3])
def test_loader_bad_batch_size(batch_size: int) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        TensorLoader(torch.zeros(3), torch.zeros(3), batch_size)
