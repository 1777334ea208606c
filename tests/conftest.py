"""Shared fixtures: small models and seeded synthetic data (no network, no real data set).

Property-based tests draw the same examples on every run (Hypothesis profile
``deterministic``: derandomized, no example database, no per-example deadline), so a run's
result depends on the code alone, not on how busy the machine is. ``pytest
--hypothesis-profile explore`` draws fresh examples, for hunting bugs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from torch import nn

from deepzip.datasets import write_idx

# deadline=None: Hypothesis's default fails an example that takes over 200 ms of wall time
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", derandomize=False, database=None, deadline=None)
settings.load_profile("deterministic")


class ResidualCNN(nn.Module):
    """A small residual CNN with BatchNorm (stem, one block with a projection, head)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.proj = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = torch.relu(y + self.proj(x))
        return self.head(x.mean(dim=(2, 3)))


class TinyTransformer(nn.Module):
    """Embedding → 2-layer TransformerEncoder → LayerNorm → Linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.encoder(self.embed(x))).mean(dim=1))


@pytest.fixture
def resnet() -> ResidualCNN:
    torch.manual_seed(0)
    return ResidualCNN()


@pytest.fixture
def transformer() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer()


@pytest.fixture
def weightless_mlp() -> nn.Sequential:
    """Linear(20, 30) → ReLU → Linear(30, 5), pruned to 20%; layer 0 encoded with Weightless
    (2-bit clusters, t = 4), layer 2 left pruned in float."""
    from deepzip import PruneConfig, prune_
    from deepzip.config import QuantizeConfig, WeightlessConfig
    from deepzip.weightless import weightless_

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    prune_(net, PruneConfig(sparsity=0.8))
    weightless_(net, WeightlessConfig(cell_bits=4, include=("0",)), quantize=QuantizeConfig(bits=2))
    return net


@pytest.fixture
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 4))


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded 4-class Gaussian-blob problem in 20 dimensions (1024 samples)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 20, generator=g) * 3
    y = torch.randint(0, 4, (1024,), generator=g)
    x = centers[y] + torch.randn(1024, 20, generator=g)
    return x, y


@pytest.fixture
def umask() -> Iterator[None]:
    """The process umask set to 0o022 for the test, and restored after it (the file-mode
    tests depend on it, and set it themselves)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="session")
def tiny_idx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of random IDX files (300 training, 100 test images of 28×28, 10 labels) in
    the layout of MNIST and Fashion-MNIST: what `deepzip run --data-dir` reads."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
        write_idx(
            root / f"{prefix}-images-idx3-ubyte",
            rng.integers(0, 255, (n, 28, 28)).astype(np.uint8),
        )
    return root


@pytest.fixture
def quantize_run(tiny_idx: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """``deepzip run`` arguments for a quantize-and-encode recipe of lenet-300-100 on
    ``tiny_idx``, on CPU without progress; and its run directory (not created)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'model = "lenet-300-100"\n[[stages]]\ntype = "quantize"\nbits = 4\n'
        '[[stages]]\ntype = "encode"\n'
    )
    run_dir = tmp_path / "run"
    argv = ["run", str(recipe), "--run-dir", str(run_dir), "--data-dir", str(tiny_idx)]
    argv += ["--val-size", "50", "--no-progress", "--device", "cpu"]
    return argv, run_dir
