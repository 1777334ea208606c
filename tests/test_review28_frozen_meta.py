"""Frozen weights stay frozen through quantization; meta tensors are refused by every verb;
checkpoint write failures are typed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from torch import nn

import deepzip as dz
from deepzip.config import SLQConfig
from deepzip.errors import CheckpointError, ConfigError, InvalidTensorError
from deepzip.quantize.incremental import slq_


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def _trainable(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("pruned", [False, True])
def test_a_frozen_weight_gets_a_frozen_codebook_and_stays_frozen(pruned: bool) -> None:
    model = _mlp()
    if pruned:
        dz.prune_(model, dz.PruneConfig(sparsity=0.5))
    stored = model[0].parametrizations.weight.original if pruned else model[0].weight
    stored.requires_grad_(False)
    with torch.no_grad():  # the flag is the stored weight's, whatever the grad mode
        dz.quantize_(model, dz.QuantizeConfig(bits=3))
    flags = _trainable(model)
    assert flags["0.parametrizations.weight.0.codebook"] is False  # it was True
    assert flags["2.parametrizations.weight.0.codebook"] is True
    # quantizing again (new clusters) keeps the user's choice, although the first pass froze
    # the stored originals of both layers itself
    dz.quantize_(model, dz.QuantizeConfig(bits=2))
    flags = _trainable(model)
    assert flags["0.parametrizations.weight.0.codebook"] is False
    assert flags["2.parametrizations.weight.0.codebook"] is True
    dz.strip_(model)
    assert model[0].weight.requires_grad is False  # strip_ made it trainable
    assert model[2].weight.requires_grad is True


def test_strip_of_an_interrupted_incremental_run_keeps_a_frozen_weight_frozen() -> None:
    model = _mlp()
    model[0].weight.requires_grad_(False)

    def stop(model: nn.Module, step: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        slq_(model, SLQConfig(bits=3, steps=(0.5, 1.0)), stop)
    dz.strip_(model)
    assert model[0].weight.requires_grad is False
    assert model[2].weight.requires_grad is True


def _meta_mlp() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


@pytest.mark.parametrize(
    ("verb", "action"),
    [
        (lambda m: dz.prune_(m, dz.PruneConfig(sparsity=0.5)), "prune"),
        (lambda m: dz.quantize_(m, dz.QuantizeConfig(bits=4)), "quantize"),
        (lambda m: slq_(m, SLQConfig(bits=3), lambda model, step: None), "quantize"),
    ],
)
def test_a_model_on_the_meta_device_is_refused_by_name(
    verb: Callable[[nn.Module], object], action: str
) -> None:
    # it raised RuntimeError: Tensor.item() cannot be called on meta tensors
    model = _meta_mlp()
    with pytest.raises(
        InvalidTensorError,
        match=rf"0\.weight \(and 1 more\): a tensor on the meta device has no values to {action}",
    ):
        verb(model)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())  # unchanged


def test_a_checkpoint_that_cannot_be_written_is_a_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # safetensors reports a full disk with its own SafetensorError, which the CLI did not
    # catch (a traceback instead of one line)
    import deepzip.format.checkpoint as checkpoint

    def full_disk(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    dest = tmp_path / "model.safetensors"
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot write the checkpoint"):
        dz.save_checkpoint(_mlp(), dest)
    assert list(tmp_path.iterdir()) == []


def test_fisher_of_an_already_quantized_layer_is_refused_by_name() -> None:
    # its stored weights get no gradient (the codebook trains): the importance was all zeros,
    # and quantize_ then failed with "importance is zero for every surviving weight"
    from deepzip.quantize import fisher_diagonal

    model = _mlp()
    dz.quantize_(model, dz.QuantizeConfig(bits=3, include=("2",)))
    batches = [(torch.randn(8, 16), torch.randint(0, 4, (8,)))]
    with pytest.raises(ConfigError, match=r"2\.weight is already weight-shared"):
        fisher_diagonal(model, batches)
    assert set(fisher_diagonal(model, batches, exclude=("2",))) == {"0.weight"}


def test_float64_importance_that_vanishes_in_float32_is_refused() -> None:
    # importance of 1e-50 passed the "not all zero" check in float64, became all zeros in
    # float32 and collapsed ECSQ to one cluster; k-means weighs in float64 and is unaffected
    from deepzip.quantize.kmeans import kmeans_1d
    from deepzip.quantize.scalar import ecsq_quantize, uniform_quantize

    x = torch.linspace(-1, 1, 200, dtype=torch.float64)
    tiny = torch.full_like(x, 1e-50)
    message = r"importance is zero for every value in float32 \(largest 1e-50\)"
    with pytest.raises(InvalidTensorError, match=message):
        ecsq_quantize(x, 8, 0.0, weights=tiny)
    with pytest.raises(InvalidTensorError, match=message):
        uniform_quantize(x, 8, weights=tiny)
    assert kmeans_1d(x, 8, weights=tiny).k == 8
    assert ecsq_quantize(x, 8, 0.0, weights=torch.full_like(x, 1e-30)).k == 8  # fine
