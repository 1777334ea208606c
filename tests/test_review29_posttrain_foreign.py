"""Post-training compression of foreign checkpoints (review 29): a user's own ``.pt`` files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.format import inspect, load_state_dict
from deepzip.posttrain import compress_checkpoint, iter_checkpoint
from deepzip.quantize.scalar import uniform_quantize


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "module.fc.weight": torch.randn(32, 16, generator=g),
        "module.fc.bias": torch.randn(32, generator=g),
        "module.bn.num_batches_tracked": torch.tensor(5),
    }


def test_a_legacy_format_pt_file_is_read(tmp_path: Path) -> None:
    # torch.save(..., _use_new_zipfile_serialization=False) (and every file of PyTorch < 1.6)
    # was refused: "cannot be read with torch.load(weights_only=True): mmap can only be used..."
    state = _state()
    tied = {**state, "module.head.weight": state["module.fc.weight"]}
    torch.save(tied, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(tied, tmp_path / "zip.pt")
    report = compress_checkpoint(tmp_path / "legacy.pt", tmp_path / "legacy.dzip", min_elements=0)
    compress_checkpoint(tmp_path / "zip.pt", tmp_path / "zip.dzip", min_elements=0)
    assert (tmp_path / "legacy.dzip").read_bytes() == (tmp_path / "zip.dzip").read_bytes()
    assert {r.name: r.alias_of for r in report.tensors}["module.head.weight"] == "module.fc.weight"
    assert [n for n, _ in iter_checkpoint(tmp_path / "legacy.pt")] == list(tied)


def test_saved_parameters_compress_without_autograd_warnings(tmp_path: Path) -> None:
    # dict(model.named_parameters()) comes back as nn.Parameters requiring grad: the default
    # quantizer warned "Converting a tensor with requires_grad=True to a scalar"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 8))
    params = dict(model.named_parameters())
    params["tied"] = params["0.weight"]
    torch.save(params, tmp_path / "p.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = compress_checkpoint(tmp_path / "p.pt", tmp_path / "p.dzip", min_elements=0)
    assert {r.name: r.alias_of for r in report.tensors}["tied"] == "0.weight"
    back = load_state_dict(tmp_path / "p.dzip")
    w = params["1.weight"].detach()
    q = uniform_quantize(w.flatten(), 32)
    assert torch.equal(back["1.weight"], q.centroids[q.labels].reshape(w.shape))
    assert torch.equal(back["0.bias"], params["0.bias"].detach())


def test_a_bad_layout_is_refused_when_nothing_is_quantized(tmp_path: Path) -> None:
    # the writer checks the layout of a shared tensor only: with none it was silently ignored
    torch.save({"b": torch.randn(32)}, tmp_path / "b.pt")
    with pytest.raises(ConfigError, match="layout must be one of 'auto', 'dense', 'sparse'"):
        compress_checkpoint(tmp_path / "b.pt", tmp_path / "b.dzip", layout="bogus")  # type: ignore[arg-type]
    assert not (tmp_path / "b.dzip").exists()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"a": None}, r"metadata must map strings to strings, got 'a': None"),
        ({1: "x", "1": "y"}, r"metadata must map strings to strings, got 1: 'x'"),
        (["ab"], r"metadata must be a mapping of strings to strings, got list"),
    ],
)
def test_metadata_that_is_not_strings_is_refused(
    tmp_path: Path, metadata: object, message: str
) -> None:
    # it was converted with str(): None read back as "None", {1: .., "1": ..} lost an entry,
    # and a list raised AttributeError
    torch.save(_state(), tmp_path / "m.pt")
    dest = tmp_path / "m.dzip"
    with pytest.raises(ConfigError, match=message):
        compress_checkpoint(tmp_path / "m.pt", dest, metadata=metadata)  # type: ignore[arg-type]
    assert not dest.exists()
    compress_checkpoint(tmp_path / "m.pt", dest, metadata={"k": "v"})
    assert inspect(dest).metadata["user"] == {"k": "v"}


def test_meta_and_sparse_tensors_are_typed_errors_naming_them(tmp_path: Path) -> None:
    # a selected 2-D tensor on the meta device raised RuntimeError "Tensor.item() cannot be
    # called on meta tensors", a sparse one NotImplementedError from aten::ne
    torch.save({"w": torch.empty(32, 32, device="meta")}, tmp_path / "meta.pt")
    with pytest.raises(InvalidTensorError, match="w: a tensor on the meta device"):
        compress_checkpoint(tmp_path / "meta.pt", tmp_path / "o.dzip", sparsity=0.5)
    torch.save({"s": torch.randn(32, 32).to_sparse()}, tmp_path / "sparse.pt")
    for bits in (4, None):
        with pytest.raises(InvalidTensorError, match=r"s: only strided \(dense\) tensors"):
            compress_checkpoint(tmp_path / "sparse.pt", tmp_path / "o.dzip", bits=bits)
    assert not (tmp_path / "o.dzip").exists()


def test_a_float64_tensor_beyond_float32_range_is_kept_raw_with_its_reason(
    tmp_path: Path,
) -> None:
    # the float32 levels made it infinite: InvalidTensorError "values: 1 non-finite value(s)"
    # for a finite tensor, not naming it
    g = torch.Generator().manual_seed(0)
    big = torch.randn(32, 32, generator=g, dtype=torch.float64)
    big[0, 0] = 1e300
    fine = torch.randn(32, 32, generator=g, dtype=torch.float64)
    torch.save({"big": big, "fine": fine}, tmp_path / "d.pt")
    report = compress_checkpoint(tmp_path / "d.pt", tmp_path / "d.dzip")
    assert "float64 values beyond float32's range" in dict(report.skipped)["big"]
    assert {r.name: r.encoding for r in report.tensors} == {"big": "raw", "fine": "shared_dense"}
    back = load_state_dict(tmp_path / "d.dzip")
    assert torch.equal(back["big"], big)
    assert back["fine"].dtype == torch.float64
    # without quantization it is pruned and stored in float64 as any other
    compress_checkpoint(tmp_path / "d.pt", tmp_path / "f.dzip", bits=None, sparsity=0.5)
    kept = load_state_dict(tmp_path / "f.dzip")["big"]
    assert float(kept[0, 0]) == 1e300
    # an infinity is still an error naming the tensor
    big[0, 1] = float("inf")
    torch.save({"big": big}, tmp_path / "inf.pt")
    with pytest.raises(InvalidTensorError, match="big: 1 non-finite"):
        compress_checkpoint(tmp_path / "inf.pt", tmp_path / "i.dzip", min_elements=0)


def test_float8_tensors_are_kept_raw_with_a_true_reason(tmp_path: Path) -> None:
    # they were listed as "not a floating-point tensor (float8_e4m3fn)"
    w = torch.randn(32, 32).to(torch.float8_e4m3fn)
    torch.save({"w": w, "n": torch.tensor(3)}, tmp_path / "f8.pt")
    report = compress_checkpoint(tmp_path / "f8.pt", tmp_path / "f8.dzip")
    skipped = dict(report.skipped)
    assert skipped["w"] == (
        "float8_e4m3fn tensor (only float32, float16, bfloat16 and float64 are compressed)"
    )
    assert skipped["n"] == "not a floating-point tensor (int64)"
    back = load_state_dict(tmp_path / "f8.dzip")["w"]
    assert back.dtype == torch.float8_e4m3fn
    assert torch.equal(back.view(torch.uint8), w.view(torch.uint8))


def test_progress_must_be_callable_and_min_elements_not_negative(tmp_path: Path) -> None:
    # progress=3 failed with a plain TypeError at the first tensor; min_elements=-1 was taken as 0
    from deepzip.posttrain import PostTrainConfig

    src = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(32, 32)}, str(src))
    with pytest.raises(ConfigError, match="progress must be a callable"):
        compress_checkpoint(src, tmp_path / "m.dzip", progress=3)  # type: ignore[arg-type]
    assert not (tmp_path / "m.dzip").exists()
    with pytest.raises(ConfigError, match=r"min_elements must be an integer >= 0, got -1"):
        PostTrainConfig(min_elements=-1)
