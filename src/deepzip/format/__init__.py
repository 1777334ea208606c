"""File I/O: training checkpoints (safetensors with masks)."""

from __future__ import annotations

from deepzip.format.checkpoint import (
    CHECKPOINT_VERSION,
    MASK_PREFIX,
    Checkpoint,
    apply_checkpoint,
    load_checkpoint,
    plain_state_dict,
    read_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINT_VERSION",
    "MASK_PREFIX",
    "Checkpoint",
    "apply_checkpoint",
    "load_checkpoint",
    "plain_state_dict",
    "read_checkpoint",
    "save_checkpoint",
]
