"""Post-training compression of checkpoints (safetensors, .pt, HF directories) and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepzip.cli import main
from deepzip.errors import CheckpointError, ConfigError, InvalidTensorError
from deepzip.format import DzipReader, inspect, load_state_dict
from deepzip.format.api import IndexBits
from deepzip.posttrain import compress_checkpoint, iter_checkpoint
from deepzip.quantize.scalar import uniform_quantize


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lap = torch.distributions.Laplace(0.0, 0.05)
    torch.manual_seed(0)
    return {
        "embed.weight": lap.sample((50, 16)).to(torch.bfloat16),
        "layers.0.linear.weight": lap.sample((32, 16)),
        "layers.0.linear.bias": torch.randn(32, generator=g),
        "layers.0.norm.weight": torch.ones(32),
        "layers.0.norm.num_batches_tracked": torch.tensor(7),
        "conv.weight": lap.sample((8, 4, 3, 3)).to(torch.float16),
        "tiny.weight": torch.randn(4, 4, generator=g),
    }


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(_state(), str(path))
    return path


def test_compress_quantizes_matrices_and_keeps_the_rest(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.dzip"
    report = compress_checkpoint(ckpt, out, bits=4, quantizer="uniform")
    src = _state()
    rows = {r.name: r for r in report.tensors}
    assert set(rows) == set(src)
    compressed = {n for n, r in rows.items() if r.encoding != "raw"}
    assert compressed == {"embed.weight", "layers.0.linear.weight", "conv.weight"}
    skipped = dict(report.skipped)
    assert "1-D tensor" in skipped["layers.0.linear.bias"]
    assert "not a floating-point tensor (int64)" in skipped["layers.0.norm.num_batches_tracked"]
    assert "fewer than min_elements=256" in skipped["tiny.weight"]
    assert report.file_bytes == out.stat().st_size

    back = load_state_dict(out)
    for name, t in src.items():
        assert back[name].dtype == t.dtype
        assert back[name].shape == t.shape
        if name not in compressed:
            assert torch.equal(back[name], t)
            continue
        # the uniform quantizer of the tensor's own values, computed directly
        q = uniform_quantize(t.float().flatten(), 16)
        expected = q.centroids[q.labels].reshape(t.shape).to(t.dtype)
        assert torch.equal(back[name], expected)
        assert back[name].float().unique().numel() <= 16


def test_pruning_keeps_the_largest_magnitudes(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.dzip"
    report = compress_checkpoint(
        ckpt, out, sparsity=0.75, bits=3, quantizer="kmeans", include=("layers.*",)
    )
    w = _state()["layers.0.linear.weight"]
    row = next(r for r in report.tensors if r.name == "layers.0.linear.weight")
    assert row.kept == 128  # 25% of 512, exactly
    with DzipReader(out) as r:
        shared = r.shared("layers.0.linear.weight")
    threshold = w.abs().flatten().sort().values[-128]
    assert torch.equal(shared.mask, w.abs() >= threshold)
    assert shared.codebook.numel() <= 8
    assert dict(report.skipped)["embed.weight"] == "not matched by any include pattern"


def test_prune_only_stores_sparse_float(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.dzip"
    report = compress_checkpoint(ckpt, out, sparsity=0.5, bits=None, exclude=("conv*",))
    rows = {r.name: r for r in report.tensors}
    assert rows["layers.0.linear.weight"].encoding == "sparse_float"
    assert rows["conv.weight"].encoding == "raw"
    w = _state()["layers.0.linear.weight"]
    back = load_state_dict(out)["layers.0.linear.weight"]
    kept = back != 0
    assert int(kept.sum()) == 256
    assert torch.equal(back[kept], w[kept])  # surviving values exact


def test_levels_and_layer_bits(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "l.dzip"
    report = compress_checkpoint(ckpt, out, levels=12, layer_bits={"conv": 2})
    rows = {r.name: r for r in report.tensors}
    assert rows["layers.0.linear.weight"].k is not None
    assert rows["layers.0.linear.weight"].k <= 12
    assert rows["conv.weight"].k is not None
    assert rows["conv.weight"].k <= 4
    meta = inspect(out).metadata
    assert meta["recipe"]["levels"] == 12
    assert meta["report"]["layers"]["conv.weight"]["levels"] == 4


def test_same_checkpoint_from_pt_and_hf_directories(ckpt: Path, tmp_path: Path) -> None:
    state = _state()
    torch.save(state, tmp_path / "model.pt")
    shards = tmp_path / "hf"
    shards.mkdir()
    names = list(state)
    save_file({k: state[k] for k in names[:3]}, str(shards / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in names[3:]}, str(shards / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 + (i >= 3)}-of-00002.safetensors"
                                            for i, k in enumerate(names)}}  # fmt: skip
    (shards / "model.safetensors.index.json").write_text(json.dumps(index))
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file(state, str(plain / "weights.safetensors"))

    reference = load_state_dict(_compress(ckpt, tmp_path / "a.dzip"))
    for src in (tmp_path / "model.pt", shards, plain):
        got = load_state_dict(_compress(src, tmp_path / "b.dzip"))
        assert set(got) == set(reference)
        for name in reference:
            assert torch.equal(got[name], reference[name]), (src, name)


def _compress(src: Path, dest: Path) -> Path:
    compress_checkpoint(src, dest, sparsity=0.2, bits=5)
    return dest


def test_bad_inputs(tmp_path: Path, ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        compress_checkpoint(tmp_path / "nope.safetensors", tmp_path / "x.dzip")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint type '\.txt'"):
        compress_checkpoint(tmp_path / "x.txt", tmp_path / "x.dzip")
    torch.save({"w": torch.zeros(2), "opt": {"lr": 0.1}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="entry 'opt' is not a tensor"):
        compress_checkpoint(tmp_path / "bad.pt", tmp_path / "x.dzip")
    (tmp_path / "evil.pt").write_bytes(b"\x80\x04\x95not a pickle")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        compress_checkpoint(tmp_path / "evil.pt", tmp_path / "x.dzip")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors\.index\.json"):
        compress_checkpoint(empty, tmp_path / "x.dzip")
    (empty / "model.safetensors.index.json").write_text('{"weight_map": {"w": "../x.txt"}}')
    with pytest.raises(CheckpointError, match="is not a file in"):
        compress_checkpoint(empty, tmp_path / "x.dzip")
    with pytest.raises(ConfigError, match=r"include pattern 'mlp\.\*' matches no tensor"):
        compress_checkpoint(ckpt, tmp_path / "x.dzip", include=("mlp.*",))
    with pytest.raises(ConfigError, match="sparsity must be a number in"):
        compress_checkpoint(ckpt, tmp_path / "x.dzip", sparsity=1.0)
    with pytest.raises(ConfigError, match="levels must be an integer from 2 to 256"):
        compress_checkpoint(ckpt, tmp_path / "x.dzip", levels=300)
    nan = _state()
    nan["layers.0.linear.weight"][3, 3] = float("nan")
    save_file(nan, str(tmp_path / "nan.safetensors"))
    with pytest.raises(InvalidTensorError, match=r"layers\.0\.linear\.weight: 1 non-finite"):
        compress_checkpoint(tmp_path / "nan.safetensors", tmp_path / "x.dzip")
    assert not (tmp_path / "x.dzip").exists()


def test_progress_and_iteration(ckpt: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    compress_checkpoint(ckpt, tmp_path / "m.dzip", progress=lambda *a: seen.append(a))
    assert [i for _, i, _ in seen] == list(range(7))
    assert {n for n, _, _ in seen} == set(_state())
    assert {t for _, _, t in seen} == {7}
    assert [n for n, _ in iter_checkpoint(ckpt)] == sorted(_state())


# ------------------------------------------------------------------------------------ CLI


def test_cli_compress_inspect_decompress(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dz, st, rep = tmp_path / "m.dzip", tmp_path / "back.safetensors", tmp_path / "r.json"
    code = main(["compress", str(ckpt), "-o", str(dz), "--sparsity", "0.3", "--bits", "4",
                 "--quantizer", "ecsq", "--lambda", "0.02", "--coder", "ans",
                 "--exclude", "conv*", "--no-progress", "--json", str(rep)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(rep.read_text())
    assert {t["name"] for t in report["tensors"]} == set(_state())
    assert "kept raw: conv.weight (excluded by pattern 'conv*')" in out
    assert f"{report['file_bytes']:,} B on disk: {report['ratio']:.2f}× → {dz}" in out

    assert main(["inspect", str(dz), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sum(s["length"] for s in info["sections"]) == dz.stat().st_size
    # the coded parts are all ANS, and there are some (codebooks and raw parts have none)
    assert {p["coder"] for t in info["tensors"] for p in t["parts"]} == {None, "ans"}
    assert main(["inspect", str(dz)]) == 0
    assert f"{dz.stat().st_size:,} bytes" in capsys.readouterr().out

    assert main(["decompress", str(dz), "-o", str(st), "--no-progress"]) == 0
    back, src, dense = load_file(str(st)), _state(), load_state_dict(dz)
    assert set(back) == set(src)
    for name, t in src.items():
        assert back[name].dtype == t.dtype
        assert back[name].shape == t.shape
        assert torch.equal(back[name], dense[name])
    assert torch.equal(back["conv.weight"], src["conv.weight"])


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "missing.dzip")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepzip: error:")
    assert "cannot open" in err
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    assert main(["compress", str(tmp_path / "x.safetensors"), "-o", str(tmp_path / "o.dzip"),
                 "--no-progress"]) == 2  # fmt: skip
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_a_failed_command_leaves_no_progress_bar(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.dzip"
    # progress on: the bar is drawn, then the configuration is rejected
    assert main(["compress", str(ckpt), "-o", str(out), "--sparsity", "1.5"]) == 2
    err = capsys.readouterr().err
    # (rich leaves one empty line where the bar was, on a terminal it moves the cursor back)
    assert err.strip() == "deepzip: error: sparsity must be a number in [0, 1), got 1.5"
    assert not out.exists()
    # a command that succeeds still leaves its finished bar
    assert main(["compress", str(ckpt), "-o", str(out), "--sparsity", "0.5"]) == 0
    assert "done" in capsys.readouterr().err


def test_one_grid_step_for_every_tensor(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.dzip"
    report = compress_checkpoint(ckpt, out, step=0.02, layer_bits={"conv": 2})
    src = _state()
    back = load_state_dict(out)
    w = src["layers.0.linear.weight"]
    got = back["layers.0.linear.weight"]
    # every weight within one step of its value; levels = the grid points its range needs
    assert float((got - w).abs().max()) <= 0.02 + 1e-6
    grid_points = torch.unique(torch.round(w.double() / 0.02)).numel()
    rows = {r.name: r for r in report.tensors}
    assert rows["layers.0.linear.weight"].k == grid_points
    assert rows["conv.weight"].k is not None
    assert rows["conv.weight"].k <= 4  # the layer_bits glob wins over the step
    meta = inspect(out).metadata
    assert meta["recipe"]["step"] == 0.02
    assert meta["report"]["layers"]["layers.0.linear.weight"]["step"] == 0.02
    assert "step" not in meta["report"]["layers"]["conv.weight"]


def test_bad_step_settings(ckpt: Path, tmp_path: Path) -> None:
    dest = tmp_path / "x.dzip"
    with pytest.raises(ConfigError, match="step must be a finite number > 0"):
        compress_checkpoint(ckpt, dest, step=0.0)
    with pytest.raises(ConfigError, match="needs quantizer 'uniform', got 'kmeans'"):
        compress_checkpoint(ckpt, dest, step=0.1, quantizer="kmeans")
    with pytest.raises(ConfigError, match="give step or levels, not both"):
        compress_checkpoint(ckpt, dest, step=0.1, levels=8)
    with pytest.raises(ConfigError, match=r"conv\.weight: step 1e-05 uses 284 levels"):
        compress_checkpoint(ckpt, dest, step=1e-5)
    assert not dest.exists()


def test_cli_compress_with_a_step(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.dzip"
    assert main(["compress", str(ckpt), "-o", str(out), "--step", "0.03", "--no-progress"]) == 0
    assert inspect(out).metadata["recipe"]["step"] == 0.03


def test_index_bits_globs_match_module_or_tensor_names(ckpt: Path, tmp_path: Path) -> None:
    def widths(index_bits: IndexBits) -> dict[str, int | None]:
        report = compress_checkpoint(
            ckpt, tmp_path / "s.dzip", sparsity=0.9, layout="sparse", index_bits=index_bits
        )
        return {r.name: r.gap_width for r in report.tensors if r.encoding != "raw"}

    default = widths(None)
    assert default == widths("auto")
    dims = {name: t.dim() for name, t in load_file(ckpt).items()}
    assert widths("paper") == {n: 8 if dims[n] >= 3 else 5 for n in default}
    assert set(widths("paper").values()) == {5, 8}
    by_module = widths({"layers.0.linear": 3})
    assert by_module == widths({"layers.0.linear.weight": 3})
    assert by_module == {**default, "layers.0.linear.weight": 3}
    assert widths({"*": 3, "layers.0.linear": "auto"}) == {
        **dict.fromkeys(default, 3),
        "layers.0.linear.weight": default["layers.0.linear.weight"],
    }
    with pytest.raises(ConfigError, match=r"index_bits pattern 'layers\.0\.lienar' matches no"):
        widths({"layers.0.lienar": 3})
    with pytest.raises(
        ConfigError,
        match=r"index_bits\['\*'\] must be an integer from 1 to 16, 'auto' or 'paper', got 0",
    ):
        widths({"*": 0})


def test_auto_index_bits_is_smallest_for_every_tensor(ckpt: Path, tmp_path: Path) -> None:
    def sizes(index_bits: IndexBits) -> dict[str, tuple[int, int | None]]:
        report = compress_checkpoint(
            ckpt, tmp_path / "s.dzip", sparsity=0.95, layout="sparse", index_bits=index_bits
        )
        return {r.name: (r.bytes, r.gap_width) for r in report.tensors if r.encoding != "raw"}

    auto = sizes(None)
    fixed = {w: sizes(w) for w in range(1, 17)}
    for name, (size, width) in auto.items():
        assert width is not None
        assert size == min(fixed[w][name][0] for w in fixed) == fixed[width][name][0]


def test_cli_index_bits(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.dzip"
    base = ["compress", str(ckpt), "-o", str(out), "--sparsity", "0.9", "--no-progress"]
    assert main([*base, "--index-bits", "paper"]) == 0
    dims = {name: t.dim() for name, t in load_file(ckpt).items()}
    encodings = {t.name: t.encoding for t in inspect(out).tensors if t.k is not None}
    widths = {t.name: t.gap_width for t in inspect(out).tensors if t.gap_width is not None}
    # layout auto: a tensor whose sparse form at the paper's width is not smaller goes dense
    assert widths == {n: 8 if dims[n] >= 3 else 5 for n in widths}
    assert 0 < len(widths) < len(encodings) == 3
    base = [*base, "--layout", "sparse"]
    assert main([*base, "--index-bits", "paper"]) == 0
    widths = {t.name: t.gap_width for t in inspect(out).tensors if t.gap_width is not None}
    assert widths == {n: 8 if dims[n] >= 3 else 5 for n in encodings}
    assert set(widths.values()) == {5, 8}
    assert main([*base, "--layout", "dense"]) == 0
    assert {t.encoding for t in inspect(out).tensors if t.k is not None} == {"shared_dense"}
    assert main([*base, "--index-bits", "3"]) == 0
    assert {t.gap_width for t in inspect(out).tensors if t.gap_width is not None} == {3}
    for bad, message in (("17", "from 1 to 16, 'auto' or 'paper', got 17"), ("wide", "got 'wide'")):
        with pytest.raises(SystemExit) as info:
            main([*base, "--index-bits", bad])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
