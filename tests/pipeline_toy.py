"""A tiny, learnable, seeded problem for pipeline tests; run as a script it is killed mid-run.

``python pipeline_toy.py RUN_DIR KILL_AFTER`` runs :func:`toy_recipe` into ``RUN_DIR`` and
SIGKILLs its own process right after stage ``KILL_AFTER`` (1-based) is recorded, as a power
loss would.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
from torch import nn

from deepzip.config import Recipe
from deepzip.datasets import DataSplits, ImageDataset


def toy_data() -> DataSplits:
    """Four classes of 4×5 "images" whose mean brightness depends on the class."""
    g = torch.Generator().manual_seed(0)

    def split(n: int, name: str) -> ImageDataset:
        y = torch.randint(0, 4, (n,), generator=g)
        x = torch.randn(n, 1, 4, 5, generator=g) * 0.7
        x[torch.arange(n), 0, y, :] += 1.5  # class c lights up row c
        return ImageDataset(x, y, "toy", name)

    return DataSplits(split(384, "train"), split(128, "val"), split(128, "test"))


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(20, 48), nn.ReLU(), nn.Dropout(0.3), nn.Linear(48, 4)
    )


def toy_recipe_dict() -> dict[str, Any]:
    return {
        "seed": 5,
        "stages": [
            {"type": "train", "epochs": 2, "lr": 0.05, "batch_size": 32},
            {
                "type": "prune",
                "sparsity": 0.8,
                "overrides": [{"pattern": "4", "sparsity": 0.5}],
                "schedule": {"steps": [0.5, 1.0]},
                "retrain": {"epochs": 1, "final_epochs": 1, "batch_size": 32, "distill": 0.5},
            },
            {"type": "quantize", "bits": 3, "grad": "mean"},
            {"type": "finetune", "epochs": 1, "batch_size": 32},
            {"type": "encode", "coder": "huffman"},
        ],
    }


def toy_recipe() -> Recipe:
    return Recipe.from_dict(toy_recipe_dict())


def main(run_dir: str, kill_after: int) -> None:
    from deepzip.pipeline import PipelineEvent, run_recipe

    torch.set_num_threads(1)

    def on_event(event: PipelineEvent) -> None:
        if event.kind == "stage_end" and event.index == kill_after - 1:
            os.kill(os.getpid(), signal.SIGKILL)

    run_recipe(toy_model(), toy_recipe(), run_dir, data=toy_data(), device="cpu", on_event=on_event)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
