"""--mode ddp on SMDDP: the engine against the stand-in library in tests/stand_ins, as two
real rank processes started the way smddprun starts them. (A file of its own: pytest-xdist
gives each file to one worker, and the 2-worker cluster tests fill test_ddp.py's.)"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_ddp import (
    NO_DROPOUT,
    STAND_INS,
    _is_slot,
    _stop_step,
    _wait_for,
    metrics_lines,
    relative_error,
)

from enet_testing import SMALL_BOTTLENECKS, SMALL_MODEL, checkpoint_values, enet_env


def start_smddp_ranks(args, runs, calls: Path, extra_env=None):
    """Two `enet train` rank processes as smddprun starts them (OMPI_COMM_WORLD_*), on the
    stand-in library, which logs its calls to `calls`/rank-<r>.jsonl."""
    from enet_cli.train.launcher import free_ports

    port = free_ports(1)[0]
    calls.mkdir(exist_ok=True)
    procs = []
    for rank in (0, 1):
        env = enet_env()
        env.update(
            PYTHONPATH=os.pathsep.join([str(STAND_INS), env.get("PYTHONPATH", "")]),
            OMPI_COMM_WORLD_RANK=str(rank),
            OMPI_COMM_WORLD_SIZE="2",
            OMPI_COMM_WORLD_LOCAL_RANK=str(rank),
            SMDDP_STANDIN_ADDR=f"127.0.0.1:{port}",
            SMDDP_STANDIN_LOG=str(calls),
            **(extra_env or {}),
        )
        command = [sys.executable, "-m", "enet_cli", *args, "--seed", "3", *NO_DROPOUT]
        procs.append(
            subprocess.Popen(
                [*command, "--run-dir", str(runs[rank])],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    return procs


# The containers' jobs run the documented reading; the other one is the same code path.
@pytest.mark.parametrize(
    "oob", [pytest.param("average", marks=[pytest.mark.compat, pytest.mark.smddp]), "sum"]
)
def test_smddp_engine_two_ranks_average_gradients_and_only_rank_0_writes(small_data, tmp_path, oob):
    """Two rank processes as smddprun starts them, on the stand-in library (which really
    reduces across processes). Checked against the same step computed here by hand: each
    rank's half batch (its own batch-norm statistics), the loss normalised by the pixels of
    both halves, gradients summed over the halves, weight decay added once. The same
    numbers whether oob_allreduce averages or sums (its documentation says both)."""
    calls = tmp_path / "calls"
    runs = [tmp_path / "rank0", tmp_path / "rank1"]
    args = ["train", str(small_data), "--mode", "ddp", "--batch-size", "2", "--steps", "1"]
    procs = start_smddp_ranks([*args, *SMALL_MODEL], runs, calls, {"SMDDP_STANDIN_OOB": oob})
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    assert "smddp engine, 2 rank(s) on CPU (this is rank 0" in outs[0][1]  # auto picked it
    assert len(metrics_lines(outs[0][0])) == 1 and metrics_lines(outs[1][0]) == []
    assert [p for p in runs[1].rglob("*") if p.is_file()] == []  # rank 1 wrote nothing
    assert (runs[0] / "checkpoints" / "ckpt-1.index").is_file()
    assert (runs[0] / "model" / "saved_model.pb").is_file()

    expected = _smddp_reference_step(small_data, seed=3)
    logs = [
        [json.loads(line) for line in (calls / f"rank-{rank}.jsonl").read_text().splitlines()]
        for rank in (0, 1)
    ]
    model_broadcast = []
    for log in logs:
        broadcasts = [c for c in log if c["call"] == "broadcast_variables"]
        # Once, after the first step: the model's variables, then the optimizer's.
        assert [c["count"] for c in broadcasts][:1] == [expected["model_variables"]]
        assert len(broadcasts) == 2 and all(c["root_rank"] == 0 for c in broadcasts)
        assert any(c["call"] == "gradient_tape" and c["op"] == "average" for c in log)
        assert {c["op"] for c in log if c["call"] == "oob_allreduce"} == {oob}
        model_broadcast.append(broadcasts[0])
    # The ranks' batch-norm statistics came from different halves of the batch, so they
    # differed after the step; the broadcast gave rank 1 rank 0's model.
    assert model_broadcast[0]["before"] != model_broadcast[1]["before"]
    assert model_broadcast[0]["before"] == model_broadcast[0]["after"]
    assert model_broadcast[1]["after"] == model_broadcast[0]["after"]

    values = checkpoint_values(runs[0] / "checkpoints")
    moments = [k for k, v in values.items() if v.shape == (3, 3, 11, 16) and _is_slot(k)]
    first_moment = [values[k] for k in moments if values[k].min() < 0]  # v is >= 0
    assert len(first_moment) == 1
    assert relative_error(first_moment[0], 0.1 * expected["classifier_gradient"]) < 2e-3
    loss = float(values["epoch_loss_sum/.ATTRIBUTES/VARIABLE_VALUE"])
    assert abs(loss - expected["loss"]) < 1e-4 * expected["loss"]
    confusion = values["epoch_confusion/.ATTRIBUTES/VARIABLE_VALUE"]
    assert confusion.sum() == expected["pixels"]


def _smddp_reference_step(data_dir: Path, seed: int) -> dict:
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
    cfg = ModelConfig(
        num_classes=manifest.num_classes,
        dropout=0,
        stage1_dropout=0,
        bottlenecks=SMALL_BOTTLENECKS,
    )
    model = build_enet(cfg, manifest.image_size)
    data = DataConfig(data_dir=data_dir)
    images, labels = next(iter(make_dataset(data, manifest, "train", 4, True, seed=seed)))
    halves = [(images[r::2], labels[r::2]) for r in (0, 1)]  # rank r's records
    weight = sum(
        float(task.loss_terms(tf.zeros([2, *labels.shape[1:], 11]), y)[1]) for _, y in halves
    )
    kernel = model.get_layer("fullconv").trainable_variables[0]
    gradient, loss, pixels = 0.0, 0.0, 0
    for x, y in halves:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss_sum, _ = task.loss_terms(logits, y)
            part = loss_sum / weight
        gradient = gradient + tape.gradient(part, kernel).numpy()
        loss += float(part)
        pixels += int(task.confusion(logits, y).numpy().sum())
    return {
        "classifier_gradient": gradient + 2e-4 * kernel.numpy(),  # + weight decay, once
        "loss": loss,
        "pixels": pixels,
        "model_variables": len(model.variables),
    }


def test_smddp_rank_stopped_alone_stops_every_rank_at_the_same_step(small_data, tmp_path):
    """SIGTERM to rank 1 only: the engine's any_worker (an oob_allreduce of the stop flag)
    makes rank 0 stop after the same step, and rank 0 saves it."""
    runs = [tmp_path / "rank0", tmp_path / "rank1"]
    args = ["train", str(small_data), "--mode", "ddp", "--batch-size", "2", "--epochs", "50",
            "--checkpoint-every-steps", "1", *SMALL_MODEL]  # fmt: skip
    procs = start_smddp_ranks(args, runs, tmp_path / "calls")
    _wait_for(runs[0] / "checkpoints" / "ckpt-1.index", procs)
    procs[1].send_signal(signal.SIGTERM)
    errs = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [130, 130], errs
    step = _stop_step(errs[1], "SIGTERM")
    assert _stop_step(errs[0], "another worker was stopped") == step
    saved = checkpoint_values(runs[0] / "checkpoints")
    assert int(saved["global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == step
