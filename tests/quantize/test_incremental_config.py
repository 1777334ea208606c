from __future__ import annotations

from typing import Any

import pytest

from deepzip.config import BitsOverride, INQConfig, MLQConfig, SLQConfig
from deepzip.errors import ConfigError


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SLQConfig, {"bits": 9}, "slq.bits"),
        (SLQConfig, {"bits": 0}, "slq.bits"),
        (SLQConfig, {"bits": "binary"}, "'ternary'"),
        (SLQConfig, {"bits": True}, "slq.bits"),
        (SLQConfig, {"steps": ()}, "slq.steps"),
        (SLQConfig, {"steps": (0.5, 0.9)}, "end at 1.0"),
        (SLQConfig, {"steps": (0.75, 0.5, 1.0)}, "increase strictly"),
        (SLQConfig, {"steps": (0.0, 1.0)}, r"\(0, 1\]"),
        (SLQConfig, {"steps": [0.5, 1.0]}, "slq.steps"),
        (SLQConfig, {"rank": "max"}, "slq.rank"),
        (SLQConfig, {"freeze_order": "random"}, "slq.freeze_order"),
        (MLQConfig, {"freeze_order": 1}, "mlq.freeze_order"),
        (SLQConfig, {"init": "random"}, "slq.init"),
        (SLQConfig, {"max_iter": 0}, "slq.max_iter"),
        (SLQConfig, {"seed": -1}, "slq.seed"),
        (SLQConfig, {"train_codebook": 1}, "slq.train_codebook"),
        (SLQConfig, {"grad": "max"}, "slq.grad"),
        (SLQConfig, {"include": ("",)}, "slq.include"),
        (SLQConfig, {"overrides": ("fc1",)}, "slq.overrides"),
        (MLQConfig, {"groups": 0}, "mlq.groups"),
        (MLQConfig, {"order": "random"}, "mlq.order"),
        (MLQConfig, {"bits": 12}, "mlq.bits"),
        (INQConfig, {"bits": 1}, "inq.bits"),
        (INQConfig, {"bits": "ternary"}, "inq.bits"),
        (INQConfig, {"steps": (0.5,)}, "inq.steps"),
        (INQConfig, {"overrides": (BitsOverride("fc*", bits=1),)}, "from 2 to 8"),
    ],
)
def test_bad_values_name_the_key(cls: type, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "config",
    [
        SLQConfig(
            bits="ternary",
            steps=(0.25, 1.0),
            rank="mse",
            freeze_order="low_loss",
            overrides=(BitsOverride("a", 3),),
        ),
        MLQConfig(bits=3, groups=4, order="size", train_codebook=False, exclude=("fc3",)),
        INQConfig(bits=4, steps=(0.5, 0.75, 1.0), overrides=(BitsOverride("x", skip=True),)),
    ],
)
def test_toml_round_trip(config: SLQConfig | MLQConfig | INQConfig) -> None:
    data = config.to_dict()
    assert isinstance(data["steps"], list)
    assert type(config).from_dict(data) == config


def test_from_dict_rejects_unknown_keys_and_bad_tables() -> None:
    with pytest.raises(ConfigError, match="unknown key 'bitz'"):
        SLQConfig.from_dict({"bitz": 3})
    with pytest.raises(ConfigError, match=r"mlq\.steps must be a list"):
        MLQConfig.from_dict({"steps": 0.5})
    with pytest.raises(ConfigError, match=r"inq\.overrides\[0\]"):
        INQConfig.from_dict({"overrides": [{"pattern": "fc1", "bitz": 3}]})


def test_defaults() -> None:
    assert SLQConfig().bits == 5
    assert MLQConfig().bits == "ternary"
    assert INQConfig().steps == (0.5, 0.75, 0.875, 1.0)
