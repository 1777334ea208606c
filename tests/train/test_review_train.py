"""Review fixes of the training harness: gradient clipping of what the optimizer steps,
distillation targets that do not fit the outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepzip.errors import InvalidTensorError
from deepzip.train import DistillationLoss, FitState, LambdaCallback, fit, pack_teacher_targets


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return list(zip(x.split(32), y.split(32), strict=True))


def test_max_grad_norm_clips_a_parameter_outside_the_model() -> None:
    bias = torch.zeros(2, requires_grad=True)  # trained through the loss only
    norms: list[float] = []

    def record(state: FitState) -> None:
        assert bias.grad is not None
        norms.append(float(bias.grad.norm()))

    fit(
        nn.Flatten(),
        _batches(),
        optimizer=torch.optim.SGD([bias], lr=0.01),
        epochs=1,
        device="cpu",
        loss_fn=lambda out, y: 1000 * nn.functional.cross_entropy(out[:, :2] + bias, y),
        max_grad_norm=0.5,
        callbacks=[LambdaCallback(on_batch_end=record)],
    )
    assert len(norms) == 4
    assert max(norms) <= 0.5 + 1e-5


def test_max_grad_norm_ignores_parameters_the_optimizer_does_not_step() -> None:
    """The body's gradients are never zeroed (the optimizer holds only the head): they must
    not count in the clipped norm, so the same batch gives the same clipped head gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    head: list[torch.Tensor] = []

    def record(state: FitState) -> None:
        grads = [p.grad.flatten() for p in model[1].parameters() if p.grad is not None]
        head.append(torch.cat(grads).clone())

    fit(
        model,
        _batches(),
        optimizer=torch.optim.SGD(model[1].parameters(), lr=0.0),
        epochs=3,
        device="cpu",
        loss_fn=lambda out, y: 10 * nn.functional.cross_entropy(out, y),
        max_grad_norm=1.0,
        callbacks=[LambdaCallback(on_batch_end=record)],
    )
    for epoch in (1, 2):
        for i in range(4):
            torch.testing.assert_close(head[4 * epoch + i], head[i])
    assert max(float(g.norm()) for g in head) <= 1.0 + 1e-5


@pytest.mark.parametrize("teacher_classes", [1, 3, 10])
def test_distillation_targets_must_fit_the_outputs(teacher_classes: int) -> None:
    outputs = torch.randn(6, 4)
    labels = torch.randint(0, 4, (6,))
    packed = pack_teacher_targets(labels, torch.randn(6, teacher_classes))
    with pytest.raises(InvalidTensorError, match=r"distillation targets \(6, \d+\) do not fit"):
        DistillationLoss(0.5)(outputs, packed)


def test_distillation_soft_term_is_t2_kl_teacher_to_student() -> None:
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.randint(0, 4, (5,), generator=g)
    t = 3.0
    p_t, p_s = torch.softmax(teacher / t, 1), torch.softmax(student / t, 1)
    expected = t * t * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    loss = DistillationLoss(1.0, temperature=t)(student, pack_teacher_targets(labels, teacher))
    torch.testing.assert_close(loss, expected)
