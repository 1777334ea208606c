"""Session-28 config fixes."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from deepzip.config import Recipe, ScheduleConfig
from deepzip.errors import ConfigError
from deepzip.pipeline import check_recipe


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


def _shared_twice() -> nn.Module:
    lin = nn.Linear(8, 8)
    return nn.Sequential(lin, nn.ReLU(), lin)


@pytest.mark.parametrize(
    "recipe",
    [
        # the recipe-wide overrides, and a quantize stage's and a Weightless stage's own
        {
            "overrides": [{"pattern": "2", "bits": 3}],
            "stages": [{"type": "quantize"}, {"type": "encode"}],
        },
        {
            "stages": [
                {"type": "quantize", "overrides": [{"pattern": "2", "bits": 3}]},
                {"type": "encode"},
            ]
        },
        {
            "stages": [
                {
                    "type": "weightless",
                    "cell_bits": 6,
                    "overrides": [{"pattern": "2", "cell_bits": 7}],
                },
                {"type": "encode"},
            ]
        },
    ],
)
def test_recipe_globs_may_name_a_module_by_its_second_name(recipe: dict[str, Any]) -> None:
    # nn.Sequential(lin, ReLU, lin): "2" is a real name of the layer "0"; the library's verbs
    # accept it, and the recipe check refused it ("matches no quantizable layer")
    check_recipe(_shared_twice(), Recipe.from_dict(recipe))


def test_recipe_glob_matching_nothing_lists_every_name() -> None:
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "fc9", "bits": 3}],
            "stages": [{"type": "quantize"}, {"type": "encode"}],
        }
    )
    with pytest.raises(
        ConfigError, match=r"matches no compressible layer \(layers: 0.weight, 2.weight\)"
    ):
        check_recipe(_shared_twice(), recipe)


def test_recipe_glob_matching_nothing_caps_the_list_of_names() -> None:
    model = nn.Sequential(*(nn.Linear(4, 4) for _ in range(30)))
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "fc9", "bits": 3}],
            "stages": [{"type": "quantize"}, {"type": "encode"}],
        }
    )
    with pytest.raises(ConfigError, match=r"23\.weight, \.\.\. \(6 more\)\)$"):
        check_recipe(model, recipe)
