"""Figures the README quotes are those of the committed benchmark results."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _readme() -> str:
    return " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())


def _json(name: str) -> Any:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def test_readme_weightless_file_shrink_is_the_committed_files() -> None:
    # the README said 32,873 -> 23,721 bytes, a file of an earlier run (weightless.json: 24,498)
    m = re.search(r"LeNet-300-100 file shrinks from ([\d,]+) to ([\d,]+) bytes", _readme())
    assert m is not None
    before = _json("weightless_sgd_frozen.json")["models"]["lenet-300-100"]["dzip_bytes"]
    after = _json("weightless.json")["models"]["lenet-300-100"]["dzip_bytes"]
    assert (m.group(1), m.group(2)) == (f"{before:,}", f"{after:,}")


def test_readme_weightless_validation_gain_at_t4() -> None:
    pattern = r"reached ([\d.]+)% validation at `t` = 4; the present one gains ([\d.]+) point"
    m = re.search(pattern, _readme())
    assert m is not None
    old = _json("weightless_sgd_frozen.json")["models"]["lenet-300-100"]["fc1_sweep"]
    new = _json("weightless.json")["models"]["lenet-300-100"]["fc1_sweep"]
    (old4,) = [r["val_acc"] for r in old if r["cell_bits"] == 4]
    (new4,) = [r["val_acc"] for r in new if r["cell_bits"] == 4]
    assert m.group(1) == f"{100 * old4:.2f}"
    assert m.group(2) == f"{100 * (new4 - old4):.1f}"


def test_readme_coding_speeds_are_the_committed_big_streams() -> None:
    text = _readme()
    big = [s for s in _json("coding.json")["streams"] if s["symbols"] >= 1_000_000]
    assert big

    def span(key: str, fmt: str) -> str:
        values = [s[key] for s in big]
        return f"{min(values):{fmt}}-{max(values):{fmt}}"

    assert f"Huffman decodes {span('huffman_decode_msym_s', '.0f')} M symbols/s" in text
    assert f"{span('decode_speedup_vs_dahuffman', '.0f')}× as fast as the pure-Python" in text
    constriction = span("decode_speedup_vs_constriction_huffman", ".0f")
    assert f"{constriction}× as fast as constriction" in text
    # no figures from runs whose results were not committed
    assert "two more runs of the script" not in text


def test_readme_gap_width_names_the_tensor_where_auto_is_not_best() -> None:
    tensors = _json("gap_width.json")["tensors"]
    missed = [t for t in tensors if not t["auto_is_best"]]
    assert len(missed) == 1
    assert missed[0] is not tensors[-1]
    text = _readme()
    n_best = len(tensors) - len(missed)
    over = missed[0]["auto_bytes"] - missed[0]["best_fixed_bytes"]
    assert f"best fixed width on {n_best} and {over} bytes over it" in text
    assert "on the last;" not in text


def test_readme_export_shared_comment_names_its_value_type() -> None:
    from torch import nn

    import deepzip as dz
    from deepzip.quantize.shared import SharedTensor

    model = nn.Sequential(nn.Linear(8, 8))
    dz.quantize_(model, dz.QuantizeConfig(bits=2))
    (value,) = dz.export_shared(model).values()
    assert isinstance(value, SharedTensor)  # not a (codebook, indices, mask) tuple
    (line,) = [ln for ln in _readme().split("```") if "dz.export_shared(model)" in ln]
    assert "SharedTensor(codebook, indices, mask)" in line
