"""Library callers get the CLI's device checks (meta, device types this PyTorch cannot use),
and a bad ``layer_bits`` value names its glob."""

from __future__ import annotations

import fractions
from pathlib import Path

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


def test_an_error_line_has_no_terminal_escape_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # torch.load's weights-only refusal puts bold on and off (ESC[1m ... ESC[0m) in its text
    from deepzip.cli import main

    path = tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(2), "x": fractions.Fraction(1, 3)}, path)
    code = main(["compress", str(path), "-o", str(tmp_path / "out.dzip")])
    err = capsys.readouterr().err
    assert code == 2
    assert "weights_only" in err
    assert "\x1b" not in err
    assert not (tmp_path / "out.dzip").exists()
