"""File I/O: training checkpoints (safetensors with masks) and the ``.dzip`` container.

The ``.dzip`` format is specified in ``docs/format.md``; :func:`save`, :func:`load_state_dict`,
:func:`load_model` and :func:`inspect` are the verbs, :class:`DzipWriter` and
:class:`DzipReader` the streaming writer and the hostile-input-safe reader, and
:func:`read_compressed` the compressed-form view used by the runtime.
"""

from __future__ import annotations

from deepzip.format.api import inspect, load_model, load_state_dict, save, to_safetensors
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
from deepzip.format.dzip_reader import CompressedFile, DzipReader, read_compressed
from deepzip.format.dzip_report import (
    InspectReport,
    PartRecord,
    SaveReport,
    Section,
    TensorRecord,
)
from deepzip.format.dzip_spec import Encoding
from deepzip.format.dzip_writer import DzipWriter

__all__ = [
    "CHECKPOINT_VERSION",
    "MASK_PREFIX",
    "Checkpoint",
    "CompressedFile",
    "DzipReader",
    "DzipWriter",
    "Encoding",
    "InspectReport",
    "PartRecord",
    "SaveReport",
    "Section",
    "TensorRecord",
    "apply_checkpoint",
    "inspect",
    "load_checkpoint",
    "load_model",
    "load_state_dict",
    "plain_state_dict",
    "read_checkpoint",
    "read_compressed",
    "save",
    "save_checkpoint",
    "to_safetensors",
]
