"""Running compression stages on a model and a data set, and whole recipes with resume.

This package joins the layers below it: a zoo or user model, a data set split into
train/validation/test, the training harness, the pruning and quantization stages and the
``.dzip`` container. Validation accuracy (never the test set) is what steps are judged by;
test accuracy is reported.

:func:`run_recipe` runs a :class:`~deepzip.config.Recipe` stage by stage with a checkpoint
after each one, so an interrupted run resumes where it stopped; :func:`register_stage_runner`
adds stage types.

The package's modules: ``training`` (training steps on a data set), ``registry`` (what a stage
runner gets and returns, the runners by stage type), ``runners`` (the built-in ones, registered
on import), ``state`` (a run directory's files and records) and ``run`` (:func:`run_recipe`).
"""

from __future__ import annotations

from deepzip.pipeline import runners as _builtin_runners  # noqa: F401  (registers them)
from deepzip.pipeline.registry import (
    Batches,
    EvalFn,
    PipelineEvent,
    StageCheck,
    StageContext,
    StageResult,
    StageRunner,
    TrainFn,
    TrainRequest,
    check_recipe,
    recipe_prune_job,
    register_stage_runner,
    stage_config,
    stage_seed,
    validation_stage,
)
from deepzip.pipeline.run import quick_recipe, run_recipe
from deepzip.pipeline.state import (
    DZIP_FILE,
    INITIAL_CHECKPOINT,
    STATE_FILE,
    RecipeChangedError,
    RunLockedError,
    RunResult,
    RunWriteError,
    StageRecord,
    accuracy_reference,
    data_fingerprint,
    independent_copy,
    model_fingerprint,
    read_run,
    recipe_hash,
)
from deepzip.pipeline.training import (
    Loaders,
    PruneOutcome,
    QuantizeOutcome,
    accuracy_fn,
    data_trainer,
    make_loaders,
    prune_with_retraining,
    quantize_with_finetuning,
    train_dense,
)

__all__ = [
    "DZIP_FILE",
    "INITIAL_CHECKPOINT",
    "STATE_FILE",
    "Batches",
    "EvalFn",
    "Loaders",
    "PipelineEvent",
    "PruneOutcome",
    "QuantizeOutcome",
    "RecipeChangedError",
    "RunLockedError",
    "RunResult",
    "RunWriteError",
    "StageCheck",
    "StageContext",
    "StageRecord",
    "StageResult",
    "StageRunner",
    "TrainFn",
    "TrainRequest",
    "accuracy_fn",
    "accuracy_reference",
    "check_recipe",
    "data_fingerprint",
    "data_trainer",
    "independent_copy",
    "make_loaders",
    "model_fingerprint",
    "prune_with_retraining",
    "quantize_with_finetuning",
    "quick_recipe",
    "read_run",
    "recipe_hash",
    "recipe_prune_job",
    "register_stage_runner",
    "run_recipe",
    "stage_config",
    "stage_seed",
    "train_dense",
    "validation_stage",
]
