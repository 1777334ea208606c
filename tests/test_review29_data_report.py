"""Review of datasets and reports: each test failed before its fix (the HTML one through its
fixture, a run the report could not be written for)."""

from __future__ import annotations

import html.parser
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from deepzip import save
from deepzip.config import Recipe
from deepzip.datasets import ImageDataset, load_dataset, write_idx
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.pipeline import run_recipe
from deepzip.report import run as report_run
from deepzip.report.plots import StagePoint, plot_accuracy_vs_ratio
from deepzip.report.run import build_run_report, write_run_report
from deepzip.report.tables import compression_row, compression_table, compression_table_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_toy import toy_model

# ------------------------------------------------------------------------------ run report

EVIL = "<script>alert(1)</script>&amp;\"'"


@pytest.fixture(scope="module")
def requantized_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two quantize stages (allowed by the order rules): 4 bits, then 2 bits."""
    out = tmp_path_factory.mktemp("run")
    recipe = Recipe.from_dict(
        {
            "name": EVIL,
            "description": EVIL,
            "stages": [
                {"type": "quantize", "bits": 4, "name": EVIL},
                {"type": "quantize", "bits": 2},
                {"type": "encode"},
            ],
        }
    )
    run_recipe(toy_model(), recipe, out)
    return out


def test_a_second_quantize_stage_does_not_break_the_centroid_plot(
    requantized_run: Path, tmp_path: Path
) -> None:
    # the cluster sizes came from the final 4-entry codebook, the crosses from the first
    # 16-entry one: ValueError: x and y must have same first dimension
    report = build_run_report(requantized_run, tmp_path)
    assert "weights_quantized" in report.plots
    assert report.plots["weights_quantized"].read_bytes()[:4] == b"\x89PNG"


class _TagChecker(html.parser.HTMLParser):
    VOID = frozenset({"img", "meta"})

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.open: list[str] = []
        self.mismatched: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.mismatched.append(tag)


def test_the_html_page_escapes_recipe_text_and_is_well_formed(
    requantized_run: Path, tmp_path: Path
) -> None:
    page = write_run_report(requantized_run, tmp_path, title=EVIL).read_text("utf-8")
    assert "<script>alert" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;&amp;amp;") >= 4  # title, h1, p, stage
    checker = _TagChecker()
    checker.feed(page)
    assert (checker.mismatched, checker.open) == ([], [])
    assert checker.tags == {
        "html", "head", "meta", "title", "style", "body", "h1", "p", "div", "b", "h2", "table",
        "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption", "pre", "script",
    }  # fmt: skip
    assert list(tmp_path.glob(".*.tmp")) == []


def test_without_a_test_function_the_encode_point_is_the_decoded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the point labelled ".dzip (decoded)" showed the in-memory model's validation accuracy
    calls: list[int] = []

    def eval_fn(model: nn.Module) -> float:
        calls.append(1)
        return 0.5 + 0.01 * len(calls)  # every evaluation tells apart

    recipe = Recipe.from_dict({"stages": [{"type": "quantize", "bits": 2}, {"type": "encode"}]})
    run_recipe(toy_model(), recipe, tmp_path / "run", eval_fn=eval_fn)
    seen: list[list[StagePoint]] = []

    def capture(points: list[StagePoint], path: Path, **kwargs: Any) -> Path:
        seen.append(list(points))
        return plot_accuracy_vs_ratio(points, path, **kwargs)

    monkeypatch.setattr(report_run, "plot_accuracy_vs_ratio", capture)
    report = build_run_report(tmp_path / "run", tmp_path / "out")
    encode = report.stages[-1]
    assert encode.test_acc is None
    decoded = encode.details["decoded_val_acc"]
    assert decoded != encode.val_acc
    (points,) = seen
    assert points[-1].label == "2. .dzip (decoded)"
    assert points[-1].accuracy == decoded


# ---------------------------------------------------------------------------------- tables


def test_integer_buffers_are_counted_as_the_save_report_counts_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 10))
    save_dict = save(model, tmp_path / "m.dzip").to_dict()
    counter = next(t for t in save_dict["tensors"] if t["dtype"] == "int64")
    row = compression_row(counter)
    assert (row.weight_bits_fixed, row.weight_bits_coded) == (64, 64)  # was 32 and 64
    assert row.coded_fraction == 1.0  # 8 bytes of an 8-byte element: was 200%
    table = compression_table(save_dict)
    assert table.others is not None
    assert table.others.coded_fraction == 1.0  # every tensor stored raw: was 100.14%
    assert table.others.to_dict()["float32_bytes"] == save_dict["float32_bytes"]
    rows = compression_table_rows(table)
    assert rows[0][7:9] == ["100.00%", "100.00%"]


# -------------------------------------------------------------------------------- datasets


def _ds(n: int = 5) -> ImageDataset:
    images = torch.arange(float(n)).reshape(n, 1, 1, 1)
    return ImageDataset(images, torch.arange(n), "mnist", "train")


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        ([True, False, True, False, True], "integer sample indices, got torch.bool"),
        (torch.arange(5) >= 3, "integer sample indices, got torch.bool"),
        (torch.tensor([0.9, 2.5]), "integer sample indices, got torch.float32"),
        ([5], "sample index 5 out of range for 5 samples"),
        ([0, -6], "sample index -6 out of range for 5 samples"),
    ],
)
def test_subset_refuses_what_is_not_a_sample_index(indices: Any, match: str) -> None:
    # a boolean mask was read as the indices 0 and 1 (samples 0, 0, 0, 1, 1 for labels >= 3)
    with pytest.raises(InvalidTensorError, match=f"^mnist/train: .*{match}"):
        _ds().subset(indices)


def test_subset_still_takes_indices_and_nothing() -> None:
    ds = _ds()
    assert ds.subset([4, 0, -1]).labels.tolist() == [4, 0, 4]
    assert ds.subset(torch.tensor([2], dtype=torch.int32)).labels.tolist() == [2]
    assert len(ds.subset([])) == 0
    assert len(ds.subset(torch.zeros(0, dtype=torch.bool))) == 0


@pytest.mark.parametrize("seed", [1.5, "0", True, 2**64])
def test_load_dataset_refuses_a_bad_seed_without_a_validation_split(
    tmp_path: Path, seed: object
) -> None:
    # with val_size=0 the seed was never looked at, though the docstring promises ConfigError
    for split, n in (("train", 6), ("t10k", 2)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", torch.zeros(n, 2, 2).byte().numpy())
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", torch.zeros(n).byte().numpy())
    assert len(load_dataset("mnist", tmp_path, val_size=0).val) == 0
    with pytest.raises(ConfigError, match="seed must be an integer"):
        load_dataset("mnist", tmp_path, val_size=0, seed=seed)  # type: ignore[arg-type]
