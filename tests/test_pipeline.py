"""run_recipe: stages, checkpoints, resume after a kill (byte-identical .dzip), changed recipes,
user callables, registries, and glob errors before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from deepzip.config import (
    EncodeStage,
    LayerRule,
    QuantizeConfig,
    QuantizeStage,
    Recipe,
    RetrainConfig,
    Stage,
    StageKind,
    TrainConfig,
    register_stage_kind,
)
from deepzip.errors import ConfigError
from deepzip.format.api import load_state_dict
from deepzip.pipeline import (
    DZIP_FILE,
    STATE_FILE,
    PipelineEvent,
    RecipeChangedError,
    StageContext,
    StageResult,
    TrainRequest,
    independent_copy,
    quick_recipe,
    read_run,
    register_stage_runner,
    run_recipe,
    stage_seed,
    validation_stage,
)
from deepzip.prune import get_mask
from deepzip.quantize import get_shared, quantize_
from pipeline_toy import toy_data, toy_model, toy_recipe, toy_recipe_dict

TOY = Path(__file__).with_name("pipeline_toy.py")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete run of the toy recipe, shared by the tests that compare against it."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("full")
    result = run_recipe(toy_model(), toy_recipe(), run_dir, data=toy_data(), device="cpu")
    assert result.resumed_from == 0
    return run_dir


def test_a_run_records_every_stage(uninterrupted: Path) -> None:
    recipe, initial, stages = read_run(uninterrupted)
    assert recipe == toy_recipe()
    assert [s.kind for s in stages] == ["train", "prune", "quantize", "finetune", "encode"]
    assert [s.seed for s in stages] == [stage_seed(5, i) for i in range(5)]
    assert initial.kind == "initial"
    for s in (initial, *stages):
        assert (uninterrupted / s.checkpoint).is_file()
    train, prune, quant, _, encode = stages
    assert train.val_acc is not None
    assert train.val_acc > 0.9
    assert prune.kept == pytest.approx((0.2 * 960 + 0.5 * 192) / (960 + 192), abs=1e-3)
    assert [step["progress"] for step in prune.details["steps"]] == [0.5, 1.0]
    assert quant.details["report"]["layers"][0]["bits"] == 3
    assert quant.file_bytes < prune.file_bytes < train.file_bytes
    # the encode stage's record is the real file, and the file decodes to the same accuracy
    dzip = uninterrupted / DZIP_FILE
    assert encode.file_bytes == dzip.stat().st_size
    assert encode.ratio == pytest.approx(encode.float32_bytes / dzip.stat().st_size)
    assert encode.float32_bytes == 4 * (20 * 48 + 48 + 48 * 4 + 4)
    assert encode.details["save"]["path"] == DZIP_FILE  # relative: the directory may move
    assert encode.details["save"]["file_bytes"] == encode.file_bytes
    assert encode.details["decoded_test_acc"] == encode.test_acc
    assert encode.details["decoded_val_acc"] == encode.val_acc
    state = json.loads((uninterrupted / STATE_FILE).read_text())
    assert state["finished"] is True


def test_killed_run_resumes_and_gives_identical_bytes(uninterrupted: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, str(TOY), str(run_dir), "2"], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == -9, proc.stderr  # SIGKILL right after stage 2 was recorded
    _, _, done = read_run(run_dir)
    assert [s.kind for s in done] == ["train", "prune"]
    assert not (run_dir / DZIP_FILE).exists()
    before = {p.name: p.read_bytes() for p in run_dir.glob("stage-*.safetensors")}

    events: list[PipelineEvent] = []
    result = run_recipe(
        toy_model(), toy_recipe(), run_dir, data=toy_data(), device="cpu", on_event=events.append
    )
    assert result.resumed_from == 2
    assert events[0].kind == "resume"
    started = [e.index for e in events if e.kind == "stage_start"]
    assert started == [2, 3, 4]
    for name, data in before.items():  # finished stages were not redone
        assert (run_dir / name).read_bytes() == data
    assert (run_dir / DZIP_FILE).read_bytes() == (uninterrupted / DZIP_FILE).read_bytes()
    _, _, full = read_run(uninterrupted)
    assert [s.test_acc for s in result.stages] == [s.test_acc for s in full]


def test_interrupted_stage_reruns_from_its_start(uninterrupted: Path, tmp_path: Path) -> None:
    class SimulatedCtrlCError(Exception):
        pass

    data = toy_data()
    calls: list[str] = []

    def failing_train(model: nn.Module, request: TrainRequest) -> None:
        calls.append(f"{request.stage}:{request.step}")
        if request.stage == "finetune":
            raise SimulatedCtrlCError  # Ctrl-C in the middle of stage 4

    with pytest.raises(SimulatedCtrlCError):
        _run_with(failing_train, data, tmp_path)
    assert calls[-1] == "finetune:None"
    _, _, done = read_run(tmp_path)
    assert len(done) == 3
    result = run_recipe(toy_model(), toy_recipe(), tmp_path, data=data, device="cpu")
    assert result.resumed_from == 3
    assert (tmp_path / DZIP_FILE).read_bytes() == (uninterrupted / DZIP_FILE).read_bytes()


def _run_with(wrapper: Any, data: Any, run_dir: Path) -> None:
    """Run the toy recipe with the data trainer, calling ``wrapper`` before each training."""
    from deepzip.pipeline import data_trainer

    inner = data_trainer(data, device="cpu")

    def train(model: nn.Module, request: TrainRequest) -> None:
        wrapper(model, request)
        inner(model, request)

    run_recipe(toy_model(), toy_recipe(), run_dir, data=data, device="cpu", train_fn=train)


def test_finished_run_is_not_redone(uninterrupted: Path) -> None:
    trained: list[TrainRequest] = []
    model = toy_model()
    stale = uninterrupted / ".measure-03-killed"  # as a kill while measuring a size leaves it
    stale.mkdir()
    (stale / DZIP_FILE).write_bytes(b"partial")
    result = run_recipe(
        model,
        toy_recipe(),
        uninterrupted,
        data=toy_data(),
        device="cpu",
        train_fn=lambda m, r: trained.append(r),
    )
    assert trained == []
    assert not stale.exists()
    assert result.resumed_from == 5
    assert get_shared(model[1]) is not None  # the final model was loaded back


def test_changed_recipe_is_detected(uninterrupted: Path, tmp_path: Path) -> None:
    changed = toy_recipe_dict()
    changed["stages"][2]["bits"] = 4
    with pytest.raises(RecipeChangedError, match=r"stage 3 \(quantize\) changed \(bits: 3 → 4\)"):
        run_recipe(toy_model(), Recipe.from_dict(changed), uninterrupted, data=toy_data())
    with pytest.raises(RecipeChangedError, match="--restart"):
        run_recipe(toy_model(), Recipe.from_dict(changed), uninterrupted, data=toy_data())
    other_model = toy_model()
    with torch.no_grad():
        other_model[1].weight.add_(1.0)
    with pytest.raises(RecipeChangedError, match="the starting model's weights differ"):
        run_recipe(other_model, toy_recipe(), uninterrupted, data=toy_data())
    # restart discards the old run and starts over (in a copy, to keep the shared fixture)
    run_dir = _copy_run(uninterrupted, tmp_path / "copy")
    recipe = Recipe.from_dict({**changed, "stages": [changed["stages"][0], changed["stages"][-1]]})
    result = run_recipe(toy_model(), recipe, run_dir, data=toy_data(), restart=True, device="cpu")
    assert result.resumed_from == 0
    assert not (run_dir / "stage-03-quantize.safetensors").exists()
    assert [s.kind for s in read_run(run_dir)[2]] == ["train", "encode"]


@dataclass
class Recorder:
    requests: list[TrainRequest]

    def __call__(self, model: nn.Module, request: TrainRequest) -> None:
        self.requests.append(request)
        with torch.no_grad():  # "training": nudge every trainable parameter
            for p in model.parameters():
                if p.requires_grad:
                    p.mul_(1.01)


def test_user_callables_on_any_model(tmp_path: Path) -> None:
    recorder = Recorder([])
    evaluated: list[int] = []

    def eval_fn(model: nn.Module) -> float:
        evaluated.append(1)
        return 0.5

    recipe = Recipe.from_dict(
        {
            "seed": 1,
            "defaults": {"optimizer": "adamw", "weight_decay": 0.01},
            "stages": [
                {
                    "type": "prune",
                    "sparsity": 0.5,
                    "schedule": {"steps": [0.5, 1.0]},
                    "retrain": {"epochs": 2, "final_epochs": 3, "lr": 0.1, "lr_scale": 0.5},
                },
                {"type": "retrain", "epochs": 1},
                {"type": "quantize", "bits": 2},
                {"type": "finetune", "epochs": 1, "distill": 0.5},
                {"type": "encode"},
            ],
        }
    )
    model = toy_model()
    result = run_recipe(model, recipe, tmp_path, train_fn=recorder, eval_fn=eval_fn)
    got = [(r.stage, r.step, r.epochs, r.optimizer) for r in recorder.requests]
    assert got == [
        ("prune", 0, 2, "adamw"),
        ("prune", 1, 5, "adamw"),
        ("retrain", None, 1, "adamw"),
        ("finetune", None, 1, "adamw"),
    ]
    assert recorder.requests[0].lr == pytest.approx(0.05)
    assert recorder.requests[1].seed == (stage_seed(1, 0) + 1) % 2**31
    finetune = recorder.requests[-1]
    assert finetune.teacher is not None
    assert finetune.teacher is not model
    # the teacher is the model the run started from, untouched by pruning
    assert get_mask(finetune.teacher[1]) is None
    assert torch.equal(finetune.teacher[1].weight, toy_model()[1].weight)
    assert result.final.test_acc is None
    assert result.final.val_acc == 0.5
    assert len(evaluated) > 6


def test_missing_callables_and_bad_globs_fail_before_running(tmp_path: Path) -> None:
    model = toy_model()
    base = toy_recipe_dict()
    with pytest.raises(ConfigError, match=r"stage 1 \(train\) trains the model: pass train_fn"):
        run_recipe(model, toy_recipe(), tmp_path)
    fisher = Recipe.from_dict({"stages": [{"type": "quantize", "importance": "fisher"},
                                          {"type": "encode"}]})  # fmt: skip
    with pytest.raises(ConfigError, match=r"stage 1 \(quantize\): importance = 'fisher' needs"):
        run_recipe(model, fisher, tmp_path / "f")
    cases = [
        ({**base, "overrides": [{"pattern": "conv9", "bits": 4}]},
         r"overrides\[0\]: pattern 'conv9' matches no compressible layer \(layers: 1.weight, "),
        ({**base, "stages": [base["stages"][0], {**base["stages"][1], "overrides": [
            {"pattern": "fc*", "sparsity": 0.1}]}, *base["stages"][2:]]},
         r"stage 2 \(prune\): override pattern 'fc\*' matches no prunable layer"),
        ({**base, "stages": [*base["stages"][:2], {"type": "quantize", "exclude": ["head"]},
                             *base["stages"][3:]]},
         r"stage 3 \(quantize\): exclude pattern 'head' matches no layer"),
        ({**base, "stages": [*base["stages"][:2], {"type": "quantize", "overrides": [
            {"pattern": "9", "bits": 2}]}, *base["stages"][3:]]},
         r"stage 3 \(quantize\): override pattern '9' matches no quantizable layer"),
    ]  # fmt: skip
    for data, message in cases:
        with pytest.raises(ConfigError, match=message):
            run_recipe(toy_model(), Recipe.from_dict(data), tmp_path / "g", data=toy_data())
        assert not (tmp_path / "g" / STATE_FILE).exists()


def test_index_bits_overrides_reach_the_file(tmp_path: Path) -> None:
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "4", "index_bits": 3}],
            "stages": [
                {"type": "prune", "sparsity": 0.9, "schedule": {"kind": "oneshot"},
                 "retrain": {"epochs": 0, "final_epochs": 0}},
                {"type": "quantize", "bits": 4},
                {"type": "encode", "index_bits": 6, "layout": "sparse"},
            ],
        }
    )  # fmt: skip
    result = run_recipe(toy_model(), recipe, tmp_path)
    widths = {t["name"]: t["gap_width"] for t in result.final.details["save"]["tensors"]}
    assert widths["1.weight"] == 6
    assert widths["4.weight"] == 3
    paper = replace(
        recipe,
        stages=(
            *recipe.stages[:-1],
            Stage("encode", EncodeStage(index_bits="paper", layout="sparse")),
        ),
        overrides=(LayerRule("4", index_bits="auto"),),
    )
    auto = replace(
        paper, stages=(*recipe.stages[:-1], Stage("encode", EncodeStage(layout="sparse")))
    )
    runs = {}
    for name, r in (("paper", paper), ("auto", auto)):
        tensors = run_recipe(toy_model(), r, tmp_path / name).final.details["save"]["tensors"]
        runs[name] = {t["name"]: (t["gap_width"], t["bytes"]) for t in tensors}
    assert runs["paper"]["1.weight"][0] == 5  # the paper's width for a fully connected layer
    assert runs["paper"]["4.weight"] == runs["auto"]["4.weight"]  # the override's "auto"
    assert runs["auto"]["1.weight"][1] <= runs["paper"]["1.weight"][1]


def test_custom_stage_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepzip.config.stages as config_module
    import deepzip.pipeline.registry as pipeline_module

    monkeypatch.setattr(config_module, "_STAGE_KINDS", dict(config_module._STAGE_KINDS))
    monkeypatch.setattr(pipeline_module, "_RUNNERS", dict(pipeline_module._RUNNERS))

    @dataclass(frozen=True)
    class Ternary:
        scale: float = 1.0

        def to_dict(self) -> dict[str, Any]:
            return {"scale": self.scale}

    def parse(table: Any, ctx: Any) -> Ternary:
        return Ternary(**table)

    register_stage_kind(StageKind("ternary", "quantize", Ternary, parse))
    with pytest.raises(ConfigError, match="already registered"):
        register_stage_kind(StageKind("ternary", "quantize", Ternary, parse))
    recipe = Recipe.from_dict(
        {"stages": [{"type": "ternary", "scale": 2.0}, {"type": "finetune", "epochs": 0},
                    {"type": "encode"}]}
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"stage 1 \(ternary\): stage type 'ternary' has no"):
        run_recipe(toy_model(), recipe, tmp_path)

    seen: list[int] = []

    def run(ctx: StageContext, config: Ternary) -> StageResult:
        seen.append(ctx.seed)
        quantize_(ctx.model, QuantizeConfig(bits=2, method="uniform"))
        return StageResult({"scale": config.scale})

    register_stage_runner("ternary", run)
    with pytest.raises(ConfigError, match="already has a runner"):
        register_stage_runner("ternary", run)
    with pytest.raises(ConfigError, match="'nothing' is not registered"):
        register_stage_runner("nothing", run)
    result = run_recipe(toy_model(), recipe, tmp_path)
    assert seen == [stage_seed(0, 0)]
    assert result.stages[0].details == {"scale": 2.0}
    assert all(t.numel() for t in load_state_dict(tmp_path / DZIP_FILE).values())


def test_independent_copy_leaves_the_original_intact() -> None:
    model = toy_model()
    quantize_(model, QuantizeConfig(bits=2))
    clone = independent_copy(model)
    from deepzip.quantize import strip_

    strip_(clone)
    assert get_shared(clone[1]) is None
    assert get_shared(model[1]) is not None
    assert model[1].weight.shape == (48, 20)  # the original still has its weight property
    assert torch.equal(model[1].weight, clone[1].weight)


def test_stage_with_unknown_kind_object_is_rejected() -> None:
    with pytest.raises(ConfigError, match="needs a QuantizeStage, got EncodeStage"):
        Stage("quantize", EncodeStage())
    assert QuantizeStage().fisher_batches == 20


def test_sensitivity_globs_and_validation_needs_fail_before_running(tmp_path: Path) -> None:
    recorder = Recorder([])
    train = {"type": "train", "epochs": 1}

    def recipe(stage: dict[str, Any]) -> Recipe:
        return Recipe.from_dict({"stages": [train, stage, {"type": "encode"}]})

    with pytest.raises(
        ConfigError, match=r"stage 2 \(sensitivity\): include pattern 'nomatch\*' matches no layer"
    ):
        run_recipe(
            toy_model(), recipe({"type": "sensitivity", "include": ["nomatch*"]}),
            tmp_path / "a", train_fn=recorder, eval_fn=lambda model: 0.5,
        )  # fmt: skip
    with pytest.raises(ConfigError, match=r"stage 2 \(sensitivity\): exclude pattern 'x'"):
        run_recipe(
            toy_model(), recipe({"type": "sensitivity", "exclude": ["x"]}), tmp_path / "a",
            train_fn=recorder, eval_fn=lambda model: 0.5,
        )  # fmt: skip
    # validation accuracy: a sensitivity stage, and a Weightless stage choosing its widths
    for stage, label in (
        ({"type": "sensitivity"}, r"stage 2 \(sensitivity\)"),
        ({"type": "weightless", "quantize": {"bits": 2}}, r"stage 2 \(weightless\)"),
    ):
        assert validation_stage(recipe(stage)) is not None
        with pytest.raises(ConfigError, match=label + " needs validation accuracy"):
            run_recipe(toy_model(), recipe(stage), tmp_path / "b", train_fn=recorder)
    assert recorder.requests == []  # nothing trained
    assert not (tmp_path / "a" / STATE_FILE).exists()
    assert not (tmp_path / "b" / STATE_FILE).exists()
    fixed = recipe({"type": "weightless", "cell_bits": 4, "quantize": {"bits": 2}})
    assert validation_stage(fixed) is None
    assert validation_stage(toy_recipe()) is None


def _training_epochs(config: Any) -> list[int]:
    """Every epoch count of a stage configuration (its train and retraining tables)."""
    out: list[int] = []
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, RetrainConfig):
            out += [value.epochs, value.final_epochs]
        elif isinstance(value, TrainConfig):
            out.append(value.epochs)
    return out


def test_quick_recipe_shortens_every_training() -> None:
    retrain = {"epochs": 10, "final_epochs": 5}
    recipe = Recipe.from_dict(
        {
            "stages": [
                {"type": "train", "epochs": 5},
                {"type": "prune", "sparsity": 0.5, "retrain": {"epochs": 3, "final_epochs": 4}},
                {"type": "retrain", "epochs": 3},
                {"type": "slq", "bits": 3, "retrain": retrain},
                {"type": "mlq", "bits": 2, "retrain": retrain},
                {"type": "inq", "bits": 4, "retrain": retrain},
                {"type": "weightless", "cell_bits": 6, "retrain": {"epochs": 20}},
                {"type": "finetune", "epochs": 3},
                {"type": "encode"},
            ]
        }
    )
    quick = quick_recipe(recipe)
    for before, after in zip(recipe.stages, quick.stages, strict=True):
        assert before.kind == after.kind
        if before.kind != "encode":
            assert max(_training_epochs(before.config)) > 1
            assert max(_training_epochs(after.config)) == 1, after.kind


def _copy_run(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in src.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_a_run_of_other_deepzip_code_is_not_resumed(uninterrupted: Path, tmp_path: Path) -> None:
    from deepzip import __version__
    from deepzip._provenance import code_sha256

    state = json.loads((uninterrupted / STATE_FILE).read_text("utf-8"))
    assert state["identity"]["deepzip"] == {"version": __version__, "code_sha256": code_sha256()}
    for made, says in [
        ({"version": __version__, "code_sha256": "0" * 64}, r"deepzip \S+ \(code 000000000000\)"),
        ({"version": "0.0.9", "code_sha256": "1" * 64}, r"deepzip 0\.0\.9 \(code 111111111111\)"),
        (None, "a deepzip that did not record its version"),
    ]:
        run_dir = _copy_run(uninterrupted, tmp_path / f"v{len(list(tmp_path.iterdir()))}")
        old = json.loads(json.dumps(state))
        if made is None:
            del old["identity"]["deepzip"]
        else:
            old["identity"]["deepzip"] = made
        (run_dir / STATE_FILE).write_text(json.dumps(old), "utf-8")
        with pytest.raises(RecipeChangedError, match=f"made by {says}.*--restart") as info:
            run_recipe(toy_model(), toy_recipe(), run_dir, data=toy_data(), device="cpu")
        assert f"this is deepzip {__version__} (code {code_sha256()[:12]})" in str(info.value)
        assert json.loads((run_dir / STATE_FILE).read_text("utf-8")) == old  # nothing touched


def test_code_hash_follows_content_not_place(tmp_path: Path) -> None:
    from deepzip._provenance import code_sha256

    a = tmp_path / "a" / "pkg"
    (a / "sub").mkdir(parents=True)
    (a / "m.py").write_text("x = 1\n")
    (a / "sub" / "r.toml").write_text("k = 2\n")
    (a / "notes.txt").write_text("not code")
    base = code_sha256(a)
    b = tmp_path / "b" / "pkg"
    b.parent.mkdir()
    a.rename(b)
    assert code_sha256(b) == base  # moved: same hash
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "m.py").write_text("compiled")
    (b / "notes.txt").write_text("edited")
    assert code_sha256(b) == base  # caches and non-code files do not count
    (b / "sub" / "r.toml").write_text("k = 3\n")
    assert code_sha256(b) != base  # a built-in recipe changed
    (b / "sub" / "r.toml").write_text("k = 2\n")
    assert code_sha256(b) == base
    (b / "m.py").rename(b / "n.py")
    assert code_sha256(b) != base  # same bytes under another name
