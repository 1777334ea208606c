"""Review 28: deepzip on architectures other than LeNet, end to end.

prune -> quantize -> save -> load_model / load_compressed on convolutions of every kind,
recurrent and attention layers, embeddings, normalisations, buffers and non-float32 dtypes;
the float32 size of integer and bool tensors; float16 files loaded into float32 models; meta
devices refused with typed errors.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.cli import main
from deepzip.errors import CheckpointError, InvalidTensorError
from deepzip.format import load_checkpoint, load_state_dict, save_checkpoint
from deepzip.format.dzip_writer import DzipWriter
from deepzip.runtime import RuntimePolicy, load_compressed, runtime_report
from deepzip.zoo.resnet import TinyResNet


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Embedding(50, 16, padding_idx=0)
        self.bag = nn.EmbeddingBag(50, 16, mode="mean")
        self.fc = nn.Linear(16, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(self.e(x).mean(1) + self.bag(x))
        return y


class _Recurrent(nn.Module):
    def __init__(self, cls: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.r = cls(8, 16, num_layers=2, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(self.r(x)[0])
        return y


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.MultiheadAttention(16, 4, batch_first=True)
        self.t = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(self.t(self.a(x, x, x)[0]))
        return y


class _Buffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(20, 20)
        self.register_buffer("scale", torch.rand(20))
        self.register_buffer("tmp", torch.rand(20), persistent=False)
        self.register_buffer("ids", torch.arange(300))
        self.register_buffer("flags", torch.arange(300) % 3 == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(x) * self.scale + self.tmp
        return y


Case = tuple[Callable[[], nn.Module], Callable[[], torch.Tensor], tuple[str, ...]]

CASES: dict[str, Case] = {
    "conv1d_reflect_circular": (
        lambda: nn.Sequential(
            nn.Conv1d(3, 8, 5, padding=2, padding_mode="reflect"),
            nn.ReLU(),
            nn.Conv1d(8, 4, 3, dilation=2, padding="same", padding_mode="circular"),
        ),
        lambda: torch.randn(2, 3, 20),
        (),
    ),
    "conv3d": (
        lambda: nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 4, 3)),
        lambda: torch.randn(2, 2, 6, 6, 6),
        (),
    ),
    "conv_transpose2d": (
        lambda: nn.Sequential(
            nn.ConvTranspose2d(4, 8, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 3, 3),
        ),
        lambda: torch.randn(2, 4, 5, 5),
        (),
    ),
    "grouped_depthwise": (
        lambda: nn.Sequential(
            nn.Conv2d(8, 16, 3, groups=4, padding=1),
            nn.Conv2d(16, 16, 3, groups=16, padding=1, padding_mode="reflect"),
            nn.Conv2d(16, 8, 1),
        ),
        lambda: torch.randn(2, 8, 7, 7),
        (),
    ),
    "dilated_strided_padded": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, dilation=2, padding=(2, 1), padding_mode="circular"),
            nn.Conv2d(16, 8, (3, 5), stride=(1, 2), padding=(1, 2), padding_mode="reflect"),
            nn.Conv2d(8, 8, 4, padding="same", padding_mode="replicate", bias=False),
        ),
        lambda: torch.randn(2, 3, 15, 13),
        (),
    ),
    "linear_norms": (
        lambda: nn.Sequential(
            nn.Linear(30, 40, bias=False),
            nn.LayerNorm(40),
            nn.Linear(40, 10),
            nn.LayerNorm(10, elementwise_affine=False),
        ),
        lambda: torch.randn(3, 30),
        (),
    ),
    "conv_norms": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3),
            nn.GroupNorm(2, 8),
            nn.Conv2d(8, 8, 3),
            nn.BatchNorm2d(8, affine=False),
            nn.Conv2d(8, 8, 1),
            nn.BatchNorm2d(8, track_running_stats=False),
        ),
        lambda: torch.randn(2, 3, 9, 9),
        (),
    ),
    "embeddings": (_Embeddings, lambda: torch.randint(0, 50, (3, 6)), ("e", "bag", "fc")),
    "lstm": (lambda: _Recurrent(nn.LSTM), lambda: torch.randn(2, 5, 8), ("r.weight_*", "fc")),
    "gru": (lambda: _Recurrent(nn.GRU), lambda: torch.randn(2, 5, 8), ("r.weight_*", "fc")),
    "attention": (
        _Attention,
        lambda: torch.randn(2, 5, 16),
        ("a.in_proj_weight", "*out_proj", "t.self_attn.in_proj_weight", "t.linear*", "fc"),
    ),
    "buffers": (_Buffers, lambda: torch.randn(2, 20), ()),
    "tiny_resnet": (TinyResNet, lambda: torch.randn(2, 1, 28, 28), ()),
}


def _compress(
    model: nn.Module, include: tuple[str, ...], method: str
) -> tuple[nn.Module, nn.Module]:
    """``(plain copy, pruned and quantized model)``, both in eval mode."""
    model.eval()
    fresh = copy.deepcopy(model)
    dz.prune_(model, dz.PruneConfig(sparsity=0.5, include=include))
    dz.quantize_(model, dz.QuantizeConfig(bits=4, method=method, include=include))  # type: ignore[arg-type]
    return fresh, model


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    return torch.allclose(a.float(), b.float(), atol=tol, rtol=1e-3)


@pytest.mark.parametrize("method", ["kmeans", "uniform"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_architecture_round_trip(case: str, method: str, tmp_path: Path) -> None:
    build, example, include = CASES[case]
    torch.manual_seed(0)
    fresh, model = _compress(build(), include, method)
    x = example()
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "m.dzip"
    report = dz.save(model, path)
    assert any(t.encoding.startswith("shared") for t in report.tensors)
    loaded = dz.load_model(copy.deepcopy(fresh), path)
    # every tensor bit-exact: the decoded dense model is the quantized one
    expected_state = {k: v for k, v in dz.load_state_dict(path).items()}
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, expected_state[name]), name
    runtime = load_compressed(path, copy.deepcopy(fresh), policy=RuntimePolicy(mode="sparse"))
    with torch.no_grad():
        assert _close(loaded(x), expected)
        assert _close(runtime(x), expected)
    for layer in runtime_report(runtime).layers:  # a layer kept dense says why
        assert layer.reason
        if layer.form == "dense":
            assert "mode=" not in layer.reason


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", ["dilated_strided_padded", "linear_norms", "tiny_resnet"])
def test_low_and_high_precision_round_trip(case: str, dtype: torch.dtype, tmp_path: Path) -> None:
    build, example, include = CASES[case]
    torch.manual_seed(0)
    fresh, model = _compress(build().to(dtype), include, "kmeans")
    x = example().to(dtype)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "m.dzip"
    dz.save(model, path)
    dtypes = {t.dtype for t in dz.inspect(path).tensors} - {"int64"}  # num_batches_tracked
    assert dtypes == {str(dtype).removeprefix("torch.")}
    loaded = dz.load_model(copy.deepcopy(fresh), path)
    runtime = load_compressed(path, copy.deepcopy(fresh), policy=RuntimePolicy(mode="sparse"))
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
        y = runtime(x)
    assert y.dtype == dtype
    assert _close(y, expected, dtype)


def test_unsupported_layers_are_reported_with_accurate_reasons(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(2, 4, 3),
        nn.Flatten(0, -1),
    )
    attention = _Attention()
    fresh = nn.ModuleDict({"c3": model, "att": attention, "grp": nn.Conv2d(4, 4, 3, groups=2)})
    compressed = copy.deepcopy(fresh)
    dz.quantize_(compressed, dz.QuantizeConfig(bits=4, include=("*weight",)))
    path = tmp_path / "m.dzip"
    dz.save(compressed, path)
    runtime = load_compressed(path, copy.deepcopy(fresh), policy=RuntimePolicy(mode="sparse"))
    reasons = {layer.name: layer.reason for layer in runtime_report(runtime).layers}
    assert "Conv3d has no sparse runtime form" in reasons["c3.0.weight"]
    assert "groups=2" in reasons["grp.weight"]
    assert "in_proj_weight has no sparse runtime form" in reasons["att.a.in_proj_weight"]
    assert "subclass of Linear" in reasons["att.a.out_proj.weight"]
    assert "child of TransformerEncoderLayer" in reasons["att.t.linear1.weight"]
    assert reasons["att.fc.weight"] == "mode='sparse'"
    skipped = dict((s.name, s.reason) for s in dz.select_targets(_Recurrent(nn.LSTM)).skipped)
    assert skipped["r.weight_ih_l0"] == (
        "LSTM.weight_ih_l0: not a default target type; name it in include"
    )


# ------------------------------------------------------- the float32 size of non-float tensors


def _buffers_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    src = tmp_path / "buffers.pt"
    torch.save(_Buffers().state_dict(), src)
    return src


def _honest_size(state: dict[str, torch.Tensor]) -> int:
    return sum(
        t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in state.values()
    )


def test_compress_checkpoint_counts_integer_and_bool_tensors_at_their_own_size(
    tmp_path: Path,
) -> None:
    src = _buffers_checkpoint(tmp_path)
    state = torch.load(src, weights_only=True)
    report = dz.compress_checkpoint(src, tmp_path / "b.dzip", sparsity=0.5, bits=4)
    # fc.weight, fc.bias and scale in float32, ids as int64 (8 bytes), flags as bool (1 byte)
    assert report.float32_bytes == 4 * (400 + 20 + 20) + 8 * 300 + 300 == _honest_size(state)
    assert report.ratio == pytest.approx(report.float32_bytes / report.file_bytes)
    info = dz.inspect(tmp_path / "b.dzip")
    assert info.float32_bytes == report.float32_bytes
    assert info.to_dict()["float32_bytes"] == report.float32_bytes


def test_save_counts_integer_buffers_at_their_own_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    report = dz.save(model, tmp_path / "r.dzip")
    state = model.state_dict()
    assert any(t.dtype == torch.int64 for t in state.values())  # num_batches_tracked
    assert report.float32_bytes == _honest_size(state) == report.original_bytes
    half = dz.save(model.half(), tmp_path / "h.dzip")  # float tensors count as float32
    assert half.float32_bytes == report.float32_bytes
    assert half.original_bytes < half.float32_bytes


def test_cli_compress_reports_the_honest_float32_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _buffers_checkpoint(tmp_path)
    out = tmp_path / "b.dzip"
    report_json = tmp_path / "b.json"
    argv = ["compress", str(src), "-o", str(out), "--json", str(report_json), "--no-progress"]
    assert main(argv) == 0
    expected = _honest_size(torch.load(src, weights_only=True))
    assert f"{expected:,} B float32" in capsys.readouterr().out
    assert json.loads(report_json.read_text())["float32_bytes"] == expected
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["float32_bytes"] == expected


# ------------------------------------------------- float16 files loaded into float32 models


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_half_file_into_float32_model_matches_load_model(
    dtype: torch.dtype, mode: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))

    src = tmp_path / "half.pt"
    torch.save(build().to(dtype).state_dict(), src)
    path = tmp_path / "half.dzip"
    dz.compress_checkpoint(src, path, bits=4, quantizer="kmeans", min_elements=1)
    dense = dz.load_model(build(), path)
    runtime = load_compressed(path, build(), policy=RuntimePolicy(mode=mode))  # type: ignore[arg-type]
    x = torch.randn(4, 64)
    with torch.no_grad():
        if mode == "dense":  # decoded as the file decodes: rounded to its dtype once
            for name, t in dense.state_dict().items():
                assert torch.equal(runtime.state_dict()[name], t), name
            assert torch.equal(runtime(x), dense(x))
        else:
            assert torch.allclose(runtime(x), dense(x), atol=1e-5, rtol=1e-5)
    # the file's tensors read back in its dtype; the runtime keeps the shared form as stored
    assert {t.dtype for t in load_state_dict(path).values()} == {dtype}


# ---------------------------------------------------------------- the meta device refused


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = _mlp()
    dz.prune_(model, dz.PruneConfig(sparsity=0.5))
    dz.quantize_(model, dz.QuantizeConfig(bits=4))
    path = tmp_path / "mlp.dzip"
    dz.save(model, path)
    return path


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_loading_into_a_meta_model_is_refused(mlp_file: Path, mode: str) -> None:
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(CheckpointError, match=r"'0\.weight'.*meta device"):
        dz.load_model(model, mlp_file)
    policy = RuntimePolicy(mode=mode)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"'0\.weight'.*meta device"):
        load_compressed(mlp_file, model, policy=policy)
    assert all(t.is_meta for t in model.state_dict().values())  # untouched


def test_compress_modules_on_a_meta_model_is_refused(mlp_file: Path) -> None:
    from deepzip.format.dzip_reader import read_compressed
    from deepzip.runtime import compress_modules_

    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(CheckpointError, match=r"'0\.weight'.*meta device"):
        compress_modules_(model, read_compressed(mlp_file).shared)


def test_load_checkpoint_into_a_meta_model_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(_mlp(), ckpt)
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(CheckpointError, match=r"'0\.weight'.*meta device"):
        load_checkpoint(model, ckpt)


def test_saving_a_meta_model_is_a_typed_error(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(InvalidTensorError, match=r"0\.weight.*meta device"):
        dz.save(model, tmp_path / "m.dzip")
    with pytest.raises(InvalidTensorError, match=r"0\.weight.*meta device"):
        save_checkpoint(model, tmp_path / "m.safetensors")
    meta = torch.empty(4, 4, device="meta")
    with (
        pytest.raises(InvalidTensorError, match=r"w: .*meta device"),
        DzipWriter(tmp_path / "w.dzip") as w,
    ):
        w.add_sparse_float("w", meta, torch.ones(4, 4, dtype=torch.bool))
    assert not (tmp_path / "m.dzip").exists()
    assert not (tmp_path / "m.safetensors").exists()
    assert not (tmp_path / "w.dzip").exists()
