"""A small residual CNN with BatchNorm for 28×28 grayscale images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from deepzip.errors import ConfigError

__all__ = ["BasicBlock", "TinyResNet"]


def _check_sizes(sizes: Mapping[str, object]) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers with a residual connection (He et al. 2016).

    The shortcut is the identity when the shape is kept, else a 1×1 convolution with
    BatchNorm (``shortcut``, an ``nn.Sequential``); it is ``None`` for the identity.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first convolution (2 halves the resolution).

    Raises:
        ConfigError: a size or stride that is not an integer >= 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        _check_sizes({"in_channels": in_channels, "out_channels": out_channels, "stride": stride})
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + identity)


class TinyResNet(nn.Module):
    """A ResNet for small images: stem, stages of basic blocks, global average pool, ``fc``.

    The stem (``conv``, ``bn``) is a 3×3 convolution to ``width`` channels. Stage ``i``
    (``stages[i]``, an ``nn.Sequential`` of :class:`BasicBlock`) has ``width * 2**i``
    channels; every stage after the first halves the resolution in its first block. With the
    defaults a 28×28 input is processed at 28, 14 and 7 pixels with 16, 32 and 64 channels.

    Args:
        num_classes: outputs of ``fc``.
        in_channels: channels of the input images.
        width: channels of the stem and the first stage.
        blocks: number of blocks in each stage (at least one stage).

    Raises:
        ConfigError: a size that is not an integer >= 1, or ``blocks`` that is not a
            non-empty sequence of them.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
            raise ConfigError(f"blocks must be a sequence of integers >= 1, got {blocks!r}")
        sizes = {"num_classes": num_classes, "in_channels": in_channels, "width": width}
        sizes.update({f"blocks[{i}]": n for i, n in enumerate(blocks)})
        _check_sizes(sizes)
        if not blocks:
            raise ConfigError("blocks must name at least one stage, got an empty sequence")
        self.conv = _conv3x3(in_channels, width)
        self.bn = nn.BatchNorm2d(width)
        stages: list[nn.Module] = []
        channels = width
        for i, n in enumerate(blocks):
            out = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(channels, out, stride)]
            stage += [BasicBlock(out, out) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (``N×num_classes``) of a batch of ``N×C×H×W`` images."""
        x = F.relu(self.bn(self.conv(x)))
        x = self.stages(x)
        logits: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return logits
