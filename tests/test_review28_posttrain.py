"""Post-training compression of checkpoints deepzip wrote, and of weights with exact zeros.

``compress_checkpoint`` must read a ``save_checkpoint`` file as the model it holds: masks
prune, codebooks and indices are kept (or re-quantized when asked), Bloomier filters keep
their encoding, and no ``__deepzip_*`` entry becomes a tensor of the ``.dzip`` file, so the
file loads into the model and ``deepzip bench`` runs on it. Exact zeros stay exact zeros.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import deepzip as dz
from deepzip import PruneConfig, QuantizeConfig, WeightlessConfig
from deepzip.cli import main
from deepzip.errors import CheckpointError
from deepzip.format import DzipReader
from deepzip.format.checkpoint import MASK_PREFIX, plain_state_dict
from deepzip.format.dzip_writer import Layout
from deepzip.posttrain import Quantizer, compress_checkpoint
from deepzip.zoo import create_model

ZOO = "lenet-300-100"


def _float32_bytes(model: nn.Module) -> int:
    return sum(4 * t.numel() for t in plain_state_dict(model).values())


def _pruned() -> nn.Module:
    torch.manual_seed(0)
    model = create_model(ZOO)
    dz.prune_(model, PruneConfig(sparsity=0.8))
    return model


def _quantized() -> nn.Module:
    model = _pruned()
    dz.quantize_(model, QuantizeConfig(bits=3))
    return model


def _weightless() -> nn.Module:
    """fc1, fc2 shared (3 bits); fc3 encoded with Weightless (2-bit clusters)."""
    model = _pruned()
    dz.quantize_(model, QuantizeConfig(bits=3, exclude=("fc3",)))
    dz.weightless_(
        model, WeightlessConfig(cell_bits=4, include=("fc3",)), quantize=QuantizeConfig(bits=2)
    )
    return model


def _save(model: nn.Module, path: Path) -> Path:
    dz.save_checkpoint(model, path, metadata={"deepzip.model": ZOO})
    return path


@pytest.fixture
def pruned_ckpt(tmp_path: Path) -> Path:
    return _save(_pruned(), tmp_path / "pruned.safetensors")


@pytest.fixture
def quantized_ckpt(tmp_path: Path) -> Path:
    return _save(_quantized(), tmp_path / "quantized.safetensors")


# --------------------------------------------------------------------- pruned checkpoints


def test_a_pruned_checkpoint_keeps_its_masks_and_loads_into_the_model(
    pruned_ckpt: Path, tmp_path: Path
) -> None:
    ckpt = dz.read_checkpoint(pruned_ckpt)
    out = tmp_path / "p.dzip"
    report = compress_checkpoint(pruned_ckpt, out, bits=4)
    rows = {r.name: r for r in report.tensors}
    assert not any(n.startswith("__deepzip_") for n in rows)
    assert set(rows) == set(ckpt.tensors)
    # the float32 size counts the model's tensors only, not the bool masks
    assert report.float32_bytes == _float32_bytes(create_model(ZOO))
    for name, mask in ckpt.masks.items():
        assert rows[name].kept == int(mask.sum()), name
    back = dz.load_state_dict(out)
    for name, mask in ckpt.masks.items():
        assert bool((back[name][~mask] == 0).all()), name
    loaded = dz.load_model(create_model(ZOO), out)  # strict: no unexpected keys
    assert torch.equal(plain_state_dict(loaded)["fc1.bias"], ckpt.tensors["fc1.bias"])


def test_prune_only_stores_the_checkpoint_weights_exactly(
    pruned_ckpt: Path, tmp_path: Path
) -> None:
    ckpt = dz.read_checkpoint(pruned_ckpt)
    report = compress_checkpoint(pruned_ckpt, tmp_path / "f.dzip", bits=None)
    rows = {r.name: r for r in report.tensors}
    back = dz.load_state_dict(tmp_path / "f.dzip")
    for name, t in ckpt.tensors.items():
        assert torch.equal(back[name], t), name
        if name in ckpt.masks:
            assert rows[name].encoding == "sparse_float"


def test_sparsity_prunes_further_only_among_the_kept_weights(
    pruned_ckpt: Path, tmp_path: Path
) -> None:
    ckpt = dz.read_checkpoint(pruned_ckpt)
    w, mask = ckpt.tensors["fc1.weight"], ckpt.masks["fc1.weight"]
    assert int(mask.sum()) == round(0.2 * w.numel())
    # 50% asks for less than the 80% already pruned: nothing more is pruned
    less = compress_checkpoint(pruned_ckpt, tmp_path / "a.dzip", sparsity=0.5, bits=None)
    assert {r.name: r.kept for r in less.tensors}["fc1.weight"] == int(mask.sum())
    # 90%: the pruned stay pruned, and the smallest of the kept go
    more = compress_checkpoint(pruned_ckpt, tmp_path / "b.dzip", sparsity=0.9, bits=None)
    assert {r.name: r.kept for r in more.tensors}["fc1.weight"] == round(0.1 * w.numel())
    back = dz.load_state_dict(tmp_path / "b.dzip")["fc1.weight"]
    kept = back != 0
    assert not bool((kept & ~mask).any())
    assert torch.equal(back[kept], w[kept])
    assert float(w[mask & ~kept].abs().max()) <= float(w[kept].abs().min())


# ------------------------------------------------------------------ quantized checkpoints


def test_a_quantized_checkpoint_keeps_its_codebooks_and_indices(
    quantized_ckpt: Path, tmp_path: Path
) -> None:
    ckpt = dz.read_checkpoint(quantized_ckpt)
    model = create_model(ZOO)
    dz.load_checkpoint(model, quantized_ckpt)
    expected = plain_state_dict(model)  # the model the checkpoint holds
    out = tmp_path / "q.dzip"
    report = compress_checkpoint(quantized_ckpt, out)
    rows = {r.name: r for r in report.tensors}
    assert report.float32_bytes == _float32_bytes(create_model(ZOO))
    with DzipReader(out) as reader:
        for name, s in ckpt.shared.items():
            assert rows[name].encoding.startswith("shared_"), name
            stored = reader.shared(name)
            assert torch.equal(stored.codebook, s.codebook), name
            assert torch.equal(stored.mask, s.mask), name
            assert torch.equal(stored.indices[s.mask], s.indices[s.mask]), name
        layers = reader.metadata["report"]["layers"]
    assert layers["fc1.weight"]["codebook"] == "checkpoint"
    back = dz.load_state_dict(out)
    for name, t in expected.items():
        assert torch.equal(back[name], t), name
    dz.load_model(create_model(ZOO), out)


def test_asking_for_other_bits_requantizes_the_kept_weights(
    quantized_ckpt: Path, tmp_path: Path
) -> None:
    ckpt = dz.read_checkpoint(quantized_ckpt)
    out = tmp_path / "r.dzip"
    compress_checkpoint(quantized_ckpt, out, bits=1)  # differs from the default: re-quantized
    with DzipReader(out) as reader:
        for name, s in ckpt.shared.items():
            stored = reader.shared(name)
            assert stored.codebook.numel() <= 2, name
            assert torch.equal(stored.mask, s.mask), name  # the pruned stay pruned
        assert "codebook" not in reader.metadata["report"]["layers"]["fc1.weight"]
    # explicit requantize=False keeps them; a layer_bits glob re-quantizes the one it names
    report = compress_checkpoint(
        quantized_ckpt, tmp_path / "k.dzip", bits=1, requantize=False, layer_bits={"fc2": 2}
    )
    k = {r.name: r.k for r in report.tensors}
    assert k["fc1.weight"] == ckpt.shared["fc1.weight"].codebook.numel()
    assert k["fc2.weight"] is not None
    assert k["fc2.weight"] <= 4


def test_sparsity_on_a_quantized_checkpoint_keeps_its_codebook(
    quantized_ckpt: Path, tmp_path: Path
) -> None:
    ckpt = dz.read_checkpoint(quantized_ckpt)
    out = tmp_path / "s.dzip"
    compress_checkpoint(quantized_ckpt, out, sparsity=0.9)
    s = ckpt.shared["fc1.weight"]
    with DzipReader(out) as reader:
        stored = reader.shared("fc1.weight")
    assert torch.equal(stored.codebook, s.codebook)
    assert int(stored.mask.sum()) == round(0.1 * s.mask.numel())
    assert not bool((stored.mask & ~s.mask).any())
    assert torch.equal(stored.indices[stored.mask], s.indices[stored.mask])


def test_a_weightless_checkpoint_keeps_its_bloomier_filter(tmp_path: Path) -> None:
    model = _weightless()
    src = _save(model, tmp_path / "wl.safetensors")
    expected = plain_state_dict(model)
    out = tmp_path / "wl.dzip"
    report = compress_checkpoint(src, out)
    rows = {r.name: r for r in report.tensors}
    assert rows["fc3.weight"].encoding == "bloomier"
    assert rows["fc1.weight"].encoding.startswith("shared_")
    back = dz.load_state_dict(out)
    for name, t in expected.items():
        assert torch.equal(back[name], t), name
    dz.load_model(create_model(ZOO), out)
    # pruned further or re-quantized, it is stored shared (the filter encodes the positions)
    further = compress_checkpoint(src, tmp_path / "wl2.dzip", sparsity=0.95)
    assert {r.name: r.encoding for r in further.tensors}["fc3.weight"].startswith("shared_")
    again = compress_checkpoint(src, tmp_path / "wl3.dzip", bits=1)
    assert {r.name: r.k for r in again.tensors}["fc3.weight"] == 2


# ------------------------------------------------------------------------ the file format


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("__deepzip_future__.fc1.weight", torch.zeros(1), "unknown deepzip entry"),
        (MASK_PREFIX + "nothing.weight", torch.ones(3, dtype=torch.bool), "does not hold"),
        (MASK_PREFIX + "fc1.weight", torch.ones(3, dtype=torch.bool), "its mask has shape"),
        ("__deepzip_index__.fc1.weight", None, "no index"),
        ("__deepzip_index__.fc1.weight", torch.full((300, 784), 9, dtype=torch.uint8), "reaches"),
        ("__deepzip_codebook__.fc1.weight", torch.zeros(2, 2), "codebook must be 1-D"),
    ],
)
def test_bad_deepzip_entries_are_checkpoint_errors_naming_them(
    quantized_ckpt: Path, tmp_path: Path, key: str, value: torch.Tensor | None, match: str
) -> None:
    state = load_file(str(quantized_ckpt))
    if value is None:
        del state[key]
    else:
        state[key] = value
    src = tmp_path / "bad.safetensors"
    save_file(state, str(src))
    with pytest.raises(CheckpointError, match=match):
        compress_checkpoint(src, tmp_path / "bad.dzip")
    assert not (tmp_path / "bad.dzip").exists()


def test_a_bloomier_filter_that_does_not_match_its_indices_is_refused(tmp_path: Path) -> None:
    src = _save(_weightless(), tmp_path / "wl.safetensors")
    state = load_file(str(src))
    mask = state[MASK_PREFIX + "fc3.weight"].clone()
    mask.view(-1)[:] = ~mask.view(-1)  # the filter no longer decodes to it
    state[MASK_PREFIX + "fc3.weight"] = mask
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(CheckpointError, match=r"fc3\.weight.*does not decode"):
        compress_checkpoint(bad, tmp_path / "bad.dzip")


# ---------------------------------------------------------------------------- exact zeros


@pytest.mark.parametrize("quantizer", ["uniform", "ecsq", "kmeans"])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3])
def test_exact_zeros_stay_exact_zeros(
    tmp_path: Path, quantizer: Quantizer, layout: Layout, sparsity: float
) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g) * 0.1 + 0.05  # zero is not a uniform level
    w[torch.rand(64, 48, generator=g) < 0.6] = 0.0  # a pruned weight, without masks
    half = w.to(torch.float16)
    src = tmp_path / "zeros.safetensors"
    save_file({"fc.weight": w, "half.weight": half}, str(src))
    out = tmp_path / "z.dzip"
    lam = 0.01 if quantizer == "ecsq" else 0.0
    compress_checkpoint(
        src, out, sparsity=sparsity, bits=4, quantizer=quantizer, ecsq_lambda=lam, layout=layout
    )
    back = dz.load_state_dict(out)
    for name, t in (("fc.weight", w), ("half.weight", half)):
        assert bool((back[name][t == 0] == 0).all()), name
        if sparsity == 0.0:  # nothing else is pruned
            assert torch.equal(back[name] != 0, t != 0), name


def test_zeros_of_a_stripped_pruned_model_stay_zeros_with_the_default_quantizer(
    tmp_path: Path,
) -> None:
    model = _pruned()
    dz.strip_(model)  # a plain state dict: zeros, no masks
    src = _save(model, tmp_path / "plain.safetensors")
    w = plain_state_dict(model)["fc1.weight"]
    report = compress_checkpoint(src, tmp_path / "plain.dzip")
    back = dz.load_state_dict(tmp_path / "plain.dzip")["fc1.weight"]
    assert torch.equal(back != 0, w != 0)
    assert {r.name: r.kept for r in report.tensors}["fc1.weight"] == int((w != 0).sum())


# ------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("stage", ["train", "prune", "quantize"])
def test_cli_compress_then_bench_without_model(
    tmp_path: Path, stage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = {"train": lambda: create_model(ZOO), "prune": _pruned, "quantize": _quantized}[stage]()
    src = _save(model, tmp_path / f"{stage}.safetensors")
    out = tmp_path / f"{stage}.dzip"
    assert main(["compress", str(src), "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert ("kept the checkpoint's codebook: fc1.weight" in printed) == (stage == "quantize")
    assert f"{_float32_bytes(create_model(ZOO)):,} B float32" in printed
    assert main(["bench", str(out), "--repeats", "1"]) == 0
    dz.load_model(create_model(ZOO), out)
    if stage == "quantize":  # a quantization flag re-quantizes the shared tensors
        argv = ["compress", str(src), "-o", str(out), "--bits", "2", "--no-progress"]
        assert main(argv) == 0
        assert "kept the checkpoint's codebook" not in capsys.readouterr().out
        with DzipReader(out) as reader:
            assert reader.shared("fc1.weight").codebook.numel() <= 4


def test_the_recipe_records_requantize_only_where_something_was_quantized_again(
    tmp_path: Path, quantized_ckpt: Path
) -> None:
    # quantization flags resolve requantize to True; a checkpoint with no shared tensor has
    # nothing to quantize again, and its file must stay byte for byte what earlier versions
    # wrote (the recipe in the file grew by 18 bytes, so every committed size moved)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in plain_state_dict(_pruned()).items()}, str(plain))
    out = compress_checkpoint(plain, tmp_path / "plain.dzip", quantizer="kmeans", levels=8)
    assert "requantize" not in dz.inspect(out.path).metadata["recipe"]
    again = compress_checkpoint(quantized_ckpt, tmp_path / "q.dzip", quantizer="kmeans", levels=8)
    assert dz.inspect(again.path).metadata["recipe"]["requantize"] is True
