"""The report of a pipeline run: tables, plots and one self-contained HTML page.

:func:`write_run_report` reads a run directory written by :func:`deepzip.pipeline.run_recipe`
(its ``state.json``, stage checkpoints and ``.dzip`` report) and writes, into ``report/``:
``report.html`` (every table and plot, the PNGs embedded as base64, so the one file is the
whole report), ``report.md``, ``report.json`` and the PNGs.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch

from deepzip._atomic import atomic_write_text
from deepzip.config import Recipe
from deepzip.errors import ConfigError
from deepzip.format.checkpoint import Checkpoint, read_checkpoint
from deepzip.pipeline import StageRecord, accuracy_reference, read_run
from deepzip.prune import SensitivityResult
from deepzip.report.plots import (
    QuantizedLayerData,
    StagePoint,
    plot_accuracy_vs_ratio,
    plot_bits_per_layer,
    plot_quantized_distributions,
    plot_sensitivity,
    plot_weight_distributions,
)
from deepzip.report.tables import (
    COMPRESSION_HEADERS,
    STAGE_HEADERS,
    CompressionTable,
    compression_caption,
    compression_markdown,
    compression_table,
    compression_table_rows,
    markdown_table,
    stage_rows,
)
from deepzip.targets import Skipped

__all__ = ["PLOT_CAPTIONS", "RunReport", "build_run_report", "render_html", "write_run_report"]

MAX_LAYERS_PLOTTED = 9
"""Distribution plots show at most this many layers (the largest)."""

PLOT_CAPTIONS: dict[str, str] = {
    "accuracy_vs_ratio": "Test accuracy against the real .dzip ratio after each stage "
    "(the encode point is the model decoded from the file).",
    "bits_per_layer": "Bits per stored entry of each layer: fixed-width codes (P+Q) and the "
    "entropy-coded streams in the file (P+Q+C), code tables included.",
    "weights_pruning": "Weights of each layer before pruning (grey) and the surviving weights "
    "after pruning and retraining (blue).",
    "weights_quantized": "Surviving weights before quantization with the centroids: crosses "
    "after clustering (height: cluster size), red lines after fine-tuning.",
    "sensitivity": "Pruning one layer at a time (no retraining): validation accuracy against "
    "the fraction of that layer pruned.",
}


@dataclass(frozen=True)
class RunReport:
    """Everything the report shows.

    Attributes:
        title: the page title.
        run_dir: the run directory.
        recipe: the recipe run.
        initial: the starting point.
        stages: the finished stages.
        table: the per-layer table of the final ``.dzip`` file (``None`` before encoding).
        plots: ``{plot name: PNG path}`` in display order.
        notes: sentences about what could not be plotted and why.
    """

    title: str
    run_dir: Path
    recipe: Recipe
    initial: StageRecord
    stages: tuple[StageRecord, ...]
    table: CompressionTable | None
    plots: dict[str, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def baseline(self) -> StageRecord:
        """The accuracy reference: after the train stage, or the starting point."""
        return accuracy_reference(self.initial, self.stages)[0]

    @property
    def final_test_acc(self) -> float | None:
        """Test accuracy of the model decoded from the file (else after the last stage)."""
        if not self.stages:
            return None
        details = self.stages[-1].details
        value = details.get("decoded_test_acc", self.stages[-1].test_acc)
        return None if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "title": self.title,
            "recipe": self.recipe.to_dict(),
            "initial": self.initial.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "table": None if self.table is None else self.table.to_dict(),
            "plots": {k: v.name for k, v in self.plots.items()},
            "notes": list(self.notes),
        }


def _tensors_of(ckpt: Checkpoint, names: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    return {n: ckpt.tensors[n].detach().float().numpy() for n in names if n in ckpt.tensors}


def _kept_values(ckpt: Checkpoint, names: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    out = {}
    for n in names:
        if n not in ckpt.tensors:
            continue
        t = ckpt.tensors[n].detach().float()
        mask = ckpt.masks.get(n)
        out[n] = (t[mask] if mask is not None else t[t != 0]).numpy()
    return out


def _largest(table: CompressionTable | None, ckpt: Checkpoint) -> list[str]:
    if table is not None and table.layers:
        rows = sorted(table.layers, key=lambda r: -r.weights)[:MAX_LAYERS_PLOTTED]
        order = [r.name for r in table.layers]
        return sorted((r.name for r in rows), key=order.index)
    # no file table: the checkpoint's masked and quantized layers, by size, shown by name
    sizes = {n: m.numel() for n, m in ckpt.masks.items()}
    sizes.update((n, s.mask.numel()) for n, s in ckpt.shared.items())
    return sorted(sorted(sizes, key=lambda n: (-sizes[n], n))[:MAX_LAYERS_PLOTTED])


def build_run_report(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    sensitivity: str | os.PathLike[str] | None = None,
) -> RunReport:
    """Read a run directory and draw its plots into ``out_dir`` (default ``run_dir/report``).

    ``sensitivity`` names a sensitivity JSON (``SensitivityResult.save_json``) measured outside
    the run, plotted when the recipe has no sensitivity stage of its own.

    Raises:
        ConfigError: ``run_dir`` holds no run, or the sensitivity JSON is malformed.
    """
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "report"
    recipe, initial, stages = read_run(run)
    by_role = [(s, recipe.stages[s.index].role) for s in stages]
    table = None
    if stages and "save" in stages[-1].details and recipe.stages[-1].kind == stages[-1].kind:
        table = compression_table(stages[-1].details["save"])
    plots: dict[str, Path] = {}
    notes: list[str] = []

    start_acc = _acc(initial)
    ref, dense = accuracy_reference(initial, stages)  # dense: a train stage came first
    points = []  # an untrained starting point (before a train stage) is left out
    if start_acc is not None and not dense:
        points.append(StagePoint("start", initial.ratio, start_acc))
    for s, role in by_role:
        acc = _acc(s)
        if role == "analyze" or acc is None:
            continue
        label = s.kind if role != "encode" else ".dzip (decoded)"
        if role == "encode":  # the decoded model's accuracy of the kind the others show
            decoded = "decoded_test_acc" if s.test_acc is not None else "decoded_val_acc"
            acc = float(s.details.get(decoded, acc))
        points.append(StagePoint(f"{s.index + 1}. {label}", s.ratio, acc))
    if points:
        plots["accuracy_vs_ratio"] = plot_accuracy_vs_ratio(
            points,
            out / "accuracy_vs_ratio.png",
            baseline=_acc(ref),
            baseline_label="dense" if dense else "start",
            ylabel="test accuracy (%)" if initial.test_acc is not None else "accuracy (%)",
        )
    else:
        notes.append("No accuracy was recorded (the run had no eval/test function).")
    if table is not None and table.layers:
        plots["bits_per_layer"] = plot_bits_per_layer(table, out / "bits_per_layer.png")

    first_prune = next((s for s, r in by_role if r == "prune"), None)
    first_quant = next((s for s, r in by_role if r == "quantize"), None)
    if first_prune is not None:
        before_ckpt = read_checkpoint(run / _checkpoint_before(initial, stages, first_prune))
        last_prune_side = [s for s, r in by_role if r in ("prune", "retrain")][-1]
        after_ckpt = read_checkpoint(run / last_prune_side.checkpoint)
        names = _largest(table, after_ckpt)
        if names:
            plots["weights_pruning"] = plot_weight_distributions(
                _tensors_of(before_ckpt, names),
                _kept_values(after_ckpt, names),
                out / "weights_pruning.png",
            )
        else:
            notes.append("No pruned layer: no weight distribution before/after pruning.")
    else:
        notes.append("No prune stage: no weight distribution before/after pruning.")
    if first_quant is not None:
        pre = read_checkpoint(run / _checkpoint_before(initial, stages, first_quant))
        clustered = read_checkpoint(run / first_quant.checkpoint)
        final = read_checkpoint(run / stages[-1].checkpoint)
        names = [n for n in _largest(table, clustered) if n in clustered.shared]
        bits = _bits_by_layer(first_quant.details)
        layers = {}
        for n in names:
            end = final.shared.get(n)
            # the cluster sizes after clustering, as the crosses they set the height of (a
            # later quantize stage may leave the layer with a codebook of another size)
            first = clustered.shared[n]
            counts = torch.bincount(
                first.indices[first.mask].long(), minlength=first.codebook.numel()
            )
            layers[n] = QuantizedLayerData(
                weights=_kept_values(pre, [n]).get(n, np.zeros(0, dtype=np.float32)),
                clustered=first.codebook.numpy(),
                finetuned=None if end is None else end.codebook.numpy(),
                counts=counts.numpy(),
                bits=bits.get(n),
            )
        if layers:
            plots["weights_quantized"] = plot_quantized_distributions(
                layers, out / "weights_quantized.png"
            )
    else:
        notes.append("No quantize stage: no distribution with centroids.")
    sens = next((s for s, r in by_role if s.kind == "sensitivity"), None)
    sens_file = None
    if sens is not None and (run / str(sens.details.get("file", ""))).is_file():
        sens_file = run / str(sens.details["file"])
    elif sensitivity is not None:
        sens_file = Path(sensitivity)
    if sens_file is not None:
        result = _read_sensitivity(sens_file)
        plots["sensitivity"] = plot_sensitivity(result, out / "sensitivity.png")
    else:
        notes.append("No sensitivity stage in the recipe: no sensitivity curves.")
    name = title or recipe.name or f"deepzip run {run.name}"
    return RunReport(name, run, recipe, initial, tuple(stages), table, plots, tuple(notes))


def _acc(record: StageRecord) -> float | None:
    return record.test_acc if record.test_acc is not None else record.val_acc


def _checkpoint_before(
    initial: StageRecord, stages: Sequence[StageRecord], stage: StageRecord
) -> str:
    earlier = [s for s in stages if s.index < stage.index]
    return earlier[-1].checkpoint if earlier else initial.checkpoint


def _bits_by_layer(details: Mapping[str, Any]) -> dict[str, int]:
    layers = details.get("report", {}).get("layers", [])
    return {str(layer["name"]): int(layer["bits"]) for layer in layers if "bits" in layer}


def _read_sensitivity(path: Path) -> SensitivityResult:
    """A ``SensitivityResult.save_json`` file read back.

    Raises:
        ConfigError: the file is not such JSON (names the file and what is wrong).
    """
    try:
        data = json.loads(path.read_text("utf-8"))
        layers = data["layers"]
        result = SensitivityResult(
            baseline=float(data["baseline"]),
            sparsities=tuple(float(s) for s in data["sparsities"]),
            curves={str(k): tuple(float(a) for a in v["accuracy"]) for k, v in layers.items()},
            weights={str(k): int(v["weights"]) for k, v in layers.items()},
            skipped=tuple(
                Skipped(str(e["name"]), str(e["reason"])) for e in data.get("skipped", [])
            ),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError too
        raise ConfigError(f"{path}: not a sensitivity JSON file ({exc!r})") from exc
    for name, accs in result.curves.items():
        if len(accs) != len(result.sparsities):
            raise ConfigError(
                f"{path}: layer {name!r} has {len(accs)} accuracies for "
                f"{len(result.sparsities)} sparsities"
            )
    return result


# ------------------------------------------------------------------------------- rendering

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1180px; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f3f7; } td:first-child, th:first-child { text-align: left; }
tr.total td { font-weight: bold; background: #fafafa; }
.summary { display: flex; gap: 1.5em; flex-wrap: wrap; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; }
.card b { display: block; font-size: 1.4em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; } pre { background: #f6f8fa; padding: 1em;
overflow-x: auto; font-size: 0.85em; } .note { color: #8a5a00; }
"""


# Marks <body data-plots="rendered/total"> once the page has loaded, and warns in the page when
# a plot did not decode (scripts/screenshot_report.sh reads the mark from the rendered DOM).
_RENDER_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll("figure img"));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-plots", ok.length + "/" + imgs.length);
  if (ok.length !== imgs.length) {
    var p = document.createElement("p");
    p.className = "note";
    p.textContent = (imgs.length - ok.length) + " plot(s) failed to render.";
    document.body.insertBefore(p, document.body.firstChild);
  }
});
</script>"""


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], total: bool) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="total"' if total and i == len(rows) - 1 else ""
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def render_html(report: RunReport) -> str:
    """The whole report as one HTML page, the plots embedded as base64 PNGs."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
    ]
    if report.recipe.description:
        parts.append(f"<p>{esc(report.recipe.description)}</p>")
    cards = []
    if report.table is not None:
        cards.append(("compression ratio", f"{report.table.ratio:.1f}×"))
        cards.append((".dzip file", f"{report.table.file_bytes:,} B"))
        cards.append(("float32", f"{report.table.float32_bytes:,} B"))
    base, dense = accuracy_reference(report.initial, report.stages)
    if base.test_acc is not None:
        name = "dense" if dense else "starting"
        cards.append((f"{name} test accuracy", _pct(base.test_acc)))
    final = report.final_test_acc
    if final is not None:
        cards.append(("final test accuracy (decoded)", _pct(final)))
        if base.test_acc is not None:
            cards.append(("change", f"{100 * (final - base.test_acc):+.2f} points"))
    parts.append(
        '<div class="summary">'
        + "".join(f'<div class="card">{esc(k)}<b>{esc(v)}</b></div>' for k, v in cards)
        + "</div>"
    )
    records = [report.initial.to_dict(), *(s.to_dict() for s in report.stages)]
    parts.append("<h2>Stages</h2>")
    parts.append(_html_table(STAGE_HEADERS, stage_rows(records), total=False))
    if report.table is not None:
        parts.append("<h2>Per-layer compression (the paper's Tables 2 and 3)</h2>")
        parts.append(
            _html_table(COMPRESSION_HEADERS, compression_table_rows(report.table), total=True)
        )
        parts.append(f"<p>{esc(compression_caption(report.table))}</p>")
    parts.append("<h2>Plots</h2>")
    for name, path in report.plots.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = PLOT_CAPTIONS.get(name, name)
        parts.append(
            f'<figure id="{esc(name)}"><img alt="{esc(name)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
    parts.extend(f'<p class="note">{esc(n)}</p>' for n in report.notes)
    parts.append("<h2>Recipe</h2>")
    parts.append(f"<pre>{esc(tomli_w.dumps(report.recipe.to_dict()))}</pre>")
    parts.append(_RENDER_CHECK)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(report: RunReport) -> str:
    """The report as Markdown (the plots linked as files next to it).

    The title's line breaks become spaces (a break would end the heading).
    """
    records = [report.initial.to_dict(), *(s.to_dict() for s in report.stages)]
    out = [
        "# " + " ".join(report.title.splitlines()),
        "",
        "## Stages",
        "",
        markdown_table(STAGE_HEADERS, stage_rows(records)),
    ]
    if report.table is not None:
        out += ["## Per-layer compression", "", compression_markdown(report.table)]
    out += ["## Plots", ""]
    for name, path in report.plots.items():
        out += [f"![{name}]({path.name})", "", PLOT_CAPTIONS.get(name, name), ""]
    out += [f"_{n}_" for n in report.notes]
    return "\n".join(out) + "\n"


def write_run_report(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    sensitivity: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``report.html`` (self-contained), ``report.md``, ``report.json`` and the PNGs.

    ``sensitivity``: see :func:`build_run_report`.

    Returns:
        The HTML file's path.
    """
    report = build_run_report(run_dir, out_dir, title=title, sensitivity=sensitivity)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return atomic_write_text(out / "report.html", render_html(report))
