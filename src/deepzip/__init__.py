"""deepzip: Deep Compression for any PyTorch model.

Importing the package has no side effects: nothing is printed, downloaded or configured.
"""

from __future__ import annotations

from deepzip import errors
from deepzip.config import (
    LayerOverride,
    PruneConfig,
    PruneJob,
    RetrainConfig,
    ScheduleConfig,
    load_prune_job,
)
from deepzip.errors import (
    CheckpointError,
    ConfigError,
    CorruptFileError,
    DatasetNotFoundError,
    DeepZipError,
    InvalidTensorError,
    UnsupportedVersionError,
)
from deepzip.format import load_checkpoint, read_checkpoint, save_checkpoint
from deepzip.prune import (
    PruneReport,
    iterative_prune,
    prune_,
    pruning_report,
    sensitivity_analysis,
    strip_,
)
from deepzip.targets import select_targets

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "CorruptFileError",
    "DatasetNotFoundError",
    "DeepZipError",
    "InvalidTensorError",
    "LayerOverride",
    "PruneConfig",
    "PruneJob",
    "PruneReport",
    "RetrainConfig",
    "ScheduleConfig",
    "UnsupportedVersionError",
    "__version__",
    "errors",
    "iterative_prune",
    "load_checkpoint",
    "load_prune_job",
    "prune_",
    "pruning_report",
    "read_checkpoint",
    "save_checkpoint",
    "select_targets",
    "sensitivity_analysis",
    "strip_",
]
