"""Session-28 config fixes."""

from __future__ import annotations

import pytest

from deepzip.config import ScheduleConfig
from deepzip.errors import ConfigError


def test_schedule_key_the_kind_does_not_use_is_refused_in_python_too() -> None:
    # to_dict keeps only the keys the kind uses, so a value set here would vanish from the
    # recipe a run records; from_dict already refused it, the constructor accepted it
    with pytest.raises(ConfigError, match=r'schedule.steps is only used with kind = "steps"'):
        ScheduleConfig(kind="agp", steps=(0.3, 1.0))
    with pytest.raises(ConfigError, match=r'schedule.n_steps is only used with kind = "agp"'):
        ScheduleConfig(kind="oneshot", n_steps=3)
    # the defaults (which earlier versions wrote for every kind) are still accepted
    assert ScheduleConfig(kind="agp", steps=(0.5, 0.75, 0.875, 1.0)).to_dict() == {
        "kind": "agp",
        "n_steps": 5,
    }
    assert ScheduleConfig(kind="steps", n_steps=5).n_steps == 5
