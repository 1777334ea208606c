"""Knowledge distillation from a fixed teacher (Hinton, Vinyals & Dean 2015).

Retraining a pruned or quantized network can learn from the dense network's soft outputs as
well as from the labels. The teacher is fixed and the inputs are not augmented, so its logits
are computed once and packed beside the labels: a target row is ``[label, logit_0, ...]``.
:class:`DistillationLoss` unpacks such rows; given plain integer labels (an evaluation loader)
it is ordinary cross-entropy.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deepzip.errors import ConfigError, InvalidTensorError

__all__ = ["DistillationLoss", "pack_teacher_targets"]


def pack_teacher_targets(labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Rows ``[label, teacher logits...]`` (float32) for :class:`DistillationLoss`.

    The teacher is fixed: its logits are detached (a ``teacher(x)`` computed with gradients
    is not trained through the student's loss), and the rows are on the teacher logits'
    device.

    Args:
        labels: ``(N,)`` class indices.
        teacher_logits: ``(N, classes)`` logits of the teacher.

    Returns:
        The ``(N, 1 + classes)`` float32 rows, without gradient.

    Raises:
        ConfigError: the shapes are not ``(N,)`` and ``(N, classes)``.
    """
    if labels.dim() != 1 or teacher_logits.dim() != 2 or labels.shape[0] != teacher_logits.shape[0]:
        raise ConfigError(
            f"labels {tuple(labels.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "must be (N,) and (N, classes)"
        )
    teacher = teacher_logits.detach().to(torch.float32)
    return torch.cat([labels[:, None].to(teacher.device, torch.float32), teacher], 1)


class DistillationLoss(nn.Module):
    """``(1 − α)·CE(outputs, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(outputs/T))``.

    Args:
        alpha: weight of the distillation term, in [0, 1].
        temperature: softening temperature ``T > 0``.

    Raises:
        ConfigError: ``alpha`` or ``temperature`` is not a number in its range.
    """

    def __init__(self, alpha: float, temperature: float = 4.0) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("temperature", temperature)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"distillation {name} must be a number, got {value!r}")
        if not (0.0 <= alpha <= 1.0):
            raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"distillation temperature must be > 0, got {temperature!r}")
        self.alpha = alpha
        self.temperature = temperature

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss; plain cross-entropy when ``targets`` are integer labels.

        Raises:
            InvalidTensorError: packed ``targets`` that are not ``(N, 1 + C)`` for ``N×C``
                ``outputs``.
        """
        if targets.dim() == 1:
            return nn.functional.cross_entropy(outputs, targets)
        if (
            outputs.dim() != 2
            or targets.dim() != 2
            or targets.shape != (outputs.shape[0], outputs.shape[1] + 1)
        ):
            raise InvalidTensorError(
                f"distillation targets {tuple(targets.shape)} do not fit outputs "
                f"{tuple(outputs.shape)}: rows must be [label, teacher logits...], "
                "(N, 1 + classes)"
            )
        labels = targets[:, 0].long()
        teacher = targets[:, 1:]
        hard = nn.functional.cross_entropy(outputs, labels)
        t = self.temperature
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(outputs / t, dim=1),
            nn.functional.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - self.alpha) * hard + self.alpha * t * t * soft
