"""--mode mp on TensorFlow: the stage plan, and a pipeline over 2 logical CPU devices that
trains like one process (M=1) or like gradient accumulation over microbatches (M=2); and
on SMP: the engine against the stand-in library's documented API."""

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    REPO,
    checkpoint_values,
    enet_env,
    error_lines,
    fit_quietly,
    run_enet,
    train_config,
)
from enet_cli.metrics import parse_metrics_line
from enet_cli.sagemaker.contract import ROOT_ENV

NO_DROPOUT = ("--dropout", "0", "--stage1-dropout", "0")


def brute_force_best(costs, parts):
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = [0, *cuts, n]
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.compat
def test_balanced_cuts_are_optimal_and_contiguous():
    from enet_cli.train.engines.pipeline import balanced_cuts

    rng = np.random.default_rng(0)
    for _ in range(30):
        costs = [int(c) for c in rng.integers(0, 100, rng.integers(4, 11))]
        parts = int(rng.integers(1, min(5, len(costs)) + 1))
        starts = balanced_cuts(costs, parts)
        assert starts[0] == 0 and starts == sorted(set(starts)) and len(starts) == parts
        bounds = [*starts, len(costs)]
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        assert worst == brute_force_best(costs, parts)


@pytest.mark.compat
@pytest.mark.parametrize("partitions", [2, 3, 4])
def test_stage_plan_covers_every_block_once_in_order_and_is_balanced(partitions):
    from enet_cli.config import ModelConfig
    from enet_cli.model.enet import build_enet, model_blocks
    from enet_cli.model.summary import summarize
    from enet_cli.train.engines.pipeline import plan_stages

    model = build_enet(ModelConfig(num_classes=11), (360, 480))
    devices = [f"/CPU:{k}" for k in range(partitions)]
    stages = plan_stages(model, devices)
    assert [s.device for s in stages] == devices
    assert [n for s in stages for n in s.blocks] == [b.layer.name for b in model_blocks(model)]
    rows = summarize(model)
    total, largest = sum(r.multiply_adds for r in rows), max(r.multiply_adds for r in rows)
    assert sum(s.multiply_adds for s in stages) == total
    assert sum(s.params for s in stages) == sum(r.params for r in rows)
    # The optimal contiguous cut is never worse than an even share plus one block.
    assert max(s.multiply_adds for s in stages) <= total / partitions + largest


def is_slot(key):
    return "OPTIMIZER_SLOT" in key or key.startswith("optimizer/_variables/")


def moments(values):
    keys = sorted(k for k, v in values.items() if is_slot(k) and v.size > 1)
    return np.concatenate([values[k].ravel().astype(np.float64) for k in keys])


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_two_stages_one_microbatch_train_like_one_process(small_data, single_step_run, tmp_path):
    common = (str(small_data), "--batch-size", "4", "--steps", "1", "--seed", "3", *NO_DROPOUT)
    mp = run_enet(
        "train", *common, "--mode", "mp", "--partitions", "2", "--microbatches", "1",
        "--run-dir", str(tmp_path / "mp"),
    )  # fmt: skip
    assert mp.returncode == 0, mp.stderr[-3000:]
    assert "stage 0 on /CPU:0: initial .. " in mp.stderr and "stage 1 on /CPU:1: " in mp.stderr
    a = checkpoint_values(tmp_path / "mp" / "checkpoints")
    b = checkpoint_values(single_step_run / "checkpoints", "ckpt-1")  # conftest: same command
    assert sorted(a) == sorted(b)  # the same checkpoint layout: they restore in each other
    assert relative_error(moments(a), moments(b)) < 1e-4
    for key in a:
        if a[key].dtype.kind == "f" and "model/" in key:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_two_microbatches_accumulate_the_microbatch_gradients_and_train(small_data, tmp_path):
    """M=2: the step's gradient is the sum of each microbatch's gradient of its share of the
    batch loss (each normalised by the whole batch's pixels), batch norm per microbatch, in
    both pipeline schedules. An epoch of 2 stages x 2 microbatches on the CamVid sample,
    resumed for a second one, lowers the loss."""
    expected = _reference(small_data, seed=5)
    common = (
        str(small_data), "--batch-size", "4", "--seed", "5", *NO_DROPOUT, "--mode", "mp",
        "--partitions", "2", "--microbatches", "2", "--learning-rate", "2e-3",
        "--checkpoint-every-steps", "1", "--keep-checkpoints", "20",
    )  # fmt: skip
    losses = []
    for epochs, schedule in ((1, "interleaved"), (2, "interleaved"), (None, "simple")):
        run = tmp_path / schedule
        length = ("--epochs", str(epochs)) if epochs else ("--steps", "1")
        result = run_enet("train", *common, *length, "--pipeline", schedule, "--run-dir", str(run))
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{schedule} schedule" in result.stderr
        if epochs == 2:  # resumed at the end of epoch 1, not started over
            assert re.search(r"resuming from \S+ckpt-(\d+) \(epoch 2, step \1\)", result.stderr)
        lines = [parse_metrics_line(line) for line in result.stdout.splitlines()]
        losses += [e["loss"] for e in lines if "loss" in e]
        if epochs == 2:
            continue
        values = checkpoint_values(run / "checkpoints", "ckpt-1")
        slots = [k for k, v in values.items() if v.shape == (3, 3, 11, 16) and is_slot(k)]
        first_moment = [values[k] for k in slots if values[k].min() < 0]
        assert len(first_moment) == 1
        gradient = expected["classifier_gradient"]
        assert relative_error(first_moment[0], 0.1 * gradient) < 1e-4, schedule
        loss = float(values["epoch_loss_sum/.ATTRIBUTES/VARIABLE_VALUE"])
        assert abs(loss - expected["loss"]) < 1e-5 * expected["loss"], schedule
    assert len(losses) == 2 and losses[1] < losses[0]  # epoch 2 (resumed) below epoch 1


def _reference(data_dir, seed):
    from enet_cli.backend import tf
    from enet_cli.config import ClassWeighting, DataConfig, ModelConfig
    from enet_cli.data.manifest import load_manifest
    from enet_cli.data.pipeline import make_dataset
    from enet_cli.model import build_enet
    from enet_cli.train.optim import seed_everything
    from enet_cli.train.task import build_task

    manifest = load_manifest(data_dir)
    task = build_task(manifest, ClassWeighting.enet)
    seed_everything(seed)
    model = build_enet(
        ModelConfig(num_classes=manifest.num_classes, dropout=0, stage1_dropout=0),
        manifest.image_size,
    )
    batch = make_dataset(DataConfig(data_dir=data_dir), manifest, "train", 4, True, seed=seed)
    images, labels = next(iter(batch))
    weight = float(task.weight_sum(labels))
    kernel = model.get_layer("fullconv").trainable_variables[0]
    gradient, loss = 0.0, 0.0
    for x, y in ((images[:2], labels[:2]), (images[2:], labels[2:])):
        with tf.GradientTape() as tape:
            part = task.loss_terms(model(x, training=True), y)[0] / weight
        gradient = gradient + tape.gradient(part, kernel).numpy()
        loss += float(part)
    return {"classifier_gradient": gradient + 2e-4 * kernel.numpy(), "loss": loss}


def test_batch_must_divide_into_microbatches(small_data, tmp_path):
    result = run_enet(
        "train", str(small_data), "--mode", "mp", "--microbatches", "3", "--batch-size", "4",
        "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert errors[-1] == (
        "error: --batch-size 4 is not divisible by --microbatches 3; use a multiple of 3"
    )


# ---------------------------------------------------------------------------------------
# The SMP engine, against the stand-in library in tests/stand_ins (documented SMP v1 API)
# ---------------------------------------------------------------------------------------
STAND_INS = REPO / "tests" / "stand_ins"


@pytest.fixture
def smp(monkeypatch):
    """The stand-in SMP importable for this test only; yields its module."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    for name in ("SM_HP_MP_PARAMETERS", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    import smdistributed.modelparallel.tensorflow as module

    yield module
    for name in [m for m in sys.modules if m.startswith("smdistributed")]:
        del sys.modules[name]
    from enet_cli.model.ops import SpatialDropout

    SpatialDropout.REPLICA_SEED = 0


def smp_config(small_data, run, **train):
    settings = dict(seed=5, dropout=0, stage1_dropout=0, mode="mp", microbatches=2)
    settings.update(train)
    return train_config(small_data, run, **settings)


def model_keys(values: dict) -> set:
    return {k for k in values if k.startswith("model/") and ".OPTIMIZER_SLOT" not in k}


@pytest.mark.compat
def test_smp_step_splits_microbatches_and_accumulates_their_gradients(smp, small_data, tmp_path):
    """One step through smp.step with M=2 equals the microbatch gradients computed by hand,
    and is saved as SMP saves: each partition's own part in checkpoints/smp/mp_rank_<k>."""
    run = tmp_path / "smp"
    summary = fit_quietly(smp_config(small_data, run, steps=1, checkpoint_every_steps=1))
    assert summary["steps"] == 1
    assert ("init", {"partitions": 2, "microbatches": 2, "pipeline": "interleaved"}) in smp.calls
    assert ("step", "microbatch", 2) in smp.calls  # the batch of 4 went in as 2 x 2
    smp_dir = run / "checkpoints" / "smp"
    assert sorted(p.name for p in smp_dir.iterdir()) == ["mp_rank_0", "mp_rank_1"]
    assert not list((run / "checkpoints").glob("ckpt-*"))  # nothing outside SMP's layout
    parts = [checkpoint_values(smp_dir / f"mp_rank_{k}") for k in (0, 1)]
    assert model_keys(parts[0]) and model_keys(parts[1])
    assert not model_keys(parts[0]) & model_keys(parts[1])  # each holds its own part
    values = checkpoint_values(run / "checkpoints")  # the parts merged (read file by file)
    expected = _reference(small_data, seed=5)
    slots = [k for k, v in values.items() if v.shape == (3, 3, 11, 16) and is_slot(k)]
    first_moment = [values[k] for k in slots if values[k].min() < 0]
    assert len(first_moment) == 1
    assert relative_error(first_moment[0], 0.1 * expected["classifier_gradient"]) < 1e-4
    loss = float(values["epoch_loss_sum/.ATTRIBUTES/VARIABLE_VALUE"])
    assert abs(loss - expected["loss"]) < 1e-5 * expected["loss"]


@pytest.mark.compat
def test_smp_resume_goes_through_the_librarys_deferred_restore(smp, small_data, tmp_path):
    """SMP restores only during the first step, after partitioning: the loop still resumes
    at the saved position, and a run stopped after step 1 and resumed ends in the same state
    as a straight 2-step run (weights, Adam moments, step, partial-epoch metrics)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit_quietly(smp_config(small_data, straight, steps=2, checkpoint_every_steps=1))
    fit_quietly(smp_config(small_data, resumed, steps=1, checkpoint_every_steps=1))
    smp.calls.clear()
    summary = fit_quietly(smp_config(small_data, resumed, steps=2, checkpoint_every_steps=1))
    assert summary["steps"] == 2
    events = [c for c in smp.calls if c[0] in ("restore deferred", "partition", "restore", "step")]
    assert events[0] == ("restore deferred", str(resumed / "checkpoints" / "smp"))
    assert events[1] == ("partition",)
    restored = sorted(Path(c[1]).relative_to(resumed).as_posix() for c in events[2:4])
    assert restored == [f"checkpoints/smp/mp_rank_{k}/ckpt-1" for k in (0, 1)]
    assert events[4][0] == "step"  # restored before the first microbatch ran
    a = checkpoint_values(straight / "checkpoints")
    b = checkpoint_values(resumed / "checkpoints")
    assert sorted(a) == sorted(b)
    assert int(b["global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == 2
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.compat
def test_an_smp_run_serves_wherever_a_whole_one_does(smp, small_data, tmp_path):
    """An SMP run's partitioned checkpoints, merged, give the same predictions as the
    SavedModel it exported (the best weights), resume in single mode, and convert to whole
    checkpoints with `enet export --format checkpoint`."""
    from enet_cli.evaluate import evaluate
    from enet_cli.export import ExportFormat, ExportRequest, export_model
    from enet_cli.inference import load_predictor

    run = tmp_path / "smp"
    # Batch 6 in 3 microbatches: the val split's last batch (8 = 6 + 2) is padded to 3.
    summary = fit_quietly(smp_config(small_data, run, epochs=1, batch_size=6, microbatches=3))
    best = checkpoint_values(run / "checkpoints" / "smp-best")
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 96, 128, 3))
    images = (pixels / 255.0).astype(np.float32)  # what the SavedModel's uint8 input holds
    saved = load_predictor(run).logits(images).numpy()
    from_parts = load_predictor(run / "checkpoints" / "smp-best").logits(images).numpy()
    np.testing.assert_allclose(saved, from_parts, atol=1e-4)  # the export holds the parts
    # The SMP eval step (the last batch padded with void) scored those weights as evaluate
    # does; counting the padding would move these by whole percents.
    scored = evaluate(run / "checkpoints" / "smp-best", small_data, "val", 2, None, None)
    assert summary["final_val"]["mean_iou"] == pytest.approx(scored["mean_iou"], rel=1e-3)
    assert summary["final_val"]["pixel_accuracy"] == pytest.approx(
        scored["pixel_accuracy"], rel=1e-3
    )

    whole = tmp_path / "whole"
    export_model(
        ExportRequest(source=run, out=whole, format=ExportFormat.checkpoint, data_dir=None)
    )
    converted = checkpoint_values(whole)
    merged = checkpoint_values(run / "checkpoints")
    assert sorted(converted) == sorted(merged)
    for key in merged:
        np.testing.assert_array_equal(converted[key], merged[key], err_msg=key)
    converted_best = checkpoint_values(whole / "best")
    for key in model_keys(best):
        np.testing.assert_array_equal(converted_best[key], best[key], err_msg=key)

    # Single mode resumes from the SMP run (its parts merged) at its position.
    del sys.modules["smdistributed.modelparallel.tensorflow"]
    summary = fit_quietly(
        train_config(small_data, run, epochs=2, seed=5, batch_size=6, dropout=0, stage1_dropout=0)
    )
    assert [e["epoch"] for e in summary["history"]] == [1, 2]
    assert summary["steps"] == 2 * int(merged["global_step/.ATTRIBUTES/VARIABLE_VALUE"])


@pytest.mark.compat
def test_smp_ranks_other_than_zero_write_only_their_partition(
    smp, small_data, tmp_path, monkeypatch
):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    run = tmp_path / "rank1"
    summary = fit_quietly(smp_config(small_data, run, steps=1, checkpoint_every_steps=1))
    assert summary["steps"] == 1 and "saved_model" not in summary
    written = {p.relative_to(run).parts[:3] for p in run.rglob("*") if p.is_file()}
    # no model, logs, metrics: its partition's checkpoints only, in SMP's layout
    assert written == {("checkpoints", "smp", "mp_rank_1")}


@pytest.mark.compat
def test_smp_parameters_come_from_sagemaker(smp, tmp_path, monkeypatch):
    from enet_cli.config import RuntimeConfig
    from enet_cli.errors import ConfigError
    from enet_cli.train.engines import get_engine

    runtime = RuntimeConfig(mode="mp", partitions=2, microbatches=1)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "ml"))
    config = tmp_path / "ml" / "input" / "config"
    config.mkdir(parents=True)
    params = {"partitions": 2, "microbatches": 4, "pipeline": "simple"}
    # As SageMaker SDK 2 writes it: every value JSON-encoded into a string.
    hyperparameters = {"mp_parameters": json.dumps(params), "epochs": "3"}
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    engine = get_engine(runtime)
    assert type(engine).__name__ == "SMPEngine"  # auto: the library imports
    assert smp.calls[-1] == ("init", params)
    assert "4 microbatch(es) per batch, simple pipeline (from SageMaker's mp_parameters" in (
        engine.describe()
    )
    from enet_cli.train.engines.table import check_microbatches

    with pytest.raises(ConfigError, match="--batch-size 6 is not divisible by --microbatches 4"):
        check_microbatches(6, engine.microbatches)
    monkeypatch.setenv("SM_HP_MP_PARAMETERS", json.dumps({**params, "microbatches": 8}))
    assert get_engine(runtime).microbatches == 8  # the toolkit's variable, which SMP reads
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="SMP runs 4 processes for 2 partitions"):
        get_engine(runtime)


@pytest.mark.compat
def test_smp_engine_without_the_library_says_where_it_exists():
    from enet_cli.config import RuntimeConfig
    from enet_cli.errors import EnvironmentProblem
    from enet_cli.train.engines import get_engine

    with pytest.raises(EnvironmentProblem, match=r"exists only in SageMaker's TensorFlow 2\.6"):
        get_engine(RuntimeConfig(mode="mp", engine="smp"))


PLACEMENT_PROBE = r"""
import json, sys
import numpy as np
from enet_cli.backend import tf
from enet_cli.config import ModelConfig, RuntimeConfig, TrainConfig
from enet_cli.train.engines.pipeline import PipelineEngine
from enet_cli.train.optim import build_update
from enet_cli.train.task import SegmentationTask

engine = PipelineEngine(RuntimeConfig(mode="mp", partitions=2, microbatches=2))
model = engine.build_model(ModelConfig(num_classes=11), (96, 128))
task = SegmentationTask(11, 11, [1.0] * 11)
update = build_update(TrainConfig(), model.trainable_variables)
optimizer = update.optimizer
step = engine.make_train_step(model, update, task)
batch = (tf.zeros([4, 96, 128, 3]), tf.zeros([4, 96, 128], tf.int32))
step(batch)  # one real step: every slot exists
graph = step.get_concrete_function(batch).graph
report = {"stages": [s.blocks for s in engine.stages], "ops": {}, "variables": {}}
for stage in engine.stages:
    for block in stage.blocks:
        report["ops"][block] = sorted({
            op.device for op in graph.get_operations()
            # its forward computations (variable reads run where the variable lives)
            if op.name.split("/")[0] == block
            and op.type not in ("Placeholder", "ReadVariableOp")
        })
for variable in model.variables + optimizer.variables():
    report["variables"][variable.name] = variable.device
print(json.dumps(report))
"""


def test_pipeline_stages_run_on_their_devices():
    """Every forward op of a stage's blocks is placed on that stage's device, and so are
    its variables and Adam's slots for them (one real step on 2 logical CPU devices; the
    backward ops are colocated with their forward ops, TensorFlow's default)."""
    result = subprocess.run(
        [sys.executable, "-c", PLACEMENT_PROBE], capture_output=True, text=True,
        timeout=300, env=enet_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    stage_of = {b: k for k, blocks in enumerate(report["stages"]) for b in blocks}
    assert len(report["stages"]) == 2 and all(report["stages"])
    placed_blocks = [block for block, devices in report["ops"].items() if devices]
    assert len(placed_blocks) >= len(stage_of) - 1  # "logits" is a name, not a computation
    for block in placed_blocks:
        assert report["ops"][block] == [f"/device:CPU:{stage_of[block]}"], block
    placed = 0
    for name, device in report["variables"].items():
        block = next((b for b in stage_of if f"{b}/" in name), None)
        if block is not None:
            assert device.endswith(f"CPU:{stage_of[block]}"), (name, device)
            placed += 1
    assert placed > 2 * len(stage_of)  # weights and slots of every block were checked
