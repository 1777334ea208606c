"""Review of datasets, zoo, report and train: each test failed before its fix."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from deepzip import save
from deepzip.config import Recipe
from deepzip.datasets import ImageDataset, TensorLoader, download, train_val_split
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.format.checkpoint import Checkpoint
from deepzip.pipeline import run_recipe
from deepzip.report import plots
from deepzip.report.plots import (
    QuantizedLayerData,
    StagePoint,
    plot_accuracy_vs_ratio,
    plot_quantized_distributions,
    plot_weight_distributions,
)
from deepzip.report.run import MAX_LAYERS_PLOTTED, _largest, build_run_report, write_run_report
from deepzip.report.tables import (
    compression_markdown,
    compression_rich_table,
    compression_table,
    compression_table_rows,
    markdown_table,
)
from deepzip.train import DistillationLoss, evaluate, pack_teacher_targets, predict_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_toy import toy_model

# ------------------------------------------------------------------------------ report


def _cells(line: str) -> list[str]:
    """A Markdown table row split at its unescaped pipes, as GitHub splits it."""
    cells, cell, i = [], "", 0
    body = line.strip()[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            cell += body[i : i + 2]
            i += 2
            continue
        if body[i] == "|":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += body[i]
        i += 1
    return [*cells, cell.strip()]


def test_markdown_cells_with_pipes_backslashes_or_line_breaks_stay_in_their_cell() -> None:
    md = markdown_table(["layer|name", "n"], [["a|b", "1"], ["c\nd", "2"], ["e\\", "3"]])
    lines = md.splitlines()
    assert len(lines) == 5  # a line break ended the row early
    assert [len(_cells(line)) for line in lines] == [2, 2, 2, 2, 2]  # a '|' opened a cell
    assert _cells(lines[2]) == ["a\\|b", "1"]
    assert _cells(lines[3]) == ["c d", "2"]
    assert _cells(lines[4]) == ["e\\\\", "3"]  # a trailing backslash does not eat the pipe
    assert markdown_table(["a"], [["**x**"]]).splitlines()[2] == "| **x** |"


def test_a_file_of_no_tensors_has_a_table(tmp_path: Path) -> None:
    class Identity(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    table = compression_table(save(Identity(), tmp_path / "e.dzip").to_dict())
    assert table.float32_bytes == 0
    total = compression_table_rows(table)[-1]  # ZeroDivisionError
    assert total[0] == "total"
    assert total[7] == "- (0.0×)"
    assert "| **total** |" in compression_markdown(table)


def test_rich_caption_shows_alias_names_as_written() -> None:
    raw = {"encoding": "raw", "weights": 4, "kept": 4, "parts": [{"name": "data", "bytes": 16}]}
    table = compression_table(
        {
            "file_bytes": 100,
            "tensors": [
                {"name": "w[/bold]", **raw},
                {"name": "t[red]x", "alias_of": "w[/bold]", **raw},
            ],
        }
    )
    console = Console(file=io.StringIO(), width=400)
    console.print(compression_rich_table(table))  # MarkupError: closing tag '[/bold]'
    assert "t[red]x = w[/bold]" in console.file.getvalue()  # type: ignore[attr-defined]


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    figures: list[Any] = []

    def fake_save(fig: Any, path: str) -> Path:
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "_save", fake_save)
    return figures


def test_one_non_finite_weight_does_not_empty_a_histogram(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    figures = _capture(monkeypatch)
    before = {"a": np.array([1.0, np.nan, 2.0], np.float32), "b": np.array([3.0, np.inf, 4.0])}
    plot_weight_distributions(before, {"a": np.array([1.0], np.float32)}, tmp_path / "w.png")
    w = np.array([-1.0, 0.5, -np.inf], np.float32)
    layer = QuantizedLayerData(w, np.array([-1.0, 0.5], np.float32), None, np.array([1, 1]))
    plot_quantized_distributions({"q": layer}, tmp_path / "q.png")
    (a, b), (q,) = figures[0].axes, figures[1].axes
    for ax, lo, hi in ((a, 1.0, 2.0), (b, 3.0, 4.0), (q, -1.0, 0.5)):
        left, right = ax.get_xlim()  # was matplotlib's empty-axes (-0.055, 0.055)
        assert math.isfinite(left)
        assert math.isfinite(right)
        assert left <= lo
        assert right >= hi
    labels = [t.get_text() for t in a.get_legend().get_texts()]
    assert labels == ["before pruning (3, 1 not finite)", "kept (1)"]
    assert q.get_legend().get_texts()[0].get_text() == "weights (3, 1 not finite)"


def test_accuracy_plot_labels_are_shown_as_written(tmp_path: Path) -> None:
    # the title was escaped, the y label and the baseline's legend entries were matplotlib math
    path = plot_accuracy_vs_ratio(
        [StagePoint("x", 2.0, 0.9)],
        tmp_path / "a.png",
        baseline=0.95,
        baseline_label="a $\\frac$ b",
        ylabel="cost $\\frac$",
    )  # ValueError: Expected \frac{num}{den}
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    recipe = Recipe.from_dict(
        {
            "name": "my\nrun",
            "stages": [{"type": "quantize", "bits": 2, "name": "q|x"}, {"type": "encode"}],
        }
    )
    run_recipe(toy_model(), recipe, out)
    return out


def test_run_report_markdown_title_and_stage_names(quantized_run: Path, tmp_path: Path) -> None:
    write_run_report(quantized_run, tmp_path)
    md = (tmp_path / "report.md").read_text("utf-8")
    assert md.startswith("# my run\n")
    assert "| 1. quantize (q\\|x) |" in md


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"baseline": 0.9}',
        '{"baseline": 0.9, "sparsities": [0.5], "layers": {"1.weight": {"accuracy": [0.8]}}}',
        '{"baseline": 0.9, "sparsities": [0.5], '
        '"layers": {"1.weight": {"accuracy": [0.8, 0.7], "weights": 960}}}',
    ],
)
def test_a_malformed_sensitivity_file_is_a_config_error(
    quantized_run: Path, tmp_path: Path, text: str
) -> None:
    sens = tmp_path / "sens.json"
    sens.write_text(text)
    with pytest.raises(ConfigError, match=r"sens\.json"):  # JSONDecodeError, KeyError, TypeError
        build_run_report(quantized_run, tmp_path / "out", sensitivity=sens)


def test_without_a_file_table_the_largest_layers_are_plotted() -> None:
    tensors = {f"l{i}.weight": torch.zeros(i + 1) for i in range(12)}
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in tensors.items()}
    names = _largest(None, Checkpoint(tensors, masks, {}, {}))
    assert len(names) == MAX_LAYERS_PLOTTED
    # l0, l1 and l2 are the smallest (l10, l11 sort before them by name)
    assert set(names) == {f"l{i}.weight" for i in range(3, 12)}


# ---------------------------------------------------------------------------- datasets


def _ds(n: int = 10) -> ImageDataset:
    return ImageDataset(torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long), "mnist", "train")


@pytest.mark.parametrize("val_size", [2.5, 2.0, "2"])
def test_train_val_split_refuses_a_val_size_that_is_not_an_integer(val_size: object) -> None:
    with pytest.raises(ConfigError, match="val_size must be an integer"):  # TypeError
        train_val_split(_ds(), val_size)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [1.5, True, 2**64, -(2**63) - 1])
def test_train_val_split_refuses_a_bad_seed(seed: object) -> None:
    with pytest.raises(ConfigError, match="seed must be an integer"):  # RuntimeError, ValueError
        train_val_split(_ds(), 2, seed=seed)  # type: ignore[arg-type]


def test_train_val_split_accepts_the_seeds_torch_does() -> None:
    for seed in (-(2**63), -1, 2**64 - 1):
        train, val = train_val_split(_ds(), 2, seed=seed)
        assert (len(train), len(val)) == (8, 2)


def test_tensor_loader_refuses_a_seed_that_is_not_an_integer() -> None:
    ds = _ds()
    with pytest.raises(ConfigError, match="seed must be an integer"):  # TypeError at iter()
        TensorLoader(ds.images, ds.labels, 3, shuffle=True, seed=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1.0, 0, math.nan, math.inf, True])
def test_download_refuses_a_bad_timeout_before_touching_anything(
    tmp_path: Path, timeout: float
) -> None:
    calls: list[str] = []

    def opener(url: str, *, timeout: float) -> io.BytesIO:
        calls.append(url)
        raise ValueError("Timeout value out of range")  # what a socket says to -1

    with pytest.raises(ConfigError, match="timeout must be"):
        download("mnist", tmp_path / "root", opener=opener, timeout=timeout)
    assert calls == []
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- train


def test_evaluate_refuses_targets_that_are_not_class_indices() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 10)
    x, y = torch.randn(11, 4), torch.randint(0, 10, (11,))
    packed = pack_teacher_targets(y, torch.randn(11, 10))
    # 11 = 1 + 10 classes: the packed rows broadcast and gave a made-up accuracy
    with pytest.raises(InvalidTensorError, match=r"batch 1: outputs \(11, 10\) and targets"):
        evaluate(model, [(x, packed)], loss_fn=DistillationLoss(0.5))
    with pytest.raises(InvalidTensorError, match=r"targets \(5, 11\)"):  # RuntimeError
        evaluate(model, [(x[:5], y[:5]), (x[:5], packed[:5])], loss_fn=DistillationLoss(0.5))
    assert evaluate(model, [(x, y)]).n == 11


def test_copies_to_the_cpu_are_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    # a non-blocking copy from a GPU into host memory may still be running when the CPU
    # reads it; every copy towards the CPU must ask for a blocking one
    seen: list[bool] = []
    real_to = torch.Tensor.to

    def recording_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(bool(kwargs.get("non_blocking", False)))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    loader = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    evaluate(model, loader, device="cpu")
    predict_logits(model, loader, device="cpu")
    assert seen, "the loop moved no batch"
    assert not any(seen)
