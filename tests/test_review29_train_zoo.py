"""Review of the training harness and the model zoo: each test failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.train import (
    DistillationLoss,
    FitState,
    LambdaCallback,
    evaluate,
    fit,
    make_optimizer,
    pack_teacher_targets,
    predict_logits,
)
from deepzip.zoo import BasicBlock, create_model


def _batches(n: int = 16, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = (x[:, 0] > 0).long()
    return list(zip(x.split(size), y.split(size), strict=True))


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


def test_evaluate_refuses_a_model_returning_a_tuple() -> None:
    with pytest.raises(InvalidTensorError, match="evaluation batch 1: the model returned tuple"):
        evaluate(_TupleOut(), _batches())  # AttributeError: 'tuple' has no attribute 'dim'


def test_predict_logits_refuses_a_model_returning_a_tuple() -> None:
    with pytest.raises(InvalidTensorError, match="prediction batch 1: the model returned tuple"):
        predict_logits(_TupleOut(), _batches())  # TypeError from torch.cat


def test_evaluate_before_training_leaves_lazy_parameters_trainable() -> None:
    # under inference_mode the lazy weight was made an inference tensor: fit then ran without
    # error but never gave it a gradient, so it was silently never trained
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(2))
    evaluate(model, _batches())
    weight = model[0].weight
    assert not weight.is_inference()
    before = weight.detach().clone()
    fit(model, _batches(), optimizer=torch.optim.SGD(model.parameters(), lr=0.5), epochs=2)
    assert weight.grad is not None
    assert not torch.equal(before, weight.detach())


def test_packed_teacher_logits_do_not_train_the_teacher() -> None:
    torch.manual_seed(0)
    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    batches = _batches()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    packed = pack_teacher_targets(y, teacher(x))  # computed with gradients
    assert not packed.requires_grad
    loader = list(zip(x.split(4), packed.split(4), strict=True))
    # the second batch failed: "Trying to backward through the graph a second time"
    fit(
        student,
        loader,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
        epochs=2,
        loss_fn=DistillationLoss(0.5),
    )
    assert teacher.weight.grad is None


def test_packed_rows_are_on_the_teacher_logits_device() -> None:
    labels = torch.tensor([0, 1])
    packed = pack_teacher_targets(labels, torch.zeros(2, 3, device="meta"))  # RuntimeError
    assert packed.device.type == "meta"
    assert packed.shape == (2, 4)
    assert packed.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_packed_rows_with_labels_on_the_cpu_and_logits_on_cuda() -> None:
    labels = torch.tensor([0, 1])
    logits = torch.randn(2, 3, device="cuda")
    packed = pack_teacher_targets(labels, logits)
    assert packed.device == logits.device
    torch.testing.assert_close(packed[:, 0].cpu(), labels.float())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": "0.5"}, "alpha must be a number, got '0.5'"),
        ({"alpha": None}, "alpha must be a number"),
        ({"alpha": 0.5, "temperature": "4"}, "temperature must be a number, got '4'"),
        ({"alpha": True}, "alpha must be a number, got True"),
    ],
)
def test_distillation_settings_that_are_not_numbers(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):  # TypeError
        DistillationLoss(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": "0.1"}, "lr must be a number, got '0.1'"),
        ({"lr": 0.1, "momentum": "0.9"}, "momentum must be a number"),
        ({"lr": 0.1, "weight_decay": None}, "weight_decay must be a number, got None"),
    ],
)
def test_make_optimizer_settings_that_are_not_numbers(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):  # TypeError
        make_optimizer(nn.Linear(2, 2).parameters(), "sgd", **kwargs)  # type: ignore[arg-type]


def test_make_optimizer_with_no_parameters_is_a_config_error() -> None:
    frozen = nn.Linear(2, 2).requires_grad_(False)
    params = [p for p in frozen.parameters() if p.requires_grad]
    with pytest.raises(ConfigError, match="empty parameter list"):  # plain ValueError
        make_optimizer(params, "adam", 0.01)


def test_fit_max_grad_norm_that_is_not_a_number() -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="max_grad_norm"):  # TypeError
        fit(model, _batches(), optimizer=opt, epochs=1, max_grad_norm="1")  # type: ignore[arg-type]


def test_batches_per_epoch_follows_a_loader_whose_length_changes() -> None:
    batches = _batches()

    class Growing:
        def __init__(self) -> None:
            self.n = 2

        def __len__(self) -> int:
            return self.n

        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return iter(batches[: self.n])

    loader = Growing()
    seen: list[tuple[int | None, int]] = []

    def grow(state: FitState) -> None:
        seen.append((state.batches_per_epoch, state.batch_in_epoch))
        loader.n += 1

    model = nn.Linear(3, 2)
    fit(
        model,
        loader,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=3,
        callbacks=[LambdaCallback(on_epoch_end=grow)],
    )
    assert seen == [(2, 2), (3, 3), (4, 4)]  # was [(2, 2), (2, 3), (2, 4)]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 16), "in_channels must be an integer >= 1, got 0"),  # a zero-element conv
        ((16, 16, 0), "stride must be an integer >= 1, got 0"),  # failed only in forward
        ((16, 8.0), "out_channels must be an integer >= 1, got 8.0"),
    ],
)
def test_basic_block_refuses_bad_sizes(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BasicBlock(*args)  # type: ignore[arg-type]


def test_create_model_with_a_name_that_is_not_a_string() -> None:
    with pytest.raises(ConfigError, match="unknown model"):  # TypeError: unhashable type
        create_model(["lenet-5"])  # type: ignore[arg-type]
