"""Second look at ``compress_checkpoint`` reading deepzip checkpoints, and at ECSQ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import deepzip as dz
from deepzip import PruneConfig, QuantizeConfig
from deepzip.errors import CheckpointError
from deepzip.format.checkpoint import INDEX_PREFIX, MASK_PREFIX
from deepzip.posttrain import compress_checkpoint
from deepzip.zoo import create_model


def _quantized_ckpt(path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("lenet-300-100")
    dz.prune_(model, PruneConfig(sparsity=0.8))
    dz.quantize_(model, QuantizeConfig(bits=3))
    dz.save_checkpoint(model, path)
    return path


@pytest.mark.parametrize("layout", ["auto", "dense"])
def test_an_index_past_the_codebook_at_a_pruned_position_is_a_checkpoint_error(
    tmp_path: Path, layout: str
) -> None:
    # read_checkpoint refuses such a file; compress_checkpoint raised a bare IndexError
    src = _quantized_ckpt(tmp_path / "q.safetensors")
    raw = load_file(src)
    index = raw[INDEX_PREFIX + "fc1.weight"].clone()
    index[~raw[MASK_PREFIX + "fc1.weight"]] = 200
    raw[INDEX_PREFIX + "fc1.weight"] = index
    bad = tmp_path / "bad.safetensors"
    save_file(raw, bad)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*fc1\.weight.*200"):
        compress_checkpoint(bad, tmp_path / "o.dzip", layout=layout)  # type: ignore[arg-type]
    assert not (tmp_path / "o.dzip").exists()


def _small_cluster_between_large_ones() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clusters 0 and 2 of a million weights of importance 1e3; cluster 1 of ten weights (4
    and 6) of importance 1e-9 and 1e-6, whose weighted mean is 5.998."""
    n = 1_000_000
    gen = torch.Generator().manual_seed(0)
    small = torch.tensor([4.0] * 5 + [6.0] * 5, dtype=torch.float64)
    x = torch.cat(
        [torch.randn(n, generator=gen, dtype=torch.float64), small, torch.full((n,), 10.0)]
    )
    w = torch.cat(
        [
            torch.full((n,), 1e3, dtype=torch.float64),
            torch.tensor([1e-9] * 5 + [1e-6] * 5, dtype=torch.float64),
            torch.full((n,), 1e3, dtype=torch.float64),
        ]
    )
    label = torch.cat(
        [torch.zeros(n, dtype=torch.int64), torch.ones(10, dtype=torch.int64), torch.full((n,), 2)]
    )
    return x, w, label


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_ecsq_centres_of_a_small_cluster_are_exact_on_every_device(device: str) -> None:
    # the CUDA path took differences of prefix sums over all weights: the small cluster's
    # sums cancelled against the running total and its centre came out at 6.3, outside its
    # members' range [4, 6] (the same arithmetic on the CPU gives 6.2957)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from deepzip.quantize.scalar import _centres_and_rates

    x, w, label = _small_cluster_between_large_ones()
    xd, wd = x.to(device), w.to(device)
    sums_of = (wd.cpu(), (wd * xd).cpu(), xd.cpu())  # as ecsq_quantize passes them
    centre, rate = _centres_and_rates(sums_of, label.to(device), xd.numel(), xd.device)
    assert centre.device.type == device
    assert rate.device.type == device
    expected = (4.0 * 5e-9 + 6.0 * 5e-6) / (5e-9 + 5e-6)
    assert abs(float(centre[1]) - expected) < 1e-9
