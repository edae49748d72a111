"""--mode mp on TensorFlow: the stage plan, and a pipeline over 2 logical CPU devices that
trains like one process (M=1) or like gradient accumulation over microbatches (M=2); and
on SMP: the engine against the stand-in library's documented API."""

import itertools
import re

import numpy as np
import pytest

from enet_cli.core.metrics import parse_metrics_line
from enet_testing import (
    SMALL_BOTTLENECKS,
    SMALL_MODEL,
    checkpoint_values,
    error_lines,
    invoke,
)

NO_DROPOUT = ("--dropout", "0", "--stage1-dropout", "0", *SMALL_MODEL)


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
    from enet_cli.core.config import ModelConfig
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
    mp = invoke(
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
        result = invoke("train", *common, *length, "--pipeline", schedule, "--run-dir", str(run))
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
    from enet_cli.core.backend import tf
    from enet_cli.core.config import ClassWeighting, DataConfig, ModelConfig
    from enet_cli.data.dataset import make_dataset
    from enet_cli.data.manifest import load_manifest
    from enet_cli.model import build_enet
    from enet_cli.train.optim import seed_everything
    from enet_cli.train.task import build_task

    manifest = load_manifest(data_dir)
    task = build_task(manifest, ClassWeighting.enet)
    seed_everything(seed)
    model = build_enet(
        ModelConfig(
            num_classes=manifest.num_classes,
            dropout=0,
            stage1_dropout=0,
            bottlenecks=SMALL_BOTTLENECKS,
        ),
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
    result = invoke(
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
def _placement(bottlenecks: str) -> dict:
    """Where one real pipeline step (2 stages x 2 microbatches) put each block's forward
    ops, its variables and Adam's slots: {"stages", "ops": block -> devices,
    "variables": name -> device}."""
    from enet_cli.core.backend import tf
    from enet_cli.core.config import ModelConfig, RuntimeConfig, TrainConfig
    from enet_cli.train.engines.pipeline import PipelineEngine
    from enet_cli.train.optim import build_update
    from enet_cli.train.task import SegmentationTask

    engine = PipelineEngine(RuntimeConfig(mode="mp", partitions=2, microbatches=2))
    model = engine.build_model(ModelConfig(num_classes=11, bottlenecks=bottlenecks), (96, 128))
    task = SegmentationTask(11, 11, [1.0] * 11)
    update = build_update(TrainConfig(), model.trainable_variables)
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
            })  # fmt: skip
    for variable in model.variables + update.optimizer.variables():
        report["variables"][variable.name] = variable.device
    return report


def test_pipeline_stages_run_on_their_devices():
    """Every forward op of a stage's blocks is placed on that stage's device, and so are
    its variables and Adam's slots for them (one real step on 2 logical CPU devices, made
    by conftest; the backward ops are colocated with their forward ops, TensorFlow's
    default)."""
    report = _placement(SMALL_MODEL[1])
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
