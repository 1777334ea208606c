"""Every table cell and figure README.md quotes from a benchmark run is that of the committed JSON.

Each test parses one README table (or sentence), recomputes its figures from the raw fields
of ``benchmarks/results/*.json`` and compares the strings, rounded as the README rounds them.
A table that cannot be found fails; so does a README cell edited by hand or a JSON
re-generated without the README following it. No benchmark runs here.
(tests/test_review28_claims.py checks the Weightless file shrink, the coding speeds and the gap
width's missed tensor; they are not repeated.)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MINUS = "\u2212"

Table = list[list[str]]


def _lines() -> list[str]:
    return (ROOT / "README.md").read_text(encoding="utf-8").splitlines()


def _text() -> str:
    return " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())


def _json(name: str) -> Any:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _cells(line: str) -> list[str]:
    assert line.startswith("|"), line
    assert line.rstrip().endswith("|"), line
    return [c.strip() for c in line.strip()[1:-1].split("|")]


def _table(header_start: str) -> tuple[list[str], Table]:
    """The README table whose header line starts with ``| header_start``: its header cells and
    body rows. Exactly one such table must exist, with a separator line and a body."""
    lines = _lines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("| " + header_start)]
    assert len(starts) == 1, f"README table {header_start!r}: {len(starts)} found"
    i = starts[0]
    header = _cells(lines[i])
    sep = _cells(lines[i + 1])
    assert all(set(c) <= {"-", ":"} and c for c in sep), lines[i + 1]
    assert len(sep) == len(header)
    rows: Table = []
    for ln in lines[i + 2 :]:
        if not ln.startswith("|"):
            break
        row = _cells(ln)
        assert len(row) == len(header), ln
        rows.append(row)
    assert rows, f"README table {header_start!r} has no rows"
    return header, rows


def _signed(x: float, digits: int = 2) -> str:
    """+0.41 / −0.18, the README's points (a true minus sign)."""
    return f"{x:+.{digits}f}".replace("-", MINUS)


def _neg(x: float, digits: int = 2) -> str:
    """A drop written without a plus sign: −0.18, 0.00."""
    return f"{x:.{digits}f}".replace("-", MINUS)


def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def _pts(a: float, b: float) -> float:
    """a − b in points, as the JSON's four-decimal accuracies give it exactly."""
    return round(100 * (a - b), 2)


def _in(text: str, *snippets: str) -> None:
    for s in snippets:
        assert s in text, s


# --- Results (reproduce.json) ------------------------------------------------------------


def test_results_table_is_reproduce_json() -> None:
    _, rows = _table("network | paper (MNIST): error")
    models = _json("reproduce.json")["models"]
    assert [r[0] for r in rows] == ["LeNet-300-100", "LeNet-5"]
    for row, (name, m) in zip(rows, models.items(), strict=True):
        assert row[0].lower() == name
        p = m["paper"]
        assert row[1] == f"{p['err_ref']:.2f}% → {p['err_compressed']:.2f}%"
        assert row[2] == f"{p['kb_ref']} KB → {p['kb_compressed']} KB"
        assert row[3] == f"{p['ratio']}×"
        err = f"{100 - 100 * m['dense_acc']:.2f}% → {100 - 100 * m['final_acc']:.2f}%"
        assert row[4] == f"{err} ({_neg(m['delta_points'])} points)"
        runs = m["runs"]
        assert [r["seed"] for r in runs] == [0, 1, 2, 3, 4]
        assert row[5] == ", ".join(_signed(r["delta_points"]) for r in runs)
        assert row[6] == f"{m['float_bytes']:,} B → {m['file_bytes']:,} B"
        assert row[7] == f"**{m['float_bytes'] / m['file_bytes']:.1f}×**"
        assert row[7] == f"**{m['ratio']:.1f}×**"
        v = m["variants"]["paper"]
        assert row[8] == f"{v['ratio']:.1f}× ({100 - 100 * v['final_acc']:.2f}%)"
        # the reported run is the median drop of the seeds (reproduce.py's _median_run)
        ordered = sorted(runs, key=lambda r: r["delta_points"])
        assert ordered[(len(runs) - 1) // 2]["seed"] == m["seed"]


def test_results_prose_is_reproduce_json() -> None:
    d = _json("reproduce.json")
    assert d["seeds"] == 5
    assert d["device"] == "cpu"
    assert d["machine"]["threads"] == 2
    assert d["command"].startswith("python benchmarks/reproduce.py --seeds 5")
    text = _text()
    ranges, worst, val = [], [], []
    for m in d["models"].values():
        ratios = [r["ratio"] for r in m["runs"]]
        ranges.append(f"{min(ratios):.1f}-{max(ratios):.1f}×")
        worst.append(_neg(min(r["delta_points"] for r in m["runs"])))
        val.append(
            _neg(statistics.median(_pts(r["final_val_acc"], r["dense_val_acc"]) for r in m["runs"]))
        )
    _in(text, f"in every seed (LeNet-300-100 {ranges[0]}, LeNet-5 {ranges[1]})")
    _in(text, f"(the worst: {worst[0]} and {worst[1]})")
    _in(text, f"its median drop there is {val[0]} (LeNet-5: {val[1]})")
    smaller = sorted(
        round(100 * (1 - m["file_bytes"] / (m["float_bytes"] / m["variants"]["paper"]["ratio"])))
        for m in d["models"].values()
    )
    _in(text, f"make the file {smaller[0]}-{smaller[-1]}% smaller")
    old = _json("reproduce_cached_dense_seed0.json")["models"]
    a, b = old["lenet-300-100"], old["lenet-5"]
    _in(
        text,
        f"had {a['ratio']:.1f}× at {_neg(a['delta_points'])} and "
        f"{b['ratio']:.1f}× at {_neg(b['delta_points'])}",
    )


def test_pruning_inside_the_pipeline_table_is_reproduce_json() -> None:
    _, rows = _table("model | kept | Δ test per seed 0-4")
    models = _json("reproduce.json")["models"]
    assert len(rows) == len(models)
    for row, (name, m) in zip(rows, models.items(), strict=True):
        assert row[0].lower() == name
        prune = [next(s for s in r["stages"] if s["stage"] == "prune") for r in m["runs"]]
        train = [next(s for s in r["stages"] if s["stage"] == "train") for r in m["runs"]]
        test = [_pts(p["test_acc"], t["test_acc"]) for p, t in zip(prune, train, strict=True)]
        val = [_pts(p["val_acc"], t["val_acc"]) for p, t in zip(prune, train, strict=True)]
        assert row[1] == _pct(prune[0]["kept"])
        assert row[2] == ", ".join(_signed(x) for x in test)
        assert row[3] == _signed(statistics.median(test))
        assert row[4] == _signed(statistics.median(val))


# --- Stage 1: pruning (prune_lenet*.json) ------------------------------------------------


def test_pruning_table_is_prune_lenet_json() -> None:
    _, rows = _table("model | dense | pruned | Δ test, median of 5")
    d = _json("prune_lenet.json")
    assert d["command"] == "python benchmarks/prune_lenet.py --seeds 5 --jobs 2 --device cpu"
    assert d["seeds"] == 5
    assert d["split_seed"] == 0
    models = d["models"]
    assert len(rows) == len(models)
    for row, (name, m) in zip(rows, models.items(), strict=True):
        assert row[0].lower() == name
        runs = m["runs"]
        assert [r["seed"] for r in runs] == [0, 1, 2, 3, 4]
        assert row[1] == _pct(m["dense_acc"])
        assert row[2] == _pct(m["pruned_acc"])
        per_seed = ", ".join(_neg(r["delta_points"]) for r in runs)
        assert row[3] == f"{_neg(m['delta_points'])} ({per_seed})"
        assert m["delta_points"] == statistics.median(r["delta_points"] for r in runs)
        val = [_pts(r["val_acc_pruned"], r["val_acc_dense"]) for r in runs]
        assert row[4] == _neg(statistics.median(val))
        kept = ", ".join(f"{layer} {100 * k:.2g}%" for layer, k in m["kept"].items())
        assert row[5] == kept
        assert row[6] == _pct(m["kept_fraction"])
        assert row[7] == f"{m['weights'] / m['weights_kept']:.1f}×"
        p = m["paper_mnist"]
        assert row[8] == (
            f"{100 * p['overall']:.0f}% kept, {p['ratio']}×, "
            f"err {p['err_before']:.2f}% → {p['err_after']:.2f}%"
        )


def test_pruning_prose_is_the_committed_pruning_runs() -> None:
    text = _text()
    m = _json("prune_lenet.json")["models"]
    scatter = max(abs(r["delta_points"] - v["delta_points"]) for v in m.values() for r in v["runs"])
    _in(text, f"Single runs scatter by up to {scatter:.2f} points around the median")
    worst = min(r["delta_points"] for r in m["lenet-300-100"]["runs"])
    _in(text, f"one LeNet-300-100 seed is just beyond it ({_neg(worst)})")
    cuda = _json("prune_lenet_cuda_before_fix.json")["models"]
    _in(
        text,
        f"had medians of {_neg(cuda['lenet-300-100']['delta_points'])} and "
        f"{_neg(cuda['lenet-5']['delta_points'])}",
    )
    first = _json("prune_lenet_lenet5_cuda_first_draw.json")["models"]["lenet-5"]
    _in(text, f"gave {_neg(first['delta_points'])} for LeNet-5")
    seed0 = _json("prune_lenet_cpu_seed0.json")["models"]
    _in(
        text,
        f"had {_neg(seed0['lenet-300-100']['delta_points'])} and "
        f"{_neg(seed0['lenet-5']['delta_points'])}.",
    )
    val = [
        _neg(statistics.median(_pts(r["val_acc_pruned"], r["val_acc_dense"]) for r in v["runs"]))
        for v in m.values()
    ]
    _in(text, f"(medians {val[0]} and {val[1]})")


# --- Post-training (posttrain.json) ------------------------------------------------------


def _setting(s: dict[str, Any], pruned_note: bool) -> str:
    if "step" in s:
        text = f"one grid step {s['step']:g}"
    else:
        text = f"{s['quantizer']}, {s['levels']} levels"
    if pruned_note and s.get("sparsity"):
        text += f", {100 * s['sparsity']:.0f}% pruned"
    return text


def test_posttrain_table_is_posttrain_json() -> None:
    _, rows = _table("model | float test acc | best ratio within 0.3 points")
    models = _json("posttrain.json")["models"]
    assert len(rows) == len(models)
    for row, (name, m) in zip(rows, models.items(), strict=True):
        assert row[0].lower() == name
        assert row[1] == _pct(m["float_acc"])
        t = m["best_selected_on_test"]
        t_delta = _neg(_pts(t["test_acc"], m["float_acc"]))
        assert row[2] == f"{t['ratio']:.1f}× ({_setting(t['setting'], True)}; {t_delta})"
        assert row[3] == f"{m['nncodec']['ratio']:.1f}×"
        assert m["selected_on"] == "validation"
        assert row[4] == f"{m['best_ratio']:.1f}× ({_setting(m['best_setting'], True)})"
        assert row[5] == _neg(_pts(m["best_acc"], m["float_acc"]))
        assert row[5] == _neg(m["best_test_delta_points"])


def test_posttrain_prose_is_posttrain_json() -> None:
    text = _text()
    m = _json("posttrain.json")["models"]
    five = m["lenet-5"]
    per_tensor = [
        s
        for s in five["sweep"]
        if s["setting"]["quantizer"] != "uniform" or "step" not in s["setting"]
    ]
    ok = [s for s in per_tensor if _pts(s["test_acc"], five["float_acc"]) >= -0.3]
    before = max(s["ratio"] for s in ok)
    after = five["best_selected_on_test"]["ratio"]
    _in(text, f"moved LeNet-5 from {before:.1f}× to {after:.1f}× among the test picks")
    _in(text, f"({five['best_ratio']:.1f}× picked on validation)")
    _in(text, f"`deepzip compress --step {five['best_setting']['step']:g}` is the validation pick")
    val = {_pts(v["best_val_acc"], v["float_val_acc"]) for v in m.values()}
    test = {_pts(v["best_acc"], v["float_acc"]) for v in m.values()}
    assert len(val) == len(test) == 1
    _in(
        text,
        f"loses {-test.pop():.2f} test points where the validation split promised {-val.pop():.2f}",
    )


# --- Stage 2: trained quantization (quantize_lenet.json) ---------------------------------


def test_trained_quantization_prose_is_quantize_lenet_json() -> None:
    text = _text()
    m = _json("quantize_lenet.json")["models"]
    a, b = m["lenet-300-100"], m["lenet-5"]

    def drop(model: dict[str, Any], key: str) -> str:
        return _neg(_pts(model["sweep"][key]["finetuned"], model["pruned_acc"]))

    pa, pb = a["paper_setting"], b["paper_setting"]
    _in(
        text,
        f"LeNet-300-100 {_pct(pa['pruned'])} → {_pct(pa['finetuned'])}, "
        f"LeNet-5 {_pct(pb['pruned'])} → {_pct(pb['finetuned'])}",
    )
    worst = max(abs(_pts(p["finetuned"], p["pruned"])) for p in (pa, pb))
    _in(text, f"both stay within {worst:.2f} points of their pruned accuracy")
    _in(
        text,
        f"({drop(a, 'kmeans-linear-2')} points against {drop(a, 'kmeans-density-2')} density, "
        f"{drop(a, 'kmeans-forgy-2')} Forgy, {drop(a, 'kmeans-kmeans++-2')} k-means++)",
    )
    inits = [
        _pts(b["sweep"][f"kmeans-{i}-3"]["finetuned"], b["pruned_acc"])
        for i in ("linear", "density", "forgy", "kmeans++")
    ]
    _in(text, f"at 3 bits on LeNet-5 they are within {max(inits) - min(inits):.2f} points")
    _in(
        text,
        f"best at 3 bits ({drop(a, 'kmeans-fisher-3')} and {drop(b, 'kmeans-fisher-3')} against "
        f"{drop(a, 'kmeans-linear-3')} and {drop(b, 'kmeans-linear-3')} plain)",
    )
    _in(
        text,
        f"not at 2 bits ({drop(a, 'kmeans-fisher-2')} and {drop(b, 'kmeans-fisher-2')} against "
        f"{drop(a, 'kmeans-linear-2')} and {drop(b, 'kmeans-linear-2')})",
    )
    for model in (a, b):
        for bits in range(4, 9):
            assert (
                abs(_pts(model["sweep"][f"uniform-{bits}"]["finetuned"], model["pruned_acc"]))
                <= 0.1
            )
    _in(
        text,
        f"({a['sweep']['uniform-4']['entropy_bits']:.2f} against "
        f"{a['sweep']['kmeans-linear-4']['entropy_bits']:.2f} bits at 4 bits on LeNet-300-100)",
    )
    _in(
        text,
        f"(on LeNet-300-100, {a['sweep']['ecsq-8']['entropy_bits']:.2f} bits per index at 8 bits, "
        f"{drop(a, 'ecsq-8')} points)",
    )
    _in(
        text,
        f"({drop(a, 'ecsq-2')} and {drop(b, 'ecsq-2')} points against "
        f"{drop(a, 'uniform-2')} and {drop(b, 'uniform-2')})",
    )


# --- Incremental quantization (incremental*.json) ----------------------------------------


def _kb(n: int) -> str:
    return f"{n / 1000:.0f} kB" if n >= 100_000 else f"{n / 1000:.1f} kB"


METHOD_ROWS = {
    "SLQ": "slq",
    "MLQ": "mlq",
    "INQ (powers of two)": "inq",
    "k-means + fine-tuning": "kmeans",
}
LEVELS = ["5", "4", "3", "ternary"]


@pytest.mark.parametrize(
    ("header", "name", "size"),
    [("LeNet-5 (dense", "lenet-5", "MB"), ("tiny-resnet (dense", "tiny-resnet", "kB")],
)
def test_incremental_main_tables_are_incremental_json(header: str, name: str, size: str) -> None:
    head, rows = _table(header)
    d = _json("incremental.json")
    assert d["seeds"] == 3
    assert d["threads"] == 2
    assert d["budget"]["batches"] == 1280
    m = d["models"][name]
    fb = m["float32_bytes"]
    float_size = f"{fb / 1e6:.2f} MB" if size == "MB" else f"{fb / 1000:.0f} kB"
    label = "LeNet-5" if name == "lenet-5" else name
    assert head[0] == f"{label} (dense {_pct(m['dense_acc'])}, {float_size} float32)"
    assert head[1:] == ["5 bits", "4 bits", "3 bits", "ternary"]
    assert [r[0] for r in rows] == list(METHOD_ROWS)
    for row in rows:
        method = METHOD_ROWS[row[0]]
        for cell, level in zip(row[1:], LEVELS, strict=True):
            key = f"{method}_{level}"
            acc = _pct(m["acc"][key])
            best = max(m["acc"][f"{x}_{level}"] for x in METHOD_ROWS.values())
            if m["acc"][key] == best:
                acc = f"**{acc}**"
            assert cell == f"{acc} · {_kb(m['bytes'][key])}", key
            runs = m["runs"][key]
            assert m["acc"][key] == statistics.median(r["acc"] for r in runs)


def test_incremental_paired_table_is_incremental_json() -> None:
    _, rows = _table("model | comparison | test, seeds 0/1/2 (p)")
    models = _json("incremental.json")["models"]
    assert len(rows) == 8
    for row in rows:
        name = row[0].lower()
        method, rest = row[1].split(" − k-means, ")
        level = {"3 bits": "3", "ternary": "ternary"}[rest]
        per = models[name]["paired"][f"{method.lower()}_{level}_vs_kmeans_{level}"]
        assert [s["seed"] for s in per] == [0, 1, 2]
        diffs = [_signed(100 * s["diff"]) for s in per]
        if all(s["p"] < 0.005 for s in per):
            assert row[2] == ", ".join(diffs) + " (all < 0.005)"
        else:
            assert row[2] == ", ".join(
                f"{d} ({s['p']:.2f})" for d, s in zip(diffs, per, strict=True)
            )
        assert row[3] == ", ".join(_signed(100 * s["val"]["diff"]) for s in per)


def test_incremental_prose_is_incremental_json() -> None:
    text = _text()
    d = _json("incremental.json")
    five, tiny = d["models"]["lenet-5"], d["models"]["tiny-resnet"]
    _in(text, f"({d['seconds'] / 60:.0f} minutes on 2 CPU cores in all)")
    _in(
        text,
        f"within 0.1 point of dense on both networks "
        f"({_signed(_pts(five['acc']['slq_5'], five['dense_acc']))} and "
        f"{_signed(_pts(tiny['acc']['slq_5'], tiny['dense_acc']))})",
    )
    _in(
        text,
        f"MLQ ternary on LeNet-5 is {_pts(five['dense_acc'], five['acc']['mlq_ternary']):.2f} "
        "points below dense",
    )
    _in(
        text,
        f"the 3-seed medians tie: {_pct(tiny['acc']['slq_3'])} (SLQ) and "
        f"{_pct(tiny['acc']['mlq_3'])} (MLQ) against {_pct(tiny['acc']['kmeans_3'])}",
    )
    a, b = d["budget"]["lrs"]
    _in(text, f"runs at lr {a:.0e} and at {b:.0e}".replace("e-0", "e-"))
    ternary = [
        100 * s["diff"]
        for m in (five, tiny)
        for c in ("slq_ternary_vs_kmeans_ternary", "mlq_ternary_vs_kmeans_ternary")
        for s in m["paired"][c]
    ]
    assert len(ternary) == 12
    assert min(ternary) > 0
    _in(
        text,
        f"beat k-means at ternary on both networks in every seed, by {min(ternary):.2f} to "
        f"{max(ternary):.2f} points",
    )
    three = [s["diff"] for c in ("slq_3", "mlq_3") for s in five["paired"][f"{c}_vs_kmeans_3"]]
    assert min(three) > 0
    _in(text, "and at 3 bits on LeNet-5 in every seed")


def test_incremental_json_is_the_combined_per_model_reruns() -> None:
    """incremental.json is `--combine` of the two per-model runs the README names."""
    text = _text()
    d = _json("incremental.json")
    parts = [_json(f"incremental_{n}_rerun.json") for n in ("lenet5", "tiny_resnet")]
    assert list(d["models"]) == ["lenet-5", "tiny-resnet"]
    for part in parts:
        (name,) = part["models"]
        assert d["models"][name] == part["models"][name]
        assert d["targets"][name] == part["targets"][name]
        for field in ("budget", "seeds", "schedules", "threads", "torch", "machine", "model_args"):
            if field == "model_args":
                assert d[field][name] == part[field][name]
            else:
                assert d[field] == part[field], field
        assert part["command"] in d["command"]
    assert d["seconds"] == sum(p["seconds"] for p in parts)
    _in(
        text,
        "`python benchmarks/incremental.py --threads 2 --models lenet-5 --out "
        "benchmarks/results/incremental_lenet5_rerun.json` and the same with "
        "`--models tiny-resnet`",
        "joined by `python benchmarks/incremental.py --combine "
        "benchmarks/results/incremental_lenet5_rerun.json "
        "benchmarks/results/incremental_tiny_resnet_rerun.json`",
    )


def test_incremental_reruns_prose_is_their_json() -> None:
    text = _text()
    main = _json("incremental_first_run.json")
    fresh = _json("incremental_fresh_machine.json")
    rebuilt = _json("incremental_tiny_resnet_rebuilt.json")
    _in(
        text,
        f"both models in one process ({main['seconds'] / 60:.0f} minutes; kept as "
        "`benchmarks/results/incremental_first_run.json`)",
    )
    assert main["command"].startswith("python benchmarks/incremental.py --threads 2 --out ")
    n_runs = sum(len(r) for m in main["models"].values() for r in m["runs"].values())
    _in(text, f"all {n_runs} runs repeated")
    _in(text, f"({fresh['seconds'] / 60:.0f} minutes, under other load;")
    ft = fresh["models"]["tiny-resnet"]
    _in(
        text,
        f"trains another tiny-resnet ({_pct(ft['dense_acc'])} test instead of "
        f"{_pct(main['models']['tiny-resnet']['dense_acc'])})",
    )
    moved = {
        label: "/".join(f"{100 * ft['acc'][f'{m}_{lv}']:.2f}" for lv in LEVELS) + "%"
        for label, m in (
            ("SLQ 5/4/3 bits and ternary", "slq"),
            ("MLQ", "mlq"),
            ("INQ", "inq"),
            ("k-means", "kmeans"),
        )
    }
    for label, figures in moved.items():
        _in(text, f"{label} {figures}")
    # LeNet-5 bit for bit but INQ ternary's bytes
    lenet = _run_diffs(main, fresh, "lenet-5")
    assert {(key, field) for key, _, field, _, _ in lenet} == {("inq_ternary", "bytes")}
    (delta,) = {before - after for _, _, _, before, after in lenet}
    _in(text, f"INQ ternary's bytes ({delta} bytes smaller")
    rt = rebuilt["models"]["tiny-resnet"]
    _in(text, f"({_pct(rt['dense_acc'])} test, {_pct(rt['dense_val_acc'])} validation;")
    _in(
        text,
        f"({rebuilt['seconds'] / 60:.0f} minutes; "
        f"`benchmarks/results/incremental_tiny_resnet_rebuilt.json`)",
    )
    full = _run_diffs(main, rebuilt, "tiny-resnet")
    assert {(k, f) for k, _, f, _, _ in full} == {("inq_ternary", "bytes")}
    shrink = sorted(x - y for _, _, _, x, y in full)
    n = sum(len(r) for r in rt["runs"].values())
    _in(text, f"repeated all {n} tiny-resnet runs'")
    _in(text, f"INQ ternary's ({shrink[0]} to {shrink[-1]} bytes smaller")


def _run_diffs(a: Any, b: Any, model: str) -> list[tuple[str, int, str, Any, Any]]:
    """(key, seed, field, a's value, b's value) for every per-run figure that differs."""
    out = []
    for key, runs in a["models"][model]["runs"].items():
        for ra, rb in zip(runs, b["models"][model]["runs"][key], strict=True):
            assert ra["seed"] == rb["seed"]
            for field in ("acc", "val_acc", "lr", "bytes"):
                if ra[field] != rb[field]:
                    out.append((key, ra["seed"], field, ra[field], rb[field]))
    return out


def test_incremental_five_seed_table_is_its_json() -> None:
    _, rows = _table("model | 3 bits | test, seeds 0-4")
    d = _json("incremental_3bit_5seeds.json")
    assert d["seeds"] == 5
    assert d["command"] == (
        "python benchmarks/incremental.py --threads 2 --levels 3 --seeds 5 "
        "--out benchmarks/results/incremental_3bit_5seeds.json"
    )
    assert len(rows) == 6
    for row in rows:
        m = d["models"][row[0].lower()]
        method = {"SLQ": "slq", "MLQ": "mlq", "k-means": "kmeans"}[row[1]]
        key = f"{method}_3"
        runs = m["runs"][key]
        assert [r["seed"] for r in runs] == [0, 1, 2, 3, 4]
        assert row[2] == ", ".join(f"{100 * r['acc']:.2f}" for r in runs)
        median = _pct(m["acc"][key])
        assert row[3] == (median if method == "kmeans" else f"**{median}**")
        if method == "kmeans":
            assert row[4:] == ["", "", ""]
            continue
        per = m["paired"][f"{key}_vs_kmeans_3"]
        diffs = [100 * s["diff"] for s in per]
        assert row[4] == ", ".join(_signed(x) for x in diffs)
        assert row[5] == _signed(statistics.mean(diffs))
        assert row[6] == ", ".join(_signed(100 * s["val"]["diff"]) for s in per)


def test_incremental_five_seed_prose_is_its_json() -> None:
    text = _text()
    d = _json("incremental_3bit_5seeds.json")
    main = _json("incremental.json")
    _in(text, f"benchmarks/results/incremental_3bit_5seeds.json`, {d['seconds'] / 60:.0f} minutes)")
    n = 0
    for name, m in d["models"].items():
        for key, runs in m["runs"].items():
            for r in runs[:3]:
                n += 1
                ref = main["models"][name]["runs"][key][r["seed"]]
                assert {f: r[f] for f in ("acc", "lr", "bytes")} == {
                    f: ref[f] for f in ("acc", "lr", "bytes")
                }
    _in(text, f"(accuracy, learning rate and bytes of all {n} runs)")
    t = d["models"]["tiny-resnet"]
    slq = [r["acc"] for r in t["runs"]["slq_3"]]
    km = [r["acc"] for r in t["runs"]["kmeans_3"]]
    _in(
        text,
        f"({100 * min(slq):.2f}-{100 * max(slq):.2f}% against "
        f"{100 * min(km):.2f}-{100 * max(km):.2f}%)",
    )
    med = [_pts(t["acc"][f"{x}_3"], t["acc"]["kmeans_3"]) for x in ("slq", "mlq")]
    _in(text, f"{_signed(med[0])} and {_signed(med[1])} points on the median")
    ahead = [sum(s["diff"] > 0 for s in t["paired"][f"{x}_3_vs_kmeans_3"]) for x in ("slq", "mlq")]
    _in(text, f"ahead in {ahead[0]} and {ahead[1]} of 5 seeds")
    inq = [_pct(m["acc"]["inq_3"]) for m in d["models"].values()]
    _in(text, f"has medians {inq[0]} and {inq[1]}")


def test_incremental_before_fix_and_2560_prose_is_their_json() -> None:
    text = _text()
    main = _json("incremental.json")["models"]
    before = _json("incremental_before_fix.json")
    worst = max(
        (abs(_pts(main[n]["acc"][k], before["models"][n]["acc"][k])), n, k)
        for n in main
        for k in main[n]["acc"]
    )
    assert worst[1:] == ("tiny-resnet", "mlq_ternary")
    _in(
        text,
        f"differ from these by at most {worst[0]:.2f} points (MLQ ternary on the residual CNN)",
    )
    assert before["targets"] == _json("incremental.json")["targets"]
    bt = before["models"]["tiny-resnet"]["acc"]
    _in(text, f"(SLQ {_pct(bt['slq_3'])} against {_pct(bt['kmeans_3'])} there too)")
    long = _json("incremental_2560.json")
    assert long["budget"]["batches"] == 2560
    assert "--batches 2560 --out benchmarks/results/incremental_2560.json" in long["command"]
    f5, tr = long["models"]["lenet-5"], long["models"]["tiny-resnet"]
    _in(
        text,
        f"MLQ ternary on LeNet-5 reaches {_neg(_pts(f5['acc']['mlq_ternary'], f5['dense_acc']))}",
    )
    _in(
        text,
        f"({_pct(tr['acc']['slq_3'])} and {_pct(tr['acc']['mlq_3'])} against "
        f"{_pct(tr['acc']['kmeans_3'])})",
    )
    _in(
        text,
        f"LeNet-5 drops to {_neg(_pts(f5['acc']['slq_5'], f5['dense_acc']))} "
        f"({_neg(_pts(f5['val_acc']['slq_5'], f5['dense_val_acc']))} on validation",
    )


# --- Weightless (weightless*.json) -------------------------------------------------------


def test_weightless_table_is_weightless_json() -> None:
    _, rows = _table("model | layer | weights | kept | K | t |")
    models = _json("weightless.json")["models"]
    expected = [(n, layer, v) for n, m in models.items() for layer, v in m["layers"].items()]
    assert len(rows) == len(expected)
    for row, (name, layer, v) in zip(rows, expected, strict=True):
        assert row[:2] == [name.replace("lenet", "LeNet"), layer]
        assert row[2] == f"{v['weights']:,}"
        assert row[3] == f"{100 * v['kept'] / v['weights']:.1f}%"
        assert row[4] == str(v["clusters"])
        assert row[5] == str(v["cell_bits"])
        assert row[6] == f"{v['deep_compression_bytes']:,} B ({v['deep_compression_ratio']:.0f}×)"
        assert row[7] == f"{v['weightless_bytes']:,} B ({v['weightless_ratio']:.0f}×)"
        assert row[8] == f"{v['weightless_vs_deep_compression']:.2f}×"
        assert row[9] == (
            f"{v['weightless_lzma_bytes']:,} B ({v['weightless_lzma_vs_deep_compression']:.2f}×)"
        )
        assert row[10] == _pct(v["false_positive_rate"])


def test_weightless_prose_is_weightless_json() -> None:
    text = _text()
    d = _json("weightless.json")
    a, b = d["models"]["lenet-300-100"], d["models"]["lenet-5"]
    _in(
        text,
        f"LeNet-300-100 {_pct(a['dense_acc'])} dense, {_pct(a['pruned_acc'])} pruned, "
        f"{_pct(a['final_acc'])} with all three layers",
        f"(validation {_pct(a['final_val_acc'])} against {_pct(a['pruned_val_acc'])} pruned)",
        f"LeNet-5 {_pct(b['dense_acc'])}, {_pct(b['pruned_acc'])}, {_pct(b['final_acc'])}",
        f"(validation {_pct(b['final_val_acc'])} against {_pct(b['pruned_val_acc'])};",
        f"The whole files are {a['dzip_bytes']:,} B ({a['dzip_ratio']:.0f}×) and "
        f"{b['dzip_bytes']:,} B ({b['dzip_ratio']:.0f}×)",
    )
    assert not b["layers"]["fc2"]["within_budget"]
    assert b["layers"]["fc2"]["cell_bits"] == b["weightless"]["max_cell_bits"]
    _in(text, f"no width up to the maximum, {b['weightless']['max_cell_bits']}, kept LeNet-5's fc2")
    minutes = (a["seconds"] + b["seconds"]) / 60
    _in(text, f"{minutes:.0f} minutes on 2 CPU cores, last run in a clean clone")
    fc1 = a["layers"]["fc1"]
    _in(text, f"about {100 * (1 - fc1['kept'] / fc1['cells']):.0f}% of them")
    _in(
        text,
        f"{100 * (1 - fc1['weightless_lzma_bytes'] / fc1['weightless_bytes']):.1f}% off "
        f"fc1's filter",
    )
    for layer in (a, b):
        assert layer["weightless"]["hashes"] == 3
        assert layer["weightless"]["ratio"] == 1.23
    assert (a["retrain"]["epochs_per_trial"], b["retrain"]["epochs_per_trial"]) == (20, 5)


def test_weightless_sweep_table_is_weightless_json() -> None:
    head, rows = _table("fc1 `t` |")
    m = _json("weightless.json")["models"]["lenet-300-100"]
    sweep = m["fc1_sweep"]
    assert head[1:] == [str(r["cell_bits"]) for r in sweep]
    dc = m["layers"]["fc1"]["deep_compression_bytes"]
    assert [r[0] for r in rows] == [
        "Weightless ÷ Deep Compression",
        "the same, LZMA table",
        "zero weights read back non-zero",
        f"validation (pruned: {_pct(m['pruned_val_acc'])})",
        f"test (pruned: {_pct(m['pruned_acc'])})",
    ]
    assert rows[0][1:] == [f"{r['vs_deep_compression']:.2f}×" for r in sweep]
    assert rows[1][1:] == [f"{dc / r['weightless_lzma_bytes']:.2f}×" for r in sweep]
    assert rows[2][1:] == [f"{100 * r['false_positive_rate']:.1f}%" for r in sweep]
    assert rows[3][1:] == [_pct(r["val_acc"]) for r in sweep]
    assert rows[4][1:] == [_pct(r["test_acc"]) for r in sweep]


def test_weightless_sizes_table_is_its_json() -> None:
    head, rows = _table("fc1 | Deep Compression, 5-bit gaps")
    models = _json("weightless_sizes.json")["models"]
    widths = [int(h.split("=")[1].strip()) for h in head[3:]]
    assert head[3:] == [f"`t` = {t}" for t in widths]
    assert len(rows) == 5
    for (name, m), size_row, ratio_row in zip(
        models.items(), rows[0:4:2], rows[1:4:2], strict=True
    ):
        dc = m["deep_compression"]
        by_t = {w["cell_bits"]: w for w in m["weightless"]}
        assert size_row[0] == f"{name.replace('lenet', 'LeNet')}: Weightless"
        assert size_row[1] == f"{dc['paper_gap_width_bytes']:,} B"
        assert size_row[2] == f"{dc['bytes']:,} B ({dc['gap_width']} bits)"
        assert size_row[3:] == [f"{by_t[t]['weightless_bytes']:,} B" for t in widths]
        assert ratio_row[:3] == ["÷ DC at its best gaps", "", ""]
        assert ratio_row[3:] == [f"{by_t[t]['vs_deep_compression']:.2f}×" for t in widths]
    fp_row = rows[4]
    assert fp_row[:3] == ["zero weights read back non-zero", "", ""]
    for t, cell in zip(widths, fp_row[3:], strict=True):
        rates = {
            f"{100 * w['false_positive_rate']:.0f}%"
            for m in models.values()
            for w in m["weightless"]
            if w["cell_bits"] == t
        }
        assert rates == {cell}, (t, rates)


def test_weightless_bounds_prose_is_weightless_sizes_json() -> None:
    text = _text()
    m = _json("weightless_sizes.json")["models"]
    a, b = m["lenet-300-100"], m["lenet-5"]
    bits = 8 * a["deep_compression"]["bytes"] / a["kept"]
    paper_bits = 8 * a["deep_compression"]["paper_gap_width_bytes"] / a["kept"]
    _in(text, f"about {bits:.1f} at its best gap width ({paper_bits:.1f} at the paper's 5 bits)")
    _in(text, "(6.7 bits per kept weight on LeNet-300-100's fc1)")
    assert f"{bits:.1f}" == "6.7"
    t3 = next(w for w in a["weightless"] if w["cell_bits"] == 3)
    _in(
        text,
        f"about {round(t3['false_positives'], -3):,} false positives among fc1's "
        f"{a['kept']:,} kept weights",
    )
    up = [
        round(
            100
            * (x["deep_compression"]["paper_gap_width_bytes"] / x["deep_compression"]["bytes"] - 1)
        )
        for x in (a, b)
    ]
    _in(text, f"would be {up[0]}% (LeNet-300-100) and {up[1]}% (LeNet-5) higher")
    t4 = next(w for w in a["weightless"] if w["cell_bits"] == 4)
    sweep = _json("weightless.json")["models"]["lenet-300-100"]["fc1_sweep"]
    t4_test = next(r for r in sweep if r["cell_bits"] == 4)["test_acc"]
    _in(
        text,
        f"then be {t4['vs_deep_compression_paper_gap_width']:.2f}× on LeNet-300-100, at "
        f"{_pct(t4_test)}",
    )
    la, lb = a["lower_bound"], b["lower_bound"]
    entropies = {f"{x['value_entropy_bits']:.2f}" for x in (la, lb)}
    assert len(entropies) == 1
    _in(text, f"the cluster indices, {entropies.pop()} bits on both fc1 layers")
    _in(
        text,
        f"leaves ε ≥ {100 * la['min_false_positive_rate_at_target']:.1f}% on LeNet-300-100's fc1 "
        f"(at least {round(la['min_false_positives_at_target'], -2):,} false positives, "
        f"{la['min_false_positives_at_target'] / a['kept']:.1f} per kept weight) and "
        f"ε ≥ {100 * lb['min_false_positive_rate_at_target']:.1f}% on LeNet-5's "
        f"({round(lb['min_false_positives_at_target'], -2):,})",
    )
    opt = la["optimal_filter_bytes_at_measured_rates"]["6"]
    t6 = next(w for w in a["weightless"] if w["cell_bits"] == 6)
    _in(text, f"the {100 * t6['false_positive_rate']:.1f}% where LeNet-300-100's fc1")
    _in(
        text,
        f"would be {round(opt):,} B, {a['deep_compression']['bytes'] / opt:.2f}× Deep Compression",
    )
    old = _json("weightless_sgd_frozen.json")["models"]["lenet-300-100"]["layers"]["fc1"]
    _in(
        text,
        f"needed `t` = {old['cell_bits']} on fc1 ({old['weightless_vs_deep_compression']:.2f}×)",
    )


CEILING_LABELS = {
    "no false positives (Deep Compression's exact positions)": "no false positives",
    "no false positives": "no false positives",
    "`t` = 4, filter over occupied rows and columns only": "occupied rows/cols, 4",
    "`t` = 4, occupied rows and columns only": "occupied rows/cols, 4",
    "pruned model polished (20 more distilled epochs), no false positives": "polished, no "
    "false positives",
    "polished, no false positives": "polished, no false positives",
    "the same, Weightless `t` = 4": "polished, Weightless 4",
    "polished, Weightless `t` = 4": "polished, Weightless 4",
}


def _ceiling_label(cell: str) -> str:
    if cell in CEILING_LABELS:
        return CEILING_LABELS[cell]
    if cell.startswith("Weightless `t` = "):
        return f"Weightless {cell.rsplit(' ', 1)[1]}"
    if cell.startswith("per-row `t`"):
        return "per-row t (bytes of Weightless 4)"
    raise AssertionError(f"unknown ceiling row {cell!r}")


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("fc1 | bytes | ÷ DC", "weightless_ceiling.json"),
        ("LeNet-5 fc1 | bytes", "weightless_ceiling_lenet-5.json"),
    ],
)
def test_weightless_ceiling_tables_are_their_json(header: str, name: str) -> None:
    _, rows = _table(header)
    d = _json(name)
    assert d["seeds"] == [0, 1, 2]
    by_label = {r["label"]: r for r in d["rows"]}
    seen = set()
    for row in rows:
        label = _ceiling_label(row[0])
        seen.add(label)
        r = by_label[label]
        for field in ("bytes", "false_positives", "val_acc", "test_acc"):
            assert r[field] == statistics.median(run[field] for run in r["runs"]), (label, field)
        assert row[1:] == [
            f"{r['bytes']:,}",
            f"{r['vs_deep_compression']:.2f}×",
            f"{r['false_positives']:,}",
            _pct(r["val_acc"]),
            _pct(r["test_acc"]),
        ], label
    assert len(seen) == len(rows)


def test_weightless_ceiling_prose_is_their_json() -> None:
    text = _text()
    a = _json("weightless_ceiling.json")
    b = _json("weightless_ceiling_lenet-5.json")
    ra = {r["label"]: r for r in a["rows"]}
    rb = {r["label"]: r for r in b["rows"]}
    _in(text, f"The floor is {_pct(a['accuracy_floor'])} (dense {_pct(a['dense_acc'])} − 0.3)")
    clean = ra["no false positives"]["test_acc"]
    polished = ra["polished, no false positives"]["test_acc"]
    _in(text, f"ends {_pts(a['dense_acc'], clean):.2f} points below dense")
    _in(text, f"(polished first, {_pts(polished, a['accuracy_floor']):.2f} above it)")
    occ, w4 = ra["occupied rows/cols, 4"], ra["Weightless 4"]
    fewer = round(100 * (1 - occ["false_positives"] / w4["false_positives"]))
    _in(text, f"{fewer}% fewer false positives for {occ['bytes'] - w4['bytes']} bytes")
    _in(text, f"is still {_pts(a['accuracy_floor'], occ['test_acc']):.1f} points short")
    _in(text, "(10 minutes) encodes only fc1")
    assert round(a["seconds"] / 60) == 10
    _in(text, "(18 minutes, `benchmarks/results/weightless_ceiling_lenet-5.json`")
    assert round(b["seconds"] / 60) == 17 or round(b["seconds"] / 60) == 18
    _in(text, f"floor {_pct(b['accuracy_floor'])}, dense {_pct(b['dense_acc'])}")
    below = sorted(
        _pts(b["accuracy_floor"], rb[k]["test_acc"])
        for k in ("no false positives", "polished, no false positives")
    )
    _in(text, f"fc1 ends {below[0]:.2f}-{below[-1]:.2f} points below the floor")
    t5 = rb["Weightless 5"]["test_acc"]
    _in(text, f"and {_pts(b['accuracy_floor'], t5):.2f} on LeNet-5 (its ceiling table below)")


def test_bloomier_peeling_prose_is_its_json() -> None:
    text = _text()
    d = _json("bloomier_peeling.json")
    rows = {r["hashes"]: r for r in d["rows"]}
    ratios = [f"{rows[k]['ratio']:g}" for k in range(2, 9)]
    _in(text, ", ".join(ratios[:-1]) + f" and {ratios[-1]} for `k` = 2 to 8")
    _in(
        text,
        "(thresholds "
        + ", ".join(f"{rows[k]['threshold']:.1f}" for k in (2,))
        + ", "
        + ", ".join(f"{rows[k]['threshold']:.3f}" for k in range(3, 9)),
    )
    three = rows[3]
    worst_size, worst = max(
        three["failures"].items(), key=lambda kv: kv[1]["failed"] / kv[1]["trials"]
    )
    _in(
        text,
        f"at most {100 * three['worst_failure_rate']:.0f}% of the time for `k` = 3 "
        f"({worst['failed']} of {worst['trials']} at {int(worst_size):,} keys)",
    )
    assert all(rows[k]["worst_failure_rate"] <= 1 / 200 for k in range(4, 9))
    two = rows[2]
    _in(
        text,
        f"{two['forest_probability']:.1f} here), {two['give_up_estimate']:.1e} for all 16".replace(
            "e-0", "e-"
        ),
    )
    assert d["trials"] == 200
    assert d["max_attempts"] == 16


# --- Gap width, coding, big checkpoint ---------------------------------------------------


def test_gap_width_prose_is_gap_width_json() -> None:
    text = _text()
    d = _json("gap_width.json")
    assert d["repeats"] == 5
    assert d["threads"] == 1
    tensors = d["tensors"]
    _in(text, f"writes {len(tensors)} pruned tensors")
    synth = [t for t in tensors if t["tensor"].startswith("synthetic")]
    lenet = [t for t in tensors if not t["tensor"].startswith("synthetic")]
    scattered = [t["auto_vs_paper"] for t in tensors if "runs" not in t["tensor"]]
    runs = [t["auto_vs_paper"] for t in tensors if "runs" in t["tensor"]]
    _in(
        text,
        f"up to {max(scattered):.2f}× smaller than the paper's width with scattered kept weights",
    )
    _in(text, f"and up to {max(runs):.2f}× with runs of them")

    def span(ts: list[dict[str, Any]], key: str, scale: float, fmt: str) -> str:
        v = [t[key] * scale for t in ts]
        return f"{min(v):{fmt}}-{max(v):{fmt}}"

    _in(
        text,
        f"{span(synth, 'auto_time_ratio', 1, '.1f')}× as long as at a fixed width on the "
        f"{synth[0]['weights'] / 1e6:.1f} M-element tensors "
        f"({span(synth, 'encode_seconds_auto', 1, '.2f')} s)",
    )
    _in(
        text,
        f"{span(lenet, 'auto_time_ratio', 1, '.1f')}× on the LeNet layers "
        f"({span(lenet, 'encode_seconds_auto', 1000, '.0f')} ms; medians of 5, one thread)",
    )
    missed = [t for t in tensors if not t["auto_is_best"]]
    _in(text, f"(of {missed[0]['best_fixed_bytes'] / 1e6:.2f} MB)")
    sizes = _json("weightless_sizes.json")["models"]["lenet-300-100"]["deep_compression"]
    _in(
        text,
        f"that is {sizes['bytes']:,} B at {sizes['gap_width']}-bit gaps against "
        f"{sizes['paper_gap_width_bytes']:,} B at 5",
    )


def test_gap_width_results_prose_is_reproduce_json() -> None:
    """The whole-pipeline files' largest layers are stored sparse at the widths quoted."""
    text = _text()
    layers = [
        layer
        for m in _json("reproduce.json")["models"].values()
        for layer in m["per_layer"]["layers"]
        if layer["encoding"] == "shared_sparse"
    ]
    widths = sorted(layer["index_bits_fixed"] for layer in layers)
    _in(text, f"now stored sparse at {widths[0]}-{widths[-1]}-bit gaps")


def test_coding_and_big_checkpoint_prose_is_coding_json() -> None:
    text = _text()
    d = _json("coding.json")
    big = [s for s in d["streams"] if s["symbols"] >= 1_000_000]
    ans = max(s["ans_over_entropy"] for s in big)
    huff = max(s["huffman_bps"] - s["entropy_bps"] for s in big)
    _in(text, f"ANS is within {100 * (ans - 1):.2f}% of the zeroth-order entropy")
    _in(text, f"Huffman within {huff:.2f} bits/symbol")
    assert d["streams_run"]["repeats"] == 5
    bc = d["big_checkpoint"]
    _in(
        text,
        f"A {bc['parameters'] / 1e6:.1f} M-parameter safetensors checkpoint compresses at a "
        f"peak RSS "
        f"of {bc['compress']['peak_over_checkpoint']:.2f}× its size and decompresses at "
        f"{bc['decompress']['peak_over_checkpoint']:.2f}×",
    )
    _in(text, f"(load average {bc['load_average'][0]:.1f} on {bc['cpus']} cores)")
    _in(
        text,
        f"took {bc['compress']['wall_seconds']:.0f} s and {bc['decompress']['wall_seconds']:.0f} s",
    )


# --- Runtime (runtime.json, runtime_2threads.json) ---------------------------------------


def test_runtime_table_is_runtime_json() -> None:
    _, rows = _table("layer | density | batch | dense ms (1 thread)")
    one = _json("runtime.json")
    two = _json("runtime_2threads.json")
    assert (one["torch_threads"], one["kernel_threads"]) == (1, 1)
    assert (two["torch_threads"], two["kernel_threads"]) == (2, 2)
    assert one["runs"] == 5
    assert one["repeats"] == 40
    assert one["cold"]
    two_by = {(r["layer"], r["batch"]): r for r in two["results"]}
    expected = [("layer", r) for r in one["results"]] + [
        ("stack", s) for s in one["stack"] if s["batch"] == 1
    ]
    assert len(rows) == len(expected)
    seen_layer = set()
    for row, (kind, r) in zip(rows, expected, strict=True):
        if kind == "stack":
            other = next(s for s in two["stack"] if s["batch"] == r["batch"])
            assert row[:3] == ["all three", "", str(r["batch"])]
        else:
            other = two_by[(r["layer"], r["batch"])]
            if r["layer"] in seen_layer:
                assert row[:3] == [r["layer"], "", str(r["batch"])]
            else:
                out, inp = r["shape"]
                assert row[:3] == [
                    f"{r['layer']} {inp}→{out}",
                    f"{100 * r['density']:.0f}%",
                    str(r["batch"]),
                ]
                seen_layer.add(r["layer"])
            assert r["speedup"] == statistics.median(x["speedup"] for x in r["runs"])
        speed, speed2 = f"{r['speedup']:.2f}×", f"{other['speedup']:.2f}×"
        if r["batch"] == 1 and r["speedup"] > 4:
            speed, speed2 = f"**{speed}**", f"**{speed2}**"
        assert row[3:] == [
            f"{r['dense_ms']:.2f}",
            f"{r['deepzip_ms']:.2f}",
            speed,
            speed2,
            f"1/{r['memory_ratio']:.1f}",
        ], row


def test_runtime_prose_is_runtime_json() -> None:
    text = _text()
    one = _json("runtime.json")
    two = _json("runtime_2threads.json")

    def get(d: Any, layer: str, batch: int) -> dict[str, Any]:
        return next(r for r in d["results"] if r["layer"] == layer and r["batch"] == batch)

    big1 = [get(one, x, 1)["speedup"] for x in ("fc6", "fc7")]
    big2 = [get(two, x, 1)["speedup"] for x in ("fc6", "fc7")]
    s1 = next(s for s in one["stack"] if s["batch"] == 1)["speedup"]
    s2 = next(s for s in two["stack"] if s["batch"] == 1)["speedup"]
    _in(
        text,
        f"it is {min(big1):.1f}-{max(big1):.1f}× faster on fc6 and fc7, and the three "
        f"layers together {s1:.1f}×",
    )
    _in(text, f"with both cores on each side, {min(big2):.1f}-{max(big2):.1f}× and {s2:.1f}×")
    fc8 = get(one, "fc8", 1)
    _in(
        text,
        f"fc8 gains less, {fc8['speedup']:.1f}× ({get(two, 'fc8', 1)['speedup']:.1f}× on "
        f"two cores)",
    )
    kept = fc8["shape"][0] * fc8["shape"][1] * fc8["density"]
    _in(text, f"a kept weight costs a gather and {fc8['compact_bytes'] / kept:.1f} bytes")
    b64 = [get(one, x, 64)["speedup"] for x in ("fc6", "fc7")]
    assert f"{min(b64):.1f}" == "2.6"
    assert round(max(b64)) == 3
    _in(text, "about 2.6-3× on fc6 and fc7 at batch 64")
    _in(text, f"and {get(one, 'fc8', 64)['speedup']:.1f}× on fc8")
    conv = [s for s in one["sweep"] if s["kind"] == "conv2d"]
    assert conv
    _in(
        text,
        f"were at most {max(s['speedup'] for s in conv if s['batch'] == 1):.1f}× faster at batch 1",
    )
    assert all(s["speedup"] < 1 for s in conv if s["batch"] >= 8)


def test_incremental_tiny_resnet_rerun_prose_is_its_json() -> None:
    text = _text()
    old = _json("incremental_first_run.json")["models"]["tiny-resnet"]
    rerun = _json("incremental_tiny_resnet_rerun.json")
    new = rerun["models"]["tiny-resnet"]
    assert list(rerun["models"]) == ["tiny-resnet"]
    assert rerun["threads"] == 2
    assert rerun["seeds"] == 3
    assert rerun["budget"] == _json("incremental_first_run.json")["budget"]
    differ = sorted(
        (key, run["seed"])
        for key, runs in new["runs"].items()
        for run, was in zip(runs, old["runs"][key], strict=True)
        if any(run[k] != was[k] for k in ("acc", "val_acc", "lr"))
    )
    total = sum(len(runs) for runs in new["runs"].values())
    _in(
        text,
        f"On tiny-resnet {total - len(differ)} of the {total} runs repeated the first run's test "
        "and validation",
    )
    ternary = [(k, s) for k in ("mlq_ternary", "slq_ternary") for s in (0, 1, 2)]
    assert differ == sorted([*ternary, ("mlq_5", 0), ("slq_5", 0)])
    for key in ("slq_5", "mlq_5"):
        assert new["runs"][key][0]["lr"] != old["runs"][key][0]["lr"]  # "the other rate"
    changed = {k for k in new["acc"] if new["acc"][k] != old["acc"][k]}
    assert changed == {"slq_ternary", "mlq_ternary", "mlq_5"}
    _in(
        text,
        f"SLQ ternary {_pct(new['acc']['slq_ternary'])} (was {_pct(old['acc']['slq_ternary'])}), "
        f"MLQ ternary {_pct(new['acc']['mlq_ternary'])} (was {_pct(old['acc']['mlq_ternary'])}), "
        f"MLQ at 5 bits {_pct(new['acc']['mlq_5'])} (was {_pct(old['acc']['mlq_5'])})",
    )
    first = _json("incremental_first_run.json")
    assert rerun["targets"]["tiny-resnet"] == first["targets"]["tiny-resnet"]
    _in(text, f"Its float32 size is {new['float32_bytes']:,} bytes")
    _in(text, f"left out of the first run's {old['float32_bytes']:,}")


def test_incremental_lenet5_rerun_prose_is_its_json() -> None:
    text = _text()
    main = _json("incremental_first_run.json")
    old = main["models"]["lenet-5"]
    rerun = _json("incremental_lenet5_rerun.json")
    new = rerun["models"]["lenet-5"]
    assert list(rerun["models"]) == ["lenet-5"]
    assert rerun["threads"] == 2
    assert rerun["seeds"] == 3
    assert rerun["budget"] == main["budget"]
    differ = [
        (key, run["seed"])
        for key, runs in new["runs"].items()
        for run, was in zip(runs, old["runs"][key], strict=True)
        if any(run[k] != was[k] for k in ("acc", "val_acc", "lr"))
    ]
    total = sum(len(runs) for runs in new["runs"].values())
    _in(text, f"On LeNet-5 {total - len(differ)} of its {total} runs repeated their accuracies")
    assert differ == [("mlq_ternary", 2)]
    changed = {k for k in new["acc"] if new["acc"][k] != old["acc"][k]}
    assert changed == {"mlq_ternary"}
    drop = _pts(new["dense_acc"], new["acc"]["mlq_ternary"])
    _in(
        text,
        f"moves from {_pct(old['acc']['mlq_ternary'])} to {_pct(new['acc']['mlq_ternary'])} "
        f"({drop:.2f} point below dense; target 1.5)",
    )
    shrink = old["bytes"]["inq_ternary"] - new["bytes"]["inq_ternary"]
    _in(text, f"INQ ternary's median file is {shrink} bytes smaller")
    assert rerun["targets"]["lenet-5"] == main["targets"]["lenet-5"]
    _in(text, "Every verdict and target of the first run stays.")
    assert all(rerun["targets"]["lenet-5"].values())
