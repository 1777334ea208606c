"""deepzip: Deep Compression for any PyTorch model.

Importing the package has no side effects: nothing is printed, downloaded or configured.
"""

from __future__ import annotations

from deepzip import errors, runtime
from deepzip._version import __version__
from deepzip.config import (
    BitsOverride,
    CellBitsOverride,
    LayerOverride,
    LayerRule,
    PruneConfig,
    PruneJob,
    QuantizeConfig,
    Recipe,
    RetrainConfig,
    ScheduleConfig,
    TrainConfig,
    WeightlessConfig,
    load_prune_job,
    load_recipe,
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
from deepzip.format import (
    InspectReport,
    SaveReport,
    inspect,
    load_checkpoint,
    load_model,
    load_state_dict,
    read_checkpoint,
    save,
    save_checkpoint,
)
from deepzip.pipeline import (
    RecipeChangedError,
    RunLockedError,
    RunResult,
    RunWriteError,
    TrainRequest,
    run_recipe,
)
from deepzip.posttrain import compress_checkpoint
from deepzip.prune import (
    PruneReport,
    iterative_prune,
    prune_,
    pruning_report,
    sensitivity_analysis,
)
from deepzip.quantize import QuantizeReport, export_shared, quantize_, strip_
from deepzip.targets import select_targets
from deepzip.weightless import WeightlessReport, weightless_

__all__ = [
    "BitsOverride",
    "CellBitsOverride",
    "CheckpointError",
    "ConfigError",
    "CorruptFileError",
    "DatasetNotFoundError",
    "DeepZipError",
    "InspectReport",
    "InvalidTensorError",
    "LayerOverride",
    "LayerRule",
    "PruneConfig",
    "PruneJob",
    "PruneReport",
    "QuantizeConfig",
    "QuantizeReport",
    "Recipe",
    "RecipeChangedError",
    "RetrainConfig",
    "RunLockedError",
    "RunResult",
    "RunWriteError",
    "SaveReport",
    "ScheduleConfig",
    "TrainConfig",
    "TrainRequest",
    "UnsupportedVersionError",
    "WeightlessConfig",
    "WeightlessReport",
    "__version__",
    "compress_checkpoint",
    "errors",
    "export_shared",
    "inspect",
    "iterative_prune",
    "load_checkpoint",
    "load_model",
    "load_prune_job",
    "load_recipe",
    "load_state_dict",
    "prune_",
    "pruning_report",
    "quantize_",
    "read_checkpoint",
    "run_recipe",
    "runtime",
    "save",
    "save_checkpoint",
    "select_targets",
    "sensitivity_analysis",
    "strip_",
    "weightless_",
]
