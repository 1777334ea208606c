"""deepzip: Deep Compression for any PyTorch model.

Importing the package has no side effects: nothing is printed, downloaded or configured.
"""

from __future__ import annotations

from deepzip import errors
from deepzip.config import (
    BitsOverride,
    LayerOverride,
    PruneConfig,
    PruneJob,
    QuantizeConfig,
    RetrainConfig,
    ScheduleConfig,
    TrainConfig,
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
)
from deepzip.quantize import QuantizeReport, export_shared, quantize_, strip_
from deepzip.targets import select_targets

__version__ = "0.1.0"

__all__ = [
    "BitsOverride",
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
    "QuantizeConfig",
    "QuantizeReport",
    "RetrainConfig",
    "ScheduleConfig",
    "TrainConfig",
    "UnsupportedVersionError",
    "__version__",
    "errors",
    "export_shared",
    "iterative_prune",
    "load_checkpoint",
    "load_prune_job",
    "prune_",
    "pruning_report",
    "quantize_",
    "read_checkpoint",
    "save_checkpoint",
    "select_targets",
    "sensitivity_analysis",
    "strip_",
]
