"""Review 30: QuantizeConfig refuses settings its method never reads (they were ignored)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from torch import nn

import deepzip as dz
from deepzip.cli import main
from deepzip.config import QuantizeConfig
from deepzip.errors import ConfigError


@pytest.mark.parametrize("method", ["uniform", "ecsq"])
@pytest.mark.parametrize("init", ["density", "forgy", "kmeans++"])
def test_a_kmeans_init_is_refused_with_another_method(method: str, init: str) -> None:
    expected = f"quantize.init = '{init}' is a k-means initialisation: it needs method 'kmeans', "
    with pytest.raises(ConfigError, match=re.escape(expected + f"got method '{method}'")):
        QuantizeConfig(bits=3, method=method, init=init)  # type: ignore[arg-type]


def test_max_iter_is_refused_with_the_uniform_method() -> None:
    expected = "quantize.max_iter = 5 is not used with method 'uniform'"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        QuantizeConfig(bits=3, method="uniform", max_iter=5)


def test_settings_a_method_reads_are_still_accepted() -> None:
    QuantizeConfig(bits=3, method="kmeans", init="kmeans++", max_iter=5, seed=7)
    QuantizeConfig(bits=3, method="ecsq", ecsq_lambda=0.1, max_iter=5, seed=7)
    QuantizeConfig(bits=3, method="uniform", seed=7)  # the CLI's --seed also seeds training
    again = QuantizeConfig.from_dict({"bits": 3, "method": "ecsq", "max_iter": 7})
    assert again.max_iter == 7


def test_a_recipe_table_with_an_unused_init_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"quantize\.init = 'forgy'"):
        QuantizeConfig.from_dict({"bits": 3, "method": "uniform", "init": "forgy"})


def test_the_cli_refuses_an_unused_init_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    ckpt = tmp_path / "m.safetensors"
    dz.save_checkpoint(model, ckpt)
    out = tmp_path / "q.safetensors"
    code = main(["quantize", str(ckpt), "-o", str(out), "--method", "uniform", "--init", "forgy"])
    assert code != 0
    assert "quantize.init = 'forgy'" in capsys.readouterr().err
    assert not out.exists()
