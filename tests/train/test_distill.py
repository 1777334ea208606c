from __future__ import annotations

import pytest
import torch

from deepzip.errors import ConfigError
from deepzip.train import DistillationLoss, pack_teacher_targets


def test_plain_labels_give_cross_entropy() -> None:
    out = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    loss = DistillationLoss(0.7)(out, y)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(out, y))


def test_teacher_equal_to_student_leaves_only_the_hard_term() -> None:
    out = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    packed = pack_teacher_targets(y, out)
    loss = DistillationLoss(0.5, temperature=3.0)(out, packed)
    torch.testing.assert_close(loss, 0.5 * torch.nn.functional.cross_entropy(out, y))


def test_soft_term_pulls_towards_the_teacher() -> None:
    y = torch.zeros(4, dtype=torch.long)
    teacher = torch.tensor([[0.0, 5.0, 0.0]]).repeat(4, 1)
    student = torch.zeros(4, 3, requires_grad=True)
    DistillationLoss(1.0)(student, pack_teacher_targets(y, teacher)).backward()
    assert student.grad is not None
    assert float(student.grad[0, 1]) < 0  # gradient descent raises the teacher's class


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        DistillationLoss(1.5)
    with pytest.raises(ConfigError, match="temperature"):
        DistillationLoss(0.5, temperature=0.0)
    with pytest.raises(ConfigError, match="must be"):
        pack_teacher_targets(torch.zeros(3), torch.zeros(4, 2))
