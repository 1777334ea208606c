"""The two LeNets of the Deep Compression paper (Han et al. 2016, table 2 and 3).

Both are written so that every layer's outputs are followed, in module registration order, by
the dropout that acts on them: :func:`deepzip.prune.scale_dropout_` relies on that order to tie
each dropout to the layer it follows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from deepzip.errors import ConfigError

__all__ = ["LeNet5", "LeNet300100"]


def _check_args(num_classes: int, channels_name: str, channels: int, dropout: float) -> None:
    for name, value in (("num_classes", num_classes), (channels_name, channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise ConfigError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")


class LeNet300100(nn.Module):
    """LeNet-300-100: a 784-300-100-10 multilayer perceptron with ReLU.

    266,200 weights and 410 biases with the default sizes. The input is flattened, so a batch
    of ``N×1×28×28`` images and a batch of ``N×784`` vectors both work.

    Args:
        num_classes: outputs of ``fc3``.
        in_features: inputs of ``fc1`` (the flattened image size).
        dropout: rate of ``drop1`` and ``drop2``, after the activations of ``fc1`` and ``fc2``.
            Both modules always exist so the module tree does not depend on the rate; a rate
            of 0 makes them no-ops.

    Raises:
        ConfigError: a size that is not an integer >= 1 or a rate that is not a number in
            ``[0, 1)``.
    """

    def __init__(self, num_classes: int = 10, in_features: int = 784, dropout: float = 0.0) -> None:
        super().__init__()
        _check_args(num_classes, "in_features", in_features, dropout)
        self.fc1 = nn.Linear(in_features, 300)
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(300, 100)
        self.drop2 = nn.Dropout(dropout)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (``N×num_classes``) of a batch of images or flat vectors."""
        x = self.drop1(F.relu(self.fc1(x.flatten(1))))
        x = self.drop2(F.relu(self.fc2(x)))
        logits: torch.Tensor = self.fc3(x)
        return logits


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's MNIST example, the variant the paper compresses.

    ``conv1`` (20 5×5 filters) → 2×2 max pool → ``conv2`` (50 5×5 filters) → 2×2 max pool →
    flatten (800) → ``fc1`` (500) → ReLU → ``drop1`` → ``fc2``. Like Caffe's net there is no
    nonlinearity after the convolutions (only the max pools); this is kept on purpose so the
    layer sizes and accuracies compare with the paper's. 430,500 weights and 580 biases with
    the default sizes; the input must be ``N×in_channels×28×28``.

    Args:
        num_classes: outputs of ``fc2``.
        in_channels: input channels of ``conv1``.
        dropout: rate of ``drop1``, after the activation of ``fc1``; the module always exists,
            a rate of 0 makes it a no-op.

    Raises:
        ConfigError: a size that is not an integer >= 1 or a rate that is not a number in
            ``[0, 1)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        _check_args(num_classes, "in_channels", in_channels, dropout)
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (``N×num_classes``) of a batch of ``N×C×28×28`` images."""
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = self.drop1(F.relu(self.fc1(x.flatten(1))))
        logits: torch.Tensor = self.fc2(x)
        return logits
