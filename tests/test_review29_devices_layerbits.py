"""Library callers get the CLI's device checks (meta, device types this PyTorch cannot use),
and a bad ``layer_bits`` value names its glob."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepzip.errors import ConfigError
from deepzip.posttrain import PostTrainConfig
from deepzip.train import evaluate, fit, resolve_device


@pytest.mark.parametrize("device", ["meta", "ve"])
def test_resolve_device_refuses_devices_without_data_or_support(device: str) -> None:
    with pytest.raises(ConfigError, match=rf"^device '{device}'"):
        resolve_device(device)


def test_fit_on_the_meta_device_is_a_config_error_before_training() -> None:
    # it failed inside the loop with "Tensor.item() cannot be called on meta tensors"
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="meta"):
        fit(model, batches, optimizer=opt, epochs=1, device="meta")
    with pytest.raises(ConfigError, match="meta"):
        evaluate(model, batches, device="meta")
    assert model.weight.device.type == "cpu"
    assert torch.equal(model.weight.detach(), before)


def test_resolve_device_keeps_the_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_bad_layer_bits_value_names_its_glob() -> None:
    # it said only "quantize.bits must be an integer from 1 to 8, got 99"
    with pytest.raises(ConfigError, match=r"^layer_bits\['fc1\*'\]: .*got 99"):
        PostTrainConfig(layer_bits=(("fc*", 4), ("fc1*", 99)))
