"""The zoo models: sizes from the paper, output shapes, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepzip.errors import ConfigError
from deepzip.zoo import (
    MODELS,
    BasicBlock,
    LeNet5,
    LeNet300100,
    TinyResNet,
    create_model,
    model_names,
)


def _count(model: nn.Module, suffix: str) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.endswith(suffix))


def test_lenet_300_100_sizes() -> None:
    model = LeNet300100()
    assert _count(model, "weight") == 784 * 300 + 300 * 100 + 100 * 10 == 266_200
    assert _count(model, "bias") == 300 + 100 + 10 == 410
    assert [type(m) for m in (model.fc1, model.fc2, model.fc3)] == [nn.Linear] * 3


def test_lenet_5_sizes() -> None:
    model = LeNet5()
    weights = 20 * 1 * 5 * 5 + 50 * 20 * 5 * 5 + 50 * 4 * 4 * 500 + 500 * 10
    assert _count(model, "weight") == weights == 430_500
    assert _count(model, "bias") == 20 + 50 + 500 + 10


def test_lenet_5_has_no_relu_after_convs() -> None:
    """Caffe's LeNet: the conv outputs go through max pooling only (negatives survive)."""
    model = LeNet5().eval()
    seen: list[torch.Tensor] = []
    model.fc1.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model.conv1.weight.fill_(-1.0)  # every conv1 output is -25
        model.conv1.bias.zero_()
        model.conv2.weight.fill_(1.0)  # every conv2 output is 5·5·20·(-25) = -12,500
        model.conv2.bias.zero_()
        model(torch.ones(1, 1, 28, 28))  # through forward, where a ReLU would be
    assert len(seen) == 1
    assert torch.equal(seen[0], torch.full((1, 800), -12_500.0))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)


def test_num_classes_and_flat_input() -> None:
    assert LeNet300100(num_classes=3)(torch.randn(4, 784)).shape == (4, 3)
    assert LeNet5(num_classes=7, in_channels=3)(torch.randn(2, 3, 28, 28)).shape == (2, 7)


def test_dropout_modules_are_always_present_in_layer_order() -> None:
    names = [n for n, _ in LeNet300100().named_modules() if n]
    assert names == ["fc1", "drop1", "fc2", "drop2", "fc3"]
    model = LeNet300100(dropout=0.5)
    assert model.drop1.p == model.drop2.p == 0.5
    assert [n for n, _ in LeNet5(dropout=0.5).named_modules() if n] == [
        "conv1",
        "conv2",
        "fc1",
        "drop1",
        "fc2",
    ]


def test_zero_dropout_is_a_no_op_in_training_mode() -> None:
    torch.manual_seed(0)
    model = LeNet300100().train()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), model(x))


def test_tiny_resnet_forward_backward() -> None:
    torch.manual_seed(0)
    model = TinyResNet(blocks=(2, 1, 1))
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_tiny_resnet_projection_only_when_shape_changes() -> None:
    model = TinyResNet(width=8, blocks=(2, 2))
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert [b.shortcut is not None for b in blocks] == [False, False, True, False]
    projection = blocks[2].shortcut
    assert projection is not None
    assert isinstance(projection[0], nn.Conv2d)
    assert projection[0].kernel_size == (1, 1)
    assert isinstance(projection[1], nn.BatchNorm2d)
    assert model.fc.in_features == 16


def test_model_names_and_create() -> None:
    assert model_names() == ["lenet-300-100", "lenet-5", "tiny-resnet"]
    model = create_model("lenet-300-100", dropout=0.25)
    assert isinstance(model, LeNet300100)
    assert model.drop1.p == 0.25


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="lenet-300-100, lenet-5, tiny-resnet"):
        create_model("alexnet")


def test_unknown_model_argument() -> None:
    with pytest.raises(ConfigError, match="lenet-5"):
        create_model("lenet-5", width=3)


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (LeNet300100, {"dropout": 1.0}),
        (LeNet300100, {"num_classes": 0}),
        (LeNet5, {"in_channels": 0}),
        (LeNet5, {"dropout": -0.1}),
        (TinyResNet, {"width": 0}),
        (TinyResNet, {"blocks": ()}),
        (TinyResNet, {"blocks": (1, 0)}),
    ],
)
def test_bad_arguments(factory: type[nn.Module], kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        factory(**kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("lenet-5", {"dropout": "0.5"}, "dropout must be a number in [0, 1), got '0.5'"),
        ("lenet-300-100", {"dropout": None}, "dropout must be a number in [0, 1), got None"),
        ("tiny-resnet", {"blocks": 3}, "blocks must be a sequence of integers >= 1, got 3"),
        ("tiny-resnet", {"blocks": "11"}, "blocks must be a sequence of integers >= 1"),
        ("tiny-resnet", {"blocks": (1, 2.0)}, "blocks[1] must be an integer >= 1, got 2.0"),
    ],
)
def test_bad_argument_types_are_config_errors(
    name: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        create_model(name, **kwargs)
    assert message in str(info.value)
