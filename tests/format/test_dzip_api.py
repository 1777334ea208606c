"""dz.save / load_state_dict / load_model / inspect / read_compressed on real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import deepzip as dz
from deepzip.coding.bloomier import build_filter
from deepzip.errors import CheckpointError, ConfigError, InvalidTensorError
from deepzip.format import (
    inspect,
    load_model,
    load_state_dict,
    read_compressed,
    save,
    to_safetensors,
)
from deepzip.format.checkpoint import plain_state_dict
from deepzip.format.dzip_writer import DzipWriter
from deepzip.quantize.shared import SharedTensor


def _compressed(model: nn.Module, sparsity: float = 0.8) -> nn.Module:
    dz.prune_(model, dz.PruneConfig(sparsity=sparsity))
    dz.quantize_(model, dz.QuantizeConfig())  # the paper's 8 bits conv, 5 bits fc
    return model.eval()


def _fresh(model_cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(123)  # different weights from the saved model
    return model_cls().eval()


def test_pruned_quantized_model_round_trip(resnet: nn.Module, tmp_path: Path) -> None:
    model = _compressed(resnet)
    path = tmp_path / "net.dzip"
    report = save(model, path, layout="sparse", index_bits="paper")
    x = torch.randn(2, 1, 12, 12)
    expected = model(x)

    rows = {r.name: r for r in report.tensors}
    assert list(rows) == list(plain_state_dict(model))  # state-dict order
    assert rows["stem.weight"].encoding == "shared_sparse"
    assert rows["stem.weight"].gap_width == 8
    assert rows["head.weight"].encoding == "shared_sparse"
    assert rows["head.weight"].gap_width == 5
    assert rows["head.weight"].k is not None
    assert rows["head.weight"].k <= 32
    assert rows["head.bias"].encoding == "raw"
    assert rows["bn1.num_batches_tracked"].dtype == "int64"
    assert report.file_bytes == path.stat().st_size
    # floating-point tensors count in float32; integer buffers (num_batches_tracked) at their
    # own size
    assert report.float32_bytes == sum(
        t.numel() * (4 if t.is_floating_point() else t.element_size())
        for t in plain_state_dict(model).values()
    )
    assert report.ratio == pytest.approx(report.float32_bytes / report.file_bytes)
    assert report.ratio > 2.5  # 80% pruned, 5/8-bit indices; names/biases dominate a tiny net

    fresh = _fresh(type(resnet))
    assert not torch.equal(fresh(x), expected)
    load_model(fresh, path)
    assert torch.equal(fresh(x), expected)


def test_shared_weights_read_back_in_compressed_form(mlp: nn.Module, tmp_path: Path) -> None:
    model = _compressed(mlp, 0.7)
    shared = dz.export_shared(model)
    path = tmp_path / "mlp.dzip"
    save(model, path)
    c = read_compressed(path)
    assert set(c.shared) == set(shared) == {"0.weight", "3.weight"}
    for name, s in shared.items():
        got = c.shared[name]
        assert torch.equal(got.mask, s.mask)
        assert torch.equal(got.indices[s.mask], s.indices[s.mask])
        assert torch.equal(got.codebook, s.codebook)
    assert set(c.raw) == {"0.bias", "3.bias"}
    assert c.order == list(plain_state_dict(model))
    assert c.dtypes == dict.fromkeys(c.order, torch.float32)


def test_pruned_only_model_is_sparse_float(mlp: nn.Module, tmp_path: Path) -> None:
    dz.prune_(mlp, dz.PruneConfig(sparsity=0.9))
    path = tmp_path / "p.dzip"
    report = save(mlp, path)
    rows = {r.name: r for r in report.tensors}
    assert [r.name for r in report.tensors] == list(plain_state_dict(mlp))
    assert rows["0.weight"].encoding == rows["3.weight"].encoding == "sparse_float"
    assert rows["0.bias"].encoding == rows["3.bias"].encoding == "raw"
    assert rows["0.weight"].kept == round(0.1 * 20 * 64)
    state = load_state_dict(path)
    for name, t in plain_state_dict(mlp).items():
        assert torch.equal(state[name], t)


def test_plain_state_dict_is_raw_and_shared_tensors_are_shared(tmp_path: Path) -> None:
    idx = torch.tensor([[0, 1], [1, 1]], dtype=torch.uint8)
    state = {
        "w": SharedTensor(torch.tensor([-1.0, 2.0]), idx, torch.ones(2, 2, dtype=torch.bool)),
        "b": torch.tensor([0.5, 0.25], dtype=torch.float16),
        "n": torch.tensor(3),
    }
    report = save(state, tmp_path / "s.dzip")
    assert [r.encoding for r in report.tensors] == ["shared_dense", "raw", "raw"]
    back = load_state_dict(tmp_path / "s.dzip")
    assert back["w"].tolist() == [[-1.0, 2.0], [2.0, 2.0]]
    assert back["b"].dtype == torch.float16
    assert back["b"].tolist() == [0.5, 0.25]
    assert back["n"].dtype == torch.int64
    assert back["n"].shape == ()
    assert int(back["n"]) == 3
    with pytest.raises(ConfigError, match="entry 'x' is a list"):
        save({"x": [1, 2]}, tmp_path / "bad.dzip")  # type: ignore[dict-item]


def test_load_model_checks_keys_and_shapes_before_touching(mlp: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.dzip"
    save({"0.weight": torch.zeros(64, 20), "0.bias": torch.zeros(64), "extra": torch.ones(1)}, path)
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing 2 key\(s\): 3.weight, 3.bias") as info:
        load_model(mlp, path)
    assert "unexpected 1 key(s): extra" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())
    save({"0.weight": torch.zeros(64, 21)}, path)
    with pytest.raises(CheckpointError, match=r"'0.weight' has shape \(64, 21\)"):
        load_model(mlp, path, strict=False)
    save({"0.weight": torch.zeros(64, 20)}, path)
    load_model(mlp, path, strict=False)
    assert torch.equal(mlp[0].weight, torch.zeros(64, 20))
    assert torch.equal(mlp[3].weight, before["3.weight"])


def test_load_model_replaces_existing_masks(mlp: nn.Module, tmp_path: Path) -> None:
    source = _compressed(mlp)
    path = tmp_path / "m.dzip"
    save(source, path)
    target = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 4))
    dz.prune_(target, dz.PruneConfig(sparsity=0.5))  # other masks, to be dropped
    load_model(target, path)
    x = torch.randn(5, 20)
    assert torch.equal(target.eval()(x), source(x))


def test_index_bits_int_and_globs(resnet: nn.Module, tmp_path: Path) -> None:
    model = _compressed(resnet)
    r = save(model, tmp_path / "a.dzip", layout="sparse", index_bits=3)
    assert {t.gap_width for t in r.tensors if t.encoding == "shared_sparse"} == {3}
    r = save(model, tmp_path / "b.dzip", layout="sparse", index_bits={"conv*": 4, "head": 12})
    widths = {t.name: t.gap_width for t in r.tensors}
    assert widths["conv1.weight"] == widths["conv2.weight"] == 4
    assert widths["head.weight"] == 12
    smallest = save(model, tmp_path / "auto.dzip", layout="sparse")  # "auto" elsewhere
    assert widths["stem.weight"] == {t.name: t.gap_width for t in smallest.tensors}["stem.weight"]
    r = save(model, tmp_path / "p.dzip", layout="sparse", index_bits={"conv*": "paper", "*": 3})
    widths = {t.name: t.gap_width for t in r.tensors}
    assert widths["conv1.weight"] == 3  # the last matching glob wins
    r = save(model, tmp_path / "p.dzip", layout="sparse", index_bits={"*": 3, "conv*": "paper"})
    widths = {t.name: t.gap_width for t in r.tensors}
    assert (widths["conv1.weight"], widths["head.weight"]) == (8, 3)
    with pytest.raises(ConfigError, match="pattern 'nope' matches no tensor"):
        save(model, tmp_path / "c.dzip", index_bits={"nope": 4})
    with pytest.raises(ConfigError, match=r"from 1 to 16, 'auto' or 'paper', got 17"):
        save(model, tmp_path / "c.dzip", index_bits=17)
    with pytest.raises(
        ConfigError, match=r"index_bits\['conv\*'\] must be an integer from 1 to 16"
    ):
        save(model, tmp_path / "c.dzip", index_bits={"conv*": "wide"})  # type: ignore[dict-item]
    assert not (tmp_path / "c.dzip").exists()


@pytest.mark.parametrize("numel", [9, 72, 320, 2304])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.7])
@pytest.mark.parametrize("k", [2, 3, 16])
def test_auto_layout_writes_the_smallest_file(
    tmp_path: Path, numel: int, density: float, k: int
) -> None:
    """Layout and gap width "auto" give the smallest file of every layout and width: a
    sparse entry's extra directory bytes count, so a tie in the region goes to dense."""
    rng = np.random.default_rng(numel * k)
    mask = torch.from_numpy(rng.random(numel) < density)
    mask[0] = True
    shared = SharedTensor(
        torch.linspace(-1.0, 1.0, k),
        torch.from_numpy(rng.integers(0, k, numel).astype(np.uint8)),
        mask,
    )

    def size(name: str, **kwargs: object) -> int:
        with DzipWriter(tmp_path / f"{name}.dzip") as w:
            w.add_shared("t", shared, **kwargs)  # type: ignore[arg-type]
        return (tmp_path / f"{name}.dzip").stat().st_size

    fixed = {"dense": size("dense", layout="dense")}
    fixed.update({f"sparse {g}": size(f"s{g}", layout="sparse", gap_width=g) for g in range(1, 17)})
    assert size("auto") == min(fixed.values()), fixed


def test_auto_index_bits_is_the_smallest_width(resnet: nn.Module, tmp_path: Path) -> None:
    model = _compressed(resnet, 0.9)
    auto = {t.name: t for t in save(model, tmp_path / "a.dzip", layout="sparse").tensors}
    fixed = {
        width: {
            t.name: t
            for t in save(
                model, tmp_path / f"{width}.dzip", index_bits=width, layout="sparse"
            ).tensors
        }
        for width in range(1, 17)
    }
    sparse = [n for n, t in auto.items() if t.encoding == "shared_sparse"]
    assert len(sparse) >= 4
    for name in sparse:
        sizes = {w: fixed[w][name].bytes for w in fixed}
        assert auto[name].bytes == min(sizes.values()), (name, sizes)
        assert sizes[auto[name].gap_width] == auto[name].bytes
    # the widths differ between layers, and some are not the paper's
    assert len({auto[n].gap_width for n in sparse}) > 1
    paper = {
        t.name: t.bytes
        for t in save(model, tmp_path / "p.dzip", layout="sparse", index_bits="paper").tensors
    }
    assert sum(auto[n].bytes for n in sparse) < sum(paper[n] for n in sparse)
    fresh = _fresh(type(resnet))
    load_model(fresh, tmp_path / "a.dzip")
    x = torch.randn(2, 1, 12, 12)
    assert torch.equal(fresh(x), model(x))


def test_coder_choice_is_recorded(mlp: nn.Module, tmp_path: Path) -> None:
    model = _compressed(mlp)
    for coder in ("huffman", "ans", "raw"):
        r = save(model, tmp_path / f"{coder}.dzip", coder=coder)  # type: ignore[arg-type]
        coders = {p.coder for t in r.tensors for p in t.parts if p.coder is not None}
        assert coders == {coder}
        inspected = inspect(tmp_path / f"{coder}.dzip")
        assert [t.to_dict() for t in inspected.tensors] == [t.to_dict() for t in r.tensors]
    with pytest.raises(ConfigError, match="coder must be one of"):
        save(model, tmp_path / "x.dzip", coder="zip")  # type: ignore[arg-type]


def test_inspect_sections_add_up_to_the_file_size(resnet: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "r.dzip"
    report = save(_compressed(resnet), path, metadata={"task": "test"})
    info = inspect(path)
    size = path.stat().st_size
    assert sum(s.length for s in info.sections) == size == info.file_bytes
    pos = 0
    for s in info.sections:  # contiguous, in order
        assert s.offset == pos
        pos += s.length
    tensor_bytes = sum(t.bytes for t in info.tensors)
    assert tensor_bytes == info.section_bytes("tensor")
    assert report.overhead_bytes == size - tensor_bytes
    assert info.section_bytes("header") == 72
    assert info.version == (1, 0)
    assert info.metadata["user"] == {"task": "test"}
    json.dumps(info.to_dict())  # JSON-ready


def test_metadata_recipe_and_report(mlp: nn.Module, tmp_path: Path) -> None:
    model = mlp
    dz.prune_(model, dz.PruneConfig(sparsity=0.5))
    qreport = dz.quantize_(model, dz.QuantizeConfig(bits=3))
    path = tmp_path / "m.dzip"
    save(model, path, metadata={"a": "1"}, recipe={"bits": 3}, report=qreport)
    meta = inspect(path).metadata
    assert meta["user"] == {"a": "1"}
    assert meta["recipe"] == {"bits": 3}
    assert [layer["bits"] for layer in meta["report"]["layers"]] == [3, 3]
    with pytest.raises(ConfigError, match="metadata is not JSON-serialisable"):
        save(model, tmp_path / "x.dzip", recipe={"f": object()})


def test_same_model_twice_gives_identical_bytes(resnet: nn.Module, tmp_path: Path) -> None:
    model = _compressed(resnet)
    save(model, tmp_path / "a.dzip")
    save(model, tmp_path / "b.dzip")
    assert (tmp_path / "a.dzip").read_bytes() == (tmp_path / "b.dzip").read_bytes()


def test_writer_rejects_bad_tensors(tmp_path: Path) -> None:
    cb = torch.tensor([0.0, 1.0])
    ones = torch.ones(2, dtype=torch.bool)
    with pytest.raises(InvalidTensorError, match="w: an index reaches 5"):
        save({"w": SharedTensor(cb, torch.tensor([0, 5], dtype=torch.uint8), ones)}, tmp_path / "a")
    bad = SharedTensor(torch.tensor([float("nan")]), torch.zeros(2, dtype=torch.uint8), ones)
    with pytest.raises(InvalidTensorError, match="w: codebook holds NaN"):
        save({"w": bad}, tmp_path / "a")
    two_d = SharedTensor(cb.reshape(1, 2), torch.zeros(2, dtype=torch.uint8), ones)
    with pytest.raises(InvalidTensorError, match=r"w: codebook must be 1-D float with 1\.\.256"):
        save({"w": two_d}, tmp_path / "a")
    idx = torch.zeros(2, dtype=torch.uint8)
    with (
        DzipWriter(tmp_path / "b") as w,
        pytest.raises(
            InvalidTensorError, match=r"w: a shared tensor decodes to float32/.*, not torch\.int32"
        ),
    ):
        w.add_shared("w", SharedTensor(cb, idx, ones), dtype=torch.int32)
    with pytest.raises(InvalidTensorError, match="rank 9 exceeds the cap of 8"):
        save({"t": torch.zeros((1,) * 9)}, tmp_path / "a")
    with pytest.raises(InvalidTensorError, match=r"dtype torch\.complex64 cannot be stored"):
        save({"t": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_codebook_values_beyond_float32_are_refused(tmp_path: Path) -> None:
    """Codebooks are stored as float32: 1e39 would be stored as infinity, silently."""
    cb = torch.tensor([-1.0, 1e39], dtype=torch.float64)
    shared = SharedTensor(cb, torch.tensor([0, 1], dtype=torch.uint8), torch.ones(2).bool())
    beyond = r"codebook entry 1 is 1e\+39, beyond float32's range"
    with pytest.raises(InvalidTensorError, match=f"w: {beyond}"):
        save({"w": shared}, tmp_path / "a.dzip")
    bloomier = build_filter(np.array([0]), np.array([1]), n_positions=2, num_values=2, cell_bits=4)
    with DzipWriter(tmp_path / "b.dzip") as w:
        with pytest.raises(InvalidTensorError, match=f"s: {beyond}"):
            w.add_shared("s", shared, dtype=torch.float64)
        with pytest.raises(InvalidTensorError, match=f"b: {beyond}"):
            w.add_bloomier("b", cb, bloomier.to_bytes(), (2,), dtype=torch.float64)
        fine = SharedTensor(cb.clamp(max=3e38), shared.indices, shared.mask)
        w.add_shared("s", fine, dtype=torch.float64)
    assert not (tmp_path / "a.dzip").exists()
    assert load_state_dict(tmp_path / "b.dzip")["s"].tolist() == [-1.0, float(np.float32(3e38))]


def test_to_safetensors_refuses_a_tensor_named_like_its_metadata(tmp_path: Path) -> None:
    """safetensors keeps its metadata under ``__metadata__``: such a tensor cannot be written."""
    src, dest = tmp_path / "m.dzip", tmp_path / "m.safetensors"
    save({"__metadata__": torch.ones(2), "x": torch.ones(1)}, src, metadata={"a": "b"})
    with pytest.raises(
        InvalidTensorError, match=r"m\.dzip: tensor '__metadata__' cannot be written"
    ):
        to_safetensors(src, dest)
    assert not dest.exists()
    dest.write_bytes(b"old")
    with pytest.raises(InvalidTensorError, match=r"to .*m\.safetensors: safetensors reserves"):
        to_safetensors(src, dest)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dzip", "m.safetensors"]
    save({"x": torch.ones(1)}, src, metadata={"a": "b"})
    assert torch.equal(load_file(to_safetensors(src, dest))["x"], torch.ones(1))


def test_transformer_round_trip(transformer: nn.Module, tmp_path: Path) -> None:
    dz.prune_(transformer, dz.PruneConfig(sparsity=0.5, include=("*in_proj_weight", "*linear*")))
    dz.quantize_(transformer, dz.QuantizeConfig(bits=4, include=("*linear*",)))
    transformer.eval()
    path = tmp_path / "t.dzip"
    save(transformer, path)
    x = torch.randint(0, 50, (2, 7))
    fresh = type(transformer)().eval()
    load_model(fresh, path)
    assert torch.allclose(fresh(x), transformer(x), atol=0, rtol=0)


def test_a_model_that_is_itself_the_compressed_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lin = _compressed(nn.Linear(256, 128))
    report = save(lin, tmp_path / "lin.dzip")
    encodings = {t.name: t.encoding for t in report.tensors}
    assert encodings["bias"] == "raw"
    assert encodings["weight"].startswith("shared_")
    assert report.skipped == ()
    # the float32 model is 131,584 bytes; 20% kept at 5 bits is far smaller
    assert (tmp_path / "lin.dzip").stat().st_size < 131_584 // 5
    fresh = nn.Linear(256, 128)
    load_model(fresh, tmp_path / "lin.dzip", strict=True)
    assert torch.equal(fresh.weight, lin.weight)
    assert torch.equal(fresh.bias, lin.bias)


def test_auto_index_bits_for_pruned_float_weights(mlp: nn.Module, tmp_path: Path) -> None:
    dz.prune_(mlp, dz.PruneConfig(sparsity=0.97))
    auto = {t.name: t for t in save(mlp, tmp_path / "a.dzip").tensors}
    for name in ("0.weight", "3.weight"):
        assert auto[name].encoding == "sparse_float"
        sizes = {
            w: {t.name: t for t in save(mlp, tmp_path / "f.dzip", index_bits=w).tensors}[name].bytes
            for w in range(1, 17)
        }
        assert auto[name].bytes == min(sizes.values()), (name, sizes)
    state = load_state_dict(tmp_path / "a.dzip")
    for name, t in plain_state_dict(mlp).items():
        assert torch.equal(state[name], t)


def test_config_index_bits_range_is_the_formats() -> None:
    """Recipes and the API check widths in config, which sits below the format it must agree
    with: every width config accepts must be writable, and every writable width accepted."""
    from deepzip.config import INDEX_BITS_RANGE, check_index_bits
    from deepzip.format.dzip_spec import MAX_GAP_WIDTH, MIN_GAP_WIDTH

    assert INDEX_BITS_RANGE == (MIN_GAP_WIDTH, MAX_GAP_WIDTH)
    assert check_index_bits("w", MIN_GAP_WIDTH) == MIN_GAP_WIDTH
    assert check_index_bits("w", MAX_GAP_WIDTH) == MAX_GAP_WIDTH
    for bad in (MIN_GAP_WIDTH - 1, MAX_GAP_WIDTH + 1):
        with pytest.raises(ConfigError, match=f"w must be an integer .* got {bad}"):
            check_index_bits("w", bad)


class _Decoder(nn.Module):
    """A convolution, a grouped transposed convolution and a head: a decoder-shaped net."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, groups=2)
        self.head = nn.Linear(4 * 17 * 17, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up(torch.relu(self.conv(x)))).flatten(1))


def test_transposed_convolutions_are_compressed_as_convolutions(tmp_path: Path) -> None:
    from deepzip.runtime import load_compressed, runtime_report

    torch.manual_seed(0)
    model = _Decoder().eval()
    pruned = dz.prune_(model, dz.PruneConfig(sparsity=0.8))
    assert [layer.name for layer in pruned.layers] == ["conv.weight", "up.weight", "head.weight"]
    quantized = dz.quantize_(model, dz.QuantizeConfig())
    bits = {layer.name: layer.bits for layer in quantized.layers}
    assert bits == {"conv.weight": 8, "up.weight": 8, "head.weight": 5}  # conv_bits, fc_bits
    path = tmp_path / "decoder.dzip"
    report = save(model, path, layout="sparse", index_bits="paper")
    rows = {r.name: r for r in report.tensors}
    assert (rows["up.weight"].encoding, rows["up.weight"].gap_width) == ("shared_sparse", 8)
    assert (rows["head.weight"].encoding, rows["head.weight"].gap_width) == ("shared_sparse", 5)
    x = torch.randn(3, 2, 10, 10)
    expected = model(x)
    fresh = _fresh(_Decoder)
    load_model(fresh, path, strict=True)
    assert torch.equal(fresh(x), expected)
    # the runtime has no sparse transposed convolution: it decodes that layer dense, and says why
    runtime = load_compressed(path, _fresh(_Decoder))
    assert type(runtime.up) is nn.ConvTranspose2d
    reasons = {layer.name: layer.reason for layer in runtime_report(runtime).layers}
    assert "ConvTranspose2d has no sparse runtime form" in reasons["up.weight"]
    torch.testing.assert_close(runtime(x), expected, rtol=1e-5, atol=1e-5)
