"""Post-training compression behaviour that mutation testing found unchecked (review 33).

posttrain.py: the configuration's defaults and refusals, the ``min_elements`` and float32-range
boundaries, the ``requantize`` default, the report lines, aliases, and the checkpoint-reading
corner cases; format/checkpoint.py: ``read_checkpoint``'s refusals of bad deepzip entries.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import deepzip as dz
from deepzip import QuantizeConfig, WeightlessConfig
from deepzip.errors import CheckpointError, ConfigError
from deepzip.format import DzipReader, load_state_dict
from deepzip.format.checkpoint import (
    BLOOMIER_PREFIX,
    CODEBOOK_PREFIX,
    INDEX_PREFIX,
    MASK_PREFIX,
    read_checkpoint,
)
from deepzip.posttrain import DEFAULT_BITS, PostTrainConfig, compress_checkpoint
from deepzip.quantize.kmeans import kmeans_1d
from deepzip.quantize.scalar import ecsq_quantize, uniform_quantize

# ------------------------------------------------------------------------ the configuration


def test_the_default_config_is_valid_and_its_recipe_is_the_documented_one() -> None:
    recipe = PostTrainConfig().to_dict()
    assert recipe == {
        "stage": "post_training",
        "sparsity": 0.0,
        "bits": 5,
        "levels": None,
        "quantizer": "uniform",
        "ecsq_lambda": 0.0,
        "step": None,
        "layer_bits": [],
        "include": [],
        "exclude": [],
        "min_elements": 256,
    }
    assert DEFAULT_BITS == 5


@pytest.mark.parametrize("levels", [2, 3, 255, 256])
def test_levels_from_2_to_256_are_accepted(levels: int) -> None:
    assert PostTrainConfig(levels=levels).levels_for("fc.weight") == levels


@pytest.mark.parametrize("levels", [0, 1, 257, True, 8.0, "8"])
def test_levels_outside_2_to_256_or_not_an_int_are_refused(levels: object) -> None:
    with pytest.raises(ConfigError, match="levels must be an integer from 2 to 256"):
        PostTrainConfig(levels=levels)  # type: ignore[arg-type]


def test_levels_or_step_without_bits_are_refused() -> None:
    with pytest.raises(ConfigError, match="levels needs quantization"):
        PostTrainConfig(levels=8, bits=None)
    with pytest.raises(ConfigError, match="step needs quantization"):
        PostTrainConfig(step=0.1, bits=None)


@pytest.mark.parametrize("sparsity", [True, False, "0.5", -0.1, -1e-9, 1.0])
def test_sparsity_that_is_not_a_number_in_0_1_is_refused(sparsity: object) -> None:
    with pytest.raises(ConfigError, match=r"sparsity must be a number in \[0, 1\)"):
        PostTrainConfig(sparsity=sparsity)  # type: ignore[arg-type]


@pytest.mark.parametrize("sparsity", [0, 0.0, 0.999])
def test_sparsity_in_0_1_is_accepted(sparsity: float) -> None:
    assert PostTrainConfig(sparsity=sparsity).to_dict()["sparsity"] == sparsity


@pytest.mark.parametrize("pattern", ["", 1, None])
def test_a_layer_bits_pattern_that_is_not_a_non_empty_string_is_refused(pattern: object) -> None:
    with pytest.raises(ConfigError, match="layer_bits pattern must be a non-empty glob"):
        PostTrainConfig(layer_bits=((pattern, 4),))  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["include", "exclude"])
@pytest.mark.parametrize("glob", ["", 1, None])
def test_include_and_exclude_items_must_be_non_empty_strings(key: str, glob: object) -> None:
    with pytest.raises(ConfigError, match=f"{key} must be a tuple of non-empty glob strings"):
        PostTrainConfig(**{key: ("fc*", glob)})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, 1.0, "256", -1])
def test_min_elements_must_be_an_int_at_least_0(value: object) -> None:
    with pytest.raises(ConfigError, match="min_elements must be an integer >= 0"):
        PostTrainConfig(min_elements=value)  # type: ignore[arg-type]
    assert PostTrainConfig(min_elements=0).min_elements == 0


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_requantize_must_be_a_bool(value: object) -> None:
    with pytest.raises(ConfigError, match="requantize must be True or False"):
        PostTrainConfig(requantize=value)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- reading checkpoints


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_a_tensor_in_two_shards_is_refused(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"a.weight": _randn(16, 16)}, str(hf / "model-1.safetensors"))
    save_file({"a.weight": _randn(16, 16, seed=1)}, str(hf / "model-2.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor 'a\.weight' appears in two shards"):
        compress_checkpoint(hf, tmp_path / "o.dzip")
    assert not (tmp_path / "o.dzip").exists()


@pytest.mark.parametrize("text", ["not json", '{"metadata": {}}', '{"weight_map": 3}', "[1]"])
def test_a_bad_safetensors_index_is_a_checkpoint_error(tmp_path: Path, text: str) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"a.weight": _randn(16, 16)}, str(hf / "model.safetensors"))
    (hf / "model.safetensors.index.json").write_text(text)
    with pytest.raises(CheckpointError, match="not a safetensors index"):
        compress_checkpoint(hf, tmp_path / "o.dzip")


def test_a_checkpoint_codebook_with_nan_is_refused(tmp_path: Path) -> None:
    w = _randn(16, 16)
    codebook = torch.tensor([-0.5, float("nan"), 0.5])
    src = tmp_path / "q.safetensors"
    save_file(
        {
            "fc.weight": w,
            MASK_PREFIX + "fc.weight": torch.ones(16, 16, dtype=torch.bool),
            CODEBOOK_PREFIX + "fc.weight": codebook,
            INDEX_PREFIX + "fc.weight": torch.zeros(16, 16, dtype=torch.uint8),
        },
        str(src),
    )
    with pytest.raises(CheckpointError, match=r"'fc\.weight': its codebook holds NaN or infinity"):
        compress_checkpoint(src, tmp_path / "o.dzip")
    assert not (tmp_path / "o.dzip").exists()


# ------------------------------------------------------------------------------- selection


def test_a_tensor_of_exactly_min_elements_is_compressed(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    save_file({"at.weight": _randn(16, 16), "below.weight": _randn(15, 17, seed=1)}, str(src))
    report = compress_checkpoint(src, tmp_path / "o.dzip", bits=3)
    assert dict(report.skipped) == {"below.weight": "255 elements, fewer than min_elements=256"}
    w = _randn(16, 16)
    q = uniform_quantize(w.flatten(), 8)
    expected = q.centroids[q.labels].reshape(16, 16)
    assert torch.equal(load_state_dict(tmp_path / "o.dzip")["at.weight"], expected)


def test_a_float64_tensor_reaching_float32_max_exactly_is_compressed(tmp_path: Path) -> None:
    big = torch.finfo(torch.float32).max
    w = _randn(16, 16, dtype=torch.float64)
    w[0, 0], w[0, 1] = big, -big
    src = tmp_path / "m.safetensors"
    save_file({"w.weight": w}, str(src))
    report = compress_checkpoint(src, tmp_path / "o.dzip", bits=2)
    assert not report.skipped
    back = load_state_dict(tmp_path / "o.dzip")["w.weight"]
    assert back.dtype == torch.float64
    # the two extremes are levels of their own (the uniform grid's ends)
    assert back[0, 0].item() == big
    assert back[0, 1].item() == -big
    assert back.unique().numel() <= 4


@pytest.mark.parametrize("shard", ["missing.safetensors", "sub"])
def test_an_index_naming_a_shard_that_is_not_a_file_is_refused(tmp_path: Path, shard: str) -> None:
    hf = tmp_path / "hf"
    (hf / "sub").mkdir(parents=True)
    save_file({"a.weight": _randn(16, 16)}, str(hf / "model.safetensors"))
    (hf / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": shard}})
    )
    with pytest.raises(CheckpointError, match=f"shard '{shard}' is not a file in"):
        compress_checkpoint(hf, tmp_path / "o.dzip")


def test_a_masked_tensor_left_raw_reads_back_with_its_pruned_positions_zero(
    tmp_path: Path,
) -> None:
    # the checkpoint's tensor holds values where its mask prunes (a mask is the truth)
    w = _randn(16, 16)
    mask = _randn(16, 16, seed=1) > 0
    src = tmp_path / "p.safetensors"
    save_file({"fc.weight": w, MASK_PREFIX + "fc.weight": mask}, str(src))
    report = compress_checkpoint(src, tmp_path / "o.dzip", exclude=("fc",))
    assert dict(report.skipped) == {"fc.weight": "excluded by pattern 'fc'"}
    back = load_state_dict(tmp_path / "o.dzip")["fc.weight"]
    assert torch.equal(back, torch.where(mask, w, torch.zeros(())))


def _shared_checkpoint(path: Path, mask: torch.Tensor) -> Path:
    """``fc.weight`` (16, 16) weight-shared: codebook (-0.75, 0.25, 1.5), index i % 3."""
    save_file(
        {
            "fc.weight": _randn(16, 16),
            MASK_PREFIX + "fc.weight": mask,
            CODEBOOK_PREFIX + "fc.weight": torch.tensor([-0.75, 0.25, 1.5]),
            INDEX_PREFIX + "fc.weight": (torch.arange(256) % 3).to(torch.uint8).reshape(16, 16),
        },
        str(path),
    )
    return path


def test_a_shared_tensor_left_raw_reads_back_as_its_codebook_values(tmp_path: Path) -> None:
    mask = _randn(16, 16, seed=1) > 0
    src = _shared_checkpoint(tmp_path / "q.safetensors", mask)
    compress_checkpoint(src, tmp_path / "o.dzip", exclude=("fc",))
    back = load_state_dict(tmp_path / "o.dzip")["fc.weight"]
    expected = torch.tensor([-0.75, 0.25, 1.5] * 86)[:256].reshape(16, 16) * mask
    assert torch.equal(back, expected)


def test_a_float64_tensor_beyond_float32_range_is_pruned_when_not_quantized(
    tmp_path: Path,
) -> None:
    # only quantization needs float32 levels: bits=None prunes it as any other tensor
    w = _randn(16, 16, dtype=torch.float64)
    w[0, 0] = 1e300
    src = tmp_path / "m.safetensors"
    save_file({"w.weight": w}, str(src))
    report = compress_checkpoint(src, tmp_path / "o.dzip", bits=None, sparsity=0.5)
    assert not report.skipped
    (row,) = report.tensors
    assert (row.encoding, row.kept) == ("sparse_float", 128)
    back = load_state_dict(tmp_path / "o.dzip")["w.weight"]
    keep = w.abs() >= w.abs().flatten().sort().values[128]
    assert torch.equal(back, torch.where(keep, w, torch.zeros((), dtype=torch.float64)))


def test_an_unmatched_glob_names_the_first_eight_tensors(tmp_path: Path) -> None:
    names = [f"t{i}.weight" for i in range(10)]
    src = tmp_path / "m.safetensors"
    save_file({n: torch.zeros(2) for n in names}, str(src))
    listed = ", ".join(sorted(names)[:8])
    with pytest.raises(ConfigError, match=r"\(tensors: " + listed.replace(".", r"\.") + r"\)$"):
        compress_checkpoint(src, tmp_path / "o.dzip", exclude=("fc*",))


@pytest.mark.parametrize(
    ("setting", "again"),
    [
        ({}, False),
        ({"bits": 5, "quantizer": "uniform", "ecsq_lambda": 0.0}, False),
        ({"bits": 4}, True),
        ({"levels": 32}, True),  # 2**5 levels, given explicitly: still a request
        ({"step": 0.25}, True),
        ({"quantizer": "kmeans"}, True),
        ({"quantizer": "ecsq"}, True),
    ],
)
def test_any_quantization_setting_requantizes_a_shared_checkpoint(
    tmp_path: Path, setting: dict[str, object], again: bool
) -> None:
    src = _shared_checkpoint(tmp_path / "q.safetensors", torch.ones(16, 16, dtype=torch.bool))
    compress_checkpoint(src, tmp_path / "o.dzip", **setting)  # type: ignore[arg-type]
    with DzipReader(tmp_path / "o.dzip") as reader:
        line = reader.metadata["report"]["layers"]["fc.weight"]
        recipe = reader.metadata["recipe"]
    assert ("codebook" not in line) == again
    assert recipe.get("requantize", False) == again


def test_paper_index_bits_give_a_3d_tensor_8_bits(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    save_file({"c.weight": _randn(8, 8, 8), "l.weight": _randn(32, 16, seed=1)}, str(src))
    report = compress_checkpoint(
        src, tmp_path / "o.dzip", sparsity=0.9, layout="sparse", index_bits="paper"
    )
    assert {r.name: r.gap_width for r in report.tensors} == {"c.weight": 8, "l.weight": 5}


def test_tied_tensors_with_masks_of_their_own_are_not_aliases(tmp_path: Path) -> None:
    w = _randn(16, 16)
    mask_a, mask_b = _randn(16, 16, seed=1) > 0, _randn(16, 16, seed=2) > 0
    state = {"a.weight": w, "b.weight": w, MASK_PREFIX + "a.weight": mask_a}
    state[MASK_PREFIX + "b.weight"] = mask_b
    torch.save(state, tmp_path / "m.pt")
    report = compress_checkpoint(tmp_path / "m.pt", tmp_path / "o.dzip", bits=None)
    assert {r.name: r.alias_of for r in report.tensors} == {"a.weight": None, "b.weight": None}
    back = load_state_dict(tmp_path / "o.dzip")
    zero = torch.zeros(())
    assert torch.equal(back["a.weight"], torch.where(mask_a, w, zero))
    assert torch.equal(back["b.weight"], torch.where(mask_b, w, zero))


def test_an_alias_has_its_own_report_line(tmp_path: Path) -> None:
    w = _randn(32, 16)
    torch.save({"emb.weight": w, "head.weight": w}, tmp_path / "t.pt")
    compress_checkpoint(tmp_path / "t.pt", tmp_path / "o.dzip", bits=4)
    with DzipReader(tmp_path / "o.dzip") as reader:
        layers = reader.metadata["report"]["layers"]
    assert layers["head.weight"] == {"alias_of": "emb.weight"}
    used = int(uniform_quantize(w.flatten(), 16).labels.unique().numel())
    assert layers["emb.weight"] == {"levels": 16, "used": used, "kept": 512}


@pytest.mark.parametrize("quantizer", ["kmeans", "ecsq"])
def test_each_quantizer_is_the_one_asked_for(tmp_path: Path, quantizer: str) -> None:
    w = _randn(32, 16) ** 3  # heavy tails: k-means, ECSQ and uniform levels all differ
    src = tmp_path / "m.safetensors"
    save_file({"fc.weight": w}, str(src))
    lam = 0.05 if quantizer == "ecsq" else 0.0
    compress_checkpoint(src, tmp_path / "o.dzip", bits=3, quantizer=quantizer, ecsq_lambda=lam)  # type: ignore[arg-type]
    flat = w.flatten()
    q = ecsq_quantize(flat, 8, lam) if quantizer == "ecsq" else kmeans_1d(flat, 8)
    expected = q.centroids[q.labels].reshape(w.shape)
    assert torch.equal(load_state_dict(tmp_path / "o.dzip")["fc.weight"], expected)


def test_one_kept_weight_is_quantized_and_none_is_stored_sparse(tmp_path: Path) -> None:
    one = torch.zeros(16, 16)
    one[3, 5] = 0.375
    src = tmp_path / "m.safetensors"
    save_file({"one.weight": one, "none.weight": torch.zeros(16, 16)}, str(src))
    report = compress_checkpoint(src, tmp_path / "o.dzip", bits=4, layout="sparse")
    assert {r.name: (r.encoding, r.kept) for r in report.tensors} == {
        "one.weight": ("shared_sparse", 1),
        "none.weight": ("sparse_float", 0),
    }
    with DzipReader(tmp_path / "o.dzip") as reader:
        layers = reader.metadata["report"]["layers"]
    assert layers["one.weight"] == {"levels": 16, "used": 1, "kept": 1}
    assert layers["none.weight"] == {"levels": None, "kept": 0}
    back = load_state_dict(tmp_path / "o.dzip")
    assert torch.equal(back["one.weight"], one)
    assert torch.equal(back["none.weight"], torch.zeros(16, 16))


# ------------------------------------------------------------------ format/checkpoint.py


def test_a_directory_is_not_a_checkpoint_file(tmp_path: Path) -> None:
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(CheckpointError, match=r"d\.safetensors: not a checkpoint file"):
        read_checkpoint(tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("inner", [{}, {"a": 1.0}])
def test_a_wrapper_key_that_is_not_a_state_dict_is_not_taken_for_one(
    tmp_path: Path, inner: dict[str, float]
) -> None:
    torch.save({"state_dict": inner, "w": torch.ones(2)}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="entry 'state_dict' is not a tensor"):
        read_checkpoint(tmp_path / "m.pt")
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "ok.pt")
    assert list(read_checkpoint(tmp_path / "ok.pt").tensors) == ["w"]


_SHARED_W = {
    MASK_PREFIX + "w": torch.ones(2, dtype=torch.bool),
    CODEBOOK_PREFIX + "w": torch.tensor([1.0]),
    INDEX_PREFIX + "w": torch.zeros(2, dtype=torch.uint8),
}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"__deepzip_future__.w": torch.zeros(1)}, "unknown deepzip entry '__deepzip_future__.w'"),
        ({MASK_PREFIX + "v": torch.ones(2, dtype=torch.bool)}, "mask for 'v' but no such tensor"),
        ({MASK_PREFIX + "w": torch.ones(3, dtype=torch.bool)}, r"mask for 'w' has shape \(3,\)"),
        ({INDEX_PREFIX + "w": torch.zeros(2, dtype=torch.uint8)}, "indices without a codebook"),
        (
            {BLOOMIER_PREFIX + "w": torch.zeros(8, dtype=torch.uint8)},
            "Bloomier filter for 'w' without its codebook",
        ),
        ({CODEBOOK_PREFIX + "w": torch.tensor([1.0])}, "codebook for 'w' without its indices"),
        (
            {CODEBOOK_PREFIX + "w": torch.tensor([1.0]), INDEX_PREFIX + "w": torch.zeros(2).byte()},
            "codebook for 'w' without its indices, mask",
        ),
        (
            {CODEBOOK_PREFIX + "w": torch.tensor([1.0]), MASK_PREFIX + "w": torch.ones(2).bool()},
            "codebook for 'w' without its indices, mask",
        ),
        ({**_SHARED_W, CODEBOOK_PREFIX + "w": torch.zeros(0)}, "with 1..256 entries"),
        ({**_SHARED_W, CODEBOOK_PREFIX + "w": torch.zeros(257)}, "with 1..256 entries"),
        ({**_SHARED_W, BLOOMIER_PREFIX + "w": torch.zeros(8)}, "of 'w' must be 1-D uint8"),
        (
            {**_SHARED_W, BLOOMIER_PREFIX + "w": torch.zeros(2, 4, dtype=torch.uint8)},
            "of 'w' must be 1-D uint8",
        ),
    ],
)
def test_read_checkpoint_refuses_bad_deepzip_entries(
    tmp_path: Path, extra: dict[str, torch.Tensor], match: str
) -> None:
    save_file({"w": torch.ones(2), **extra}, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(tmp_path / "m.safetensors")


def test_a_bloomier_filter_for_another_number_of_clusters_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    dz.weightless_(model, WeightlessConfig(cell_bits=4), quantize=QuantizeConfig(bits=2))
    src = dz.save_checkpoint(model, tmp_path / "wl.safetensors")
    read_checkpoint(src)  # as written, the filter fits
    state = load_file(str(src))
    key = CODEBOOK_PREFIX + "0.weight"
    state[key] = torch.cat([state[key], torch.tensor([9.0])])  # every index still addresses it
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"filter of '0\.weight' does not decode"):
        read_checkpoint(tmp_path / "bad.safetensors")


def test_a_one_entry_codebook_is_read(tmp_path: Path) -> None:
    save_file({"w": torch.ones(2), **_SHARED_W}, str(tmp_path / "m.safetensors"))
    shared = read_checkpoint(tmp_path / "m.safetensors").shared["w"]
    assert torch.equal(shared.codebook, torch.tensor([1.0]))
    assert torch.equal(shared.indices, torch.zeros(2, dtype=torch.uint8))
