"""Running a whole recipe, stage by stage, with a checkpoint after each one and resume.

:func:`run_recipe` runs a Recipe's stages in order on any model. After every stage the model is
written to a checkpoint in the run directory and read back (so an uninterrupted run continues
from exactly what a resumed run would load), its accuracy and real .dzip size are measured, and
state.json records the stage. Re-running the same call resumes after the last recorded stage; a
run directory made by a different recipe, model or data is refused with RecipeChangedError
unless restart=True.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepzip._atomic import atomic_write_text, make_dirs, os_error_reason, remove_dirs
from deepzip._provenance import deepzip_identity
from deepzip.config import (
    EncodeStage,
    FinetuneStage,
    INQStage,
    MLQStage,
    PruneStage,
    Recipe,
    RetrainConfig,
    RetrainStage,
    ScheduleConfig,
    SLQStage,
    TrainStage,
    WeightlessStage,
)
from deepzip.datasets import DataSplits
from deepzip.errors import ConfigError, DeepZipError
from deepzip.format.api import IndexBits
from deepzip.format.api import save as save_dzip
from deepzip.format.dzip_report import SaveReport
from deepzip.pipeline.registry import (
    Batches,
    EvalFn,
    PipelineEvent,
    StageContext,
    TrainFn,
    check_recipe,
    no_validation_error,
    registered_runner,
    stage_config,
    stage_seed,
    validation_stage,
)
from deepzip.pipeline.state import (
    DZIP_FILE,
    INITIAL_CHECKPOINT,
    STATE_FILE,
    STATE_FORMAT,
    STATE_VERSION,
    RecipeChangedError,
    RunResult,
    RunWriteError,
    StageRecord,
    clear_run,
    data_fingerprint,
    describe_change,
    file_sha256,
    independent_copy,
    load_stage_checkpoint,
    lock_run,
    model_fingerprint,
    read_state,
    recipe_hash,
    remove_stale_temps,
    save_stage_checkpoint,
)
from deepzip.pipeline.training import accuracy_fn, data_trainer, make_loaders
from deepzip.train import (
    Callback,
    resolve_device,
    seed_everything,
)

__all__ = [
    "quick_recipe",
    "run_recipe",
]


def _encode_options(recipe: Recipe) -> EncodeStage:
    return next(
        (s.config for s in recipe.stages if isinstance(s.config, EncodeStage)), EncodeStage()
    )


def run_recipe(
    model: nn.Module,
    recipe: Recipe,
    run_dir: str | os.PathLike[str],
    *,
    data: DataSplits | None = None,
    train_fn: TrainFn | None = None,
    eval_fn: EvalFn | None = None,
    test_fn: EvalFn | None = None,
    batches: Callable[[], Batches] | None = None,
    data_id: str | None = None,
    model_name: str | None = None,
    restart: bool = False,
    device: str | torch.device | None = None,
    callbacks: Sequence[Callback] = (),
    on_event: Callable[[PipelineEvent], None] | None = None,
) -> RunResult:
    """Run a recipe's stages on ``model``, checkpointing after each one; resume if interrupted.

    Give either ``data`` (train, validation and test splits: training, validation accuracy,
    test accuracy and Fisher batches are built from it) or your own callables. Stage ``i`` runs
    after ``seed_everything(stage_seed(recipe.seed, i))``. After each stage the model is
    written to ``run_dir/stage-NN-<type>.safetensors`` and read back, evaluated, and encoded
    to measure its real ``.dzip`` size; ``run_dir/state.json`` then records the stage. The
    encode stage writes ``run_dir/model.dzip`` and checks the accuracy of the model decoded
    from it. Calling again with the same arguments resumes after the last recorded stage (an
    interrupted stage reruns from its start) and gives a byte-identical ``.dzip``; when every
    stage is done the model is loaded from the last checkpoint and nothing reruns (but the
    last stage, when ``model.dzip`` is missing or not the file the run wrote). ``state.json``
    records the SHA-256 of every checkpoint and of the ``.dzip``; a checkpoint that changed
    since is refused. One run at a time holds the directory (``run_dir/.deepzip-run.lock``);
    temporary files left by a killed run are removed. A new run that fails before it records
    its starting point leaves no file behind.

    Args:
        model: any ``nn.Module`` (modified in place). On resume, pass the same starting model.
        recipe: the stages.
        run_dir: the run directory (created if needed).
        data: a data set's splits (see :func:`deepzip.datasets.load_dataset`).
        train_fn: ``train_fn(model, request)`` (default: built from ``data``).
        eval_fn: validation accuracy, used to judge steps (default: from ``data``).
        test_fn: test accuracy, reported only (default: from ``data``).
        batches: returns ``(inputs, targets)`` batches for Fisher importance (default: from
            ``data``).
        data_id: identity of your data (recorded; a resume with another id is refused).
        model_name: recorded in the checkpoints and the ``.dzip`` metadata.
        restart: discard a previous run in ``run_dir`` instead of resuming it.
        device: where to train and evaluate (``None``: where the model is).
        callbacks: training callbacks (progress display), for training from ``data``.
        on_event: receives :class:`PipelineEvent` progress.

    Returns:
        The run's records and the ``.dzip`` path.

    Raises:
        ConfigError: a glob matching no layer, a stage that needs ``train_fn``/``eval_fn``
            or ``batches`` that were not given (checked before anything runs).
        RecipeChangedError: ``run_dir`` holds a run of another recipe, model or data set, or
            one started by another deepzip (version or code).
        RunLockedError: another process is running in ``run_dir``.
        CheckpointError: a checkpoint to resume from is missing, unreadable or changed.
        RunWriteError: a stage's ``.dzip`` size could not be measured in ``run_dir`` (a full
            disk): names the run directory, the stage and the cause; an ``OSError`` too. The
            stage is not recorded: running again, with room, resumes at it.

    A deepzip error raised while a stage runs (a non-finite training loss, a layer that
    cannot be quantized...) propagates with its type, its message prefixed with the stage's
    label (``"stage 2 (prune): ..."``).
    """
    out = Path(run_dir)
    emit = on_event if on_event is not None else (lambda event: None)
    dev = resolve_device(device) if device is not None else _model_device(model)
    if data is not None:
        loaders = make_loaders(data, 1000)
        train_fn = train_fn or data_trainer(data, device=dev, callbacks=callbacks)
        if eval_fn is None and loaders.val is not None:
            eval_fn = accuracy_fn(loaders.val, dev)
        test_fn = test_fn or accuracy_fn(loaders.test, dev)
        if batches is None:

            def _data_batches() -> Batches:
                return make_loaders(data, 128, seed=recipe.seed).train

            batches = _data_batches
        data_id = data_id or data_fingerprint(data)
    model.to(dev)
    check_recipe(model, recipe)
    for i, stage in enumerate(recipe.stages):
        config = stage_config(model, recipe, i)
        if train_fn is None and registered_runner(stage.kind).needs_training(config):
            raise ConfigError(f"{stage.label(i)} trains the model: pass train_fn= or data=")
        reason = registered_runner(stage.kind).needs_batches(config)
        if batches is None and reason is not None:
            raise ConfigError(
                f"{stage.label(i)}: {reason} needs training batches: pass batches= or data="
            )
    needs_val = validation_stage(recipe, model)
    if eval_fn is None and needs_val is not None:
        raise no_validation_error(*needs_val)
    identity: dict[str, Any] = {
        "recipe_sha256": recipe_hash(recipe),
        "model": model_name or f"{type(model).__module__}.{type(model).__qualname__}",
        "model_sha256": model_fingerprint(model),
        "data": data_id,
        "seed": recipe.seed,
        "deepzip": deepzip_identity(),
    }
    encode = _encode_options(recipe)
    base_meta = {
        "deepzip.model": identity["model"],
        "deepzip.recipe_sha256": identity["recipe_sha256"],
    }
    if data_id is not None:
        base_meta["deepzip.data"] = data_id

    def write_dzip(path: Path) -> SaveReport:
        return save_dzip(
            model,
            path,
            coder=encode.coder,
            index_bits=_index_bits(recipe, encode),
            layout=encode.layout,
            metadata=base_meta,
            recipe=recipe.to_dict(),
        )

    def measure(index: int) -> SaveReport:
        """The ``.dzip`` report of the model after stage ``index`` (``-1``: the starting model),
        from a file written in a temporary directory of the run directory, then removed."""
        try:
            with tempfile.TemporaryDirectory(dir=out, prefix=f".measure-{index + 1:02d}-") as tmp:
                return write_dzip(Path(tmp) / DZIP_FILE)
        except OSError as exc:  # a full disk: named by the run directory, not the temporary
            if isinstance(exc, DeepZipError):
                raise
            label = recipe.stages[index].label(index) if index >= 0 else "the starting model"
            raise RunWriteError(
                f"{label}: cannot measure its .dzip size in the run directory {out}: "
                f"{os_error_reason(exc)}",
                exc.errno,
                exc.strerror,
                str(out),
            ) from exc

    created = make_dirs(out)  # the run directory and its missing parents, deepest first
    try:
        with lock_run(out):  # one run at a time in a directory
            return _run_locked(
                model, recipe, out, identity, base_meta, write_dzip, measure, restart=restart,
                dev=dev, train_fn=train_fn, eval_fn=eval_fn, test_fn=test_fn, batches=batches,
                emit=emit,
            )  # fmt: skip
    except BaseException:
        # a fresh run that failed before it recorded anything leaves no directory it made
        remove_dirs(created)
        raise


def _run_locked(
    model: nn.Module,
    recipe: Recipe,
    out: Path,
    identity: dict[str, Any],
    base_meta: dict[str, str],
    write_dzip: Callable[[Path], SaveReport],
    measure: Callable[[int], SaveReport],
    *,
    restart: bool,
    dev: torch.device,
    train_fn: TrainFn | None,
    eval_fn: EvalFn | None,
    test_fn: EvalFn | None,
    batches: Callable[[], Batches] | None,
    emit: Callable[[PipelineEvent], None],
) -> RunResult:
    """:func:`run_recipe` from the run directory on, while holding its lock."""
    state_path = out / STATE_FILE
    remove_stale_temps(out)  # left by a run killed while writing a file or measuring
    records: list[StageRecord] = []
    digests: dict[str, str] = {}  # SHA-256 of the checkpoints and .dzip the run wrote
    initial: StageRecord | None = None
    if state_path.is_file() and restart:
        clear_run(out)
    if state_path.is_file():
        state = read_state(state_path)
        if state.get("identity") != identity:
            raise RecipeChangedError(_mismatch(out, state, identity, recipe))
        initial = StageRecord.from_dict(state["initial"])
        records = [StageRecord.from_dict(r) for r in state["stages"]]
        digests = dict(state.get("sha256", {}))
        note = ""
        if records and len(records) == len(recipe.stages) and not _intact(out, digests):
            records.pop()  # the .dzip is the last stage's output: that stage writes it again
            note = f"; {DZIP_FILE} is missing or changed, so the last stage runs again"
        last = records[-1].checkpoint if records else initial.checkpoint
        load_stage_checkpoint(model, out / last, sha256=digests.get(last))
        model.to(dev)
        emit(
            PipelineEvent(
                "resume",
                f"resuming {out}: {len(records)} of {len(recipe.stages)} stage(s) already "
                f"done{note}",
            )
        )
    else:
        emit(PipelineEvent("start", f"run directory {out}"))
    resumed_from = len(records)

    def save_state(finished: bool) -> None:
        assert initial is not None
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "identity": identity,
            "recipe": recipe.to_dict(),
            "initial": initial.to_dict(),
            "stages": [r.to_dict() for r in records],
            "sha256": dict(sorted(digests.items())),
            "finished": finished,
        }
        atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def save_checkpoint(name: str) -> None:
        """Write the model's checkpoint, note its digest, and continue from what it holds."""
        save_stage_checkpoint(model, out / name, base_meta)
        digests[name] = file_sha256(out / name)
        load_stage_checkpoint(model, out / name)
        model.to(dev)

    teacher_box: list[nn.Module] = []

    def teacher() -> nn.Module:
        """The dense reference: the model after the train stage, or as the run started."""
        if not teacher_box:
            ref = INITIAL_CHECKPOINT
            if recipe.stages[0].kind == "train" and records:
                ref = records[0].checkpoint
            t = independent_copy(model)
            load_stage_checkpoint(t, out / ref, sha256=digests.get(ref))
            t.to(dev).eval()
            for p in t.parameters():
                p.requires_grad_(False)
            teacher_box.append(t)
        return teacher_box[0]

    def evaluate_now() -> tuple[float | None, float | None]:
        return (
            eval_fn(model) if eval_fn is not None else None,
            test_fn(model) if test_fn is not None else None,
        )

    if initial is None:
        try:
            t0 = time.perf_counter()
            save_checkpoint(INITIAL_CHECKPOINT)
            size = measure(-1)
            val, test = evaluate_now()
            initial = StageRecord(
                -1, "initial", None, recipe.seed, INITIAL_CHECKPOINT, val, test,
                size.file_bytes, size.float32_bytes, _kept(size), time.perf_counter() - t0, {},
            )  # fmt: skip
            save_state(False)
        except BaseException:  # nothing recorded: leave no checkpoint behind either
            if not state_path.is_file():
                (out / INITIAL_CHECKPOINT).unlink(missing_ok=True)
            raise
    for index in range(len(records), len(recipe.stages)):
        stage = recipe.stages[index]
        seed = stage_seed(recipe.seed, index)
        label = stage.label(index)
        emit(PipelineEvent("stage_start", f"{label} started", index))
        t0 = time.perf_counter()
        seed_everything(seed)
        ctx = StageContext(
            model=model,
            recipe=recipe,
            stage=stage,
            index=index,
            config=stage_config(model, recipe, index),
            seed=seed,
            run_dir=out,
            device=dev,
            train_fn=train_fn,
            eval_fn=eval_fn,
            test_fn=test_fn,
            batches=batches,
            teacher=teacher,
            emit=emit,
            write_dzip=write_dzip,
        )
        with _errors_named(label):
            result = registered_runner(stage.kind).run(ctx, ctx.config)
            name = f"stage-{index + 1:02d}-{stage.kind}.safetensors"
            save_checkpoint(name)
            size = result.save_report if result.save_report is not None else measure(index)
            val, test = evaluate_now()
        record = StageRecord(
            index, stage.kind, stage.name, seed, name, val, test, size.file_bytes,
            size.float32_bytes, _kept(size), time.perf_counter() - t0, result.details,
        )  # fmt: skip
        records.append(record)
        finished = index == len(recipe.stages) - 1
        if finished and (out / DZIP_FILE).is_file():
            digests[DZIP_FILE] = file_sha256(out / DZIP_FILE)
        save_state(finished)
        emit(PipelineEvent("stage_end", _stage_line(label, record), index, record))
    emit(PipelineEvent("done", f"{out / DZIP_FILE}: ratio {records[-1].ratio:.1f}×"))
    return RunResult(model, recipe, out, initial, tuple(records), out / DZIP_FILE, resumed_from)


def _intact(out: Path, digests: Mapping[str, str]) -> bool:
    """Whether a finished run's ``.dzip`` is there with the bytes the run recorded."""
    path = out / DZIP_FILE
    if not path.is_file():
        return False
    want = digests.get(DZIP_FILE)
    return want is None or file_sha256(path) == want


def _mismatch(
    out: Path, state: Mapping[str, Any], identity: Mapping[str, Any], recipe: Recipe
) -> str:
    old = state.get("identity") or {}
    what = []
    if old.get("recipe_sha256") != identity["recipe_sha256"]:
        recorded = state.get("recipe") or {}
        given = json.loads(json.dumps(recipe.to_dict()))  # (tuples as the state's lists)
        if recorded != given:  # an equal recipe hashed by an earlier deepzip: told below
            what.append(describe_change(recorded, given))
    if old.get("model") != identity["model"]:
        what.append(f"model {old.get('model')!r} → {identity['model']!r}")
    elif old.get("model_sha256") != identity["model_sha256"]:
        what.append("the starting model's weights differ")
    if old.get("data") != identity["data"]:
        what.append(f"data {old.get('data')!r} → {identity['data']!r}")
    if old.get("seed") != identity["seed"] and not what:
        what.append(f"seed {old.get('seed')!r} → {identity['seed']!r}")
    if what:
        return (
            f"{out} holds a run of a different recipe, model or data: {'; '.join(what)}. "
            "Use another run directory, or restart (restart=True; --restart on the command "
            "line) to discard it"
        )
    return (
        f"{out} holds a run made by {_made_by(old.get('deepzip'))}, and this is "
        f"{_made_by(identity['deepzip'])}. Its finished stages may differ from what this "
        "code computes, so the resumed run's .dzip may not be the one a fresh run writes. "
        "Restart it (restart=True; --restart on the command line) to run it again with this "
        "deepzip, or finish it with the deepzip that started it"
    )


@contextmanager
def _errors_named(label: str) -> Iterator[None]:
    """Prefix the message of a deepzip error raised inside with the stage's label (its type
    and traceback kept), unless the message already starts with it."""
    try:
        yield
    except DeepZipError as exc:
        message = str(exc)
        if not message.startswith(label):
            exc.args = (f"{label}: {message}",)
        raise


def _made_by(made: Any) -> str:
    if not isinstance(made, Mapping) or "version" not in made:
        return "a deepzip that did not record its version"
    code = str(made.get("code_sha256", ""))[:12] or "unrecorded"
    return f"deepzip {made['version']} (code {code})"


def _kept(report: SaveReport) -> float:
    compressed = [t for t in report.tensors if t.encoding != "raw"]
    weights = sum(t.weights for t in compressed)
    return sum(t.kept for t in compressed) / weights if weights else 1.0


def _stage_line(label: str, record: StageRecord) -> str:
    parts = [f"{label} done in {record.seconds:.0f} s"]
    if record.val_acc is not None:
        parts.append(f"validation {100 * record.val_acc:.2f}%")
    if record.test_acc is not None:
        parts.append(f"test {100 * record.test_acc:.2f}%")
    parts.append(f"{record.file_bytes:,} B ({record.ratio:.1f}×)")
    return ", ".join(parts)


def _index_bits(recipe: Recipe, encode: EncodeStage) -> IndexBits:
    """dz.save's ``index_bits``: the stage's width for all, then the per-layer overrides."""
    per_layer = recipe.index_bits()
    if not per_layer:
        return encode.index_bits
    if encode.index_bits is None or "*" in per_layer:  # (a "*" rule replaces the stage's width)
        return per_layer
    return {"*": encode.index_bits, **per_layer}


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def quick_recipe(recipe: Recipe, *, epochs: int = 1) -> Recipe:
    """The same recipe with at most ``epochs`` epochs per training and two prune steps.

    For smoke runs (``--quick``): every training of every built-in stage type is shortened
    (dense training, prune retraining, retrain, finetune, the retraining of SLQ/MLQ/INQ and
    Weightless stages); every stage keeps its targets, bits and coder.
    """

    def short(r: RetrainConfig) -> RetrainConfig:
        return replace(r, epochs=min(r.epochs, epochs), final_epochs=min(r.final_epochs, epochs))

    stages = []
    for stage in recipe.stages:
        c = stage.config
        if isinstance(c, TrainStage):
            c = TrainStage(replace(c.train, epochs=min(c.train.epochs, epochs)))
        elif isinstance(c, PruneStage):
            steps = (0.6, 1.0) if len(c.schedule.fractions()) > 1 else (1.0,)
            c = replace(
                c, schedule=ScheduleConfig(kind="steps", steps=steps), retrain=short(c.retrain)
            )
        elif isinstance(c, RetrainStage):
            c = RetrainStage(short(c.retrain))
        elif isinstance(c, FinetuneStage):
            c = FinetuneStage(short(c.finetune))
        elif isinstance(c, (SLQStage, MLQStage, INQStage, WeightlessStage)):
            c = replace(c, retrain=short(c.retrain))
        stages.append(replace(stage, config=c))
    return replace(recipe, stages=tuple(stages))
