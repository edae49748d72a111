"""--mode ddp: a real 2-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1, and SMDDP
against the stand-in library in tests/stand_ins (two real rank processes)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, checkpoint_values, enet_env, error_lines, run_enet
from enet_cli.sagemaker.contract import ROOT_ENV

STAND_INS = REPO / "tests" / "stand_ins"
NO_DROPOUT = ("--dropout", "0", "--stage1-dropout", "0")
LONG_RUN = ("--local-workers", "2", "--batch-size", "2", "--epochs", "50")  # 2 x 2 images


@pytest.fixture
def smddp_importable(monkeypatch):
    """The stand-in SMDDP on sys.path for this test only."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    yield
    for name in [m for m in sys.modules if m.startswith("smdistributed")]:
        del sys.modules[name]


@pytest.mark.compat
def test_engine_choice_follows_mode_and_library(smddp_importable):
    from enet_cli.config import EngineChoice, RuntimeConfig
    from enet_cli.errors import ConfigError
    from enet_cli.train.engines import resolve_engine

    assert resolve_engine(RuntimeConfig(mode="ddp")) == EngineChoice.smddp  # auto: it imports
    assert resolve_engine(RuntimeConfig(mode="ddp", engine="tf")) == EngineChoice.tf
    assert resolve_engine(RuntimeConfig(mode="single")) == EngineChoice.tf
    with pytest.raises(ConfigError, match="--engine smp does not run --mode ddp; use one of"):
        resolve_engine(RuntimeConfig(mode="ddp", engine="smp"))
    with pytest.raises(ConfigError, match="--engine smddp does not run --mode single"):
        resolve_engine(RuntimeConfig(mode="single", engine="smddp"))


@pytest.mark.compat
def test_auto_is_tensorflow_without_the_library():
    from enet_cli.config import EngineChoice, RuntimeConfig
    from enet_cli.train.engines import resolve_engine

    assert resolve_engine(RuntimeConfig(mode="ddp")) == EngineChoice.tf


@pytest.mark.compat
def test_multi_host_tf_config_comes_from_sagemaker_resourceconfig(tmp_path, monkeypatch):
    from enet_cli.train.engines.mirrored import cluster_from_environment, is_chief_task

    config_dir = tmp_path / "ml" / "input" / "config"
    config_dir.mkdir(parents=True)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "ml"))
    monkeypatch.setenv("TF_CONFIG", "")
    hosts = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"]}
    (config_dir / "resourceconfig.json").write_text(json.dumps(hosts))
    cluster = cluster_from_environment()
    assert cluster == {
        "cluster": {"worker": ["algo-1:8890", "algo-2:8890", "algo-3:8890"]},
        "task": {"type": "worker", "index": 1},
    }
    assert json.loads(os.environ["TF_CONFIG"]) == cluster  # MWMS reads the environment
    assert not is_chief_task(cluster)
    assert is_chief_task({**cluster, "task": {"type": "worker", "index": 0}})
    monkeypatch.setenv("TF_CONFIG", "")
    (config_dir / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    assert cluster_from_environment() is None  # one host: MirroredStrategy on its GPUs


@pytest.mark.parametrize(
    "options, code, message",
    [
        (
            ["--local-workers", "2"],
            2,
            "--local-workers 2 does not work with --mode single --engine tf (its processes are "
            "started by SageMaker); use --mode ddp --engine tf",
        ),
        (
            ["--mode", "ddp", "--local-workers", "2", "--batch-size", "13"],
            3,
            "--batch-size 13 x 2 replicas = 26 images per step is larger than the train split "
            "(24 images); use --batch-size 12 or less",
        ),
        (
            ["--sync-batchnorm"],
            2,
            "--sync-batchnorm does not work with --mode single --engine tf (it has no "
            "cross-replica batch norm); use --mode ddp --engine tf, or drop --sync-batchnorm",
        ),
        (
            ["--mode", "ddp", "--engine", "smddp", "--sync-batchnorm"],
            2,
            "--sync-batchnorm does not work with --mode ddp --engine smddp",
        ),
        (
            ["--mode", "ddp", "--engine", "smddp"],
            6,
            "--engine smddp needs smdistributed.dataparallel.tensorflow",
        ),
    ],
)
def test_ddp_misuse_is_one_clear_line(small_data, tmp_path, options, code, message):
    result = run_enet("train", str(small_data), "--run-dir", str(tmp_path / "run"), *options)
    assert result.returncode == code, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0]


def _is_slot(key: str) -> bool:
    """An optimizer slot's checkpoint key: TF 2.6 nests them under the variable
    (`model/.../.OPTIMIZER_SLOT/optimizer/m`), tf-keras 2.21 lists `optimizer/_variables/N`."""
    return "OPTIMIZER_SLOT" in key or key.startswith("optimizer/_variables/")


def optimizer_moments(values: dict) -> np.ndarray:
    """Adam's m and v slots, concatenated in a stable order (names differ across TF versions)."""
    keys = sorted(k for k, v in values.items() if _is_slot(k) and v.size > 1)
    return np.concatenate([values[k].ravel().astype(np.float64) for k in keys])


def model_values(values: dict) -> np.ndarray:
    keys = sorted(
        k
        for k, v in values.items()
        if k.startswith("model/") and not _is_slot(k) and v.dtype.kind == "f"
    )
    return np.concatenate([values[k].ravel().astype(np.float64) for k in keys])


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def metrics_lines(text: str):
    return [line for line in text.splitlines() if line.startswith("enet-metrics:")]


def test_two_workers_step_equals_one_process_at_the_global_batch(
    small_data, single_step_run, tmp_path
):
    """One step of 2 workers x batch 2 (synchronised batch norm) = one step of batch 4.

    Adam's first moments are 0.1 x the gradient, so comparing them compares gradients. The
    classifier's gradient (no batch norm between it and the loss) agrees to 5e-4 (2.3e-4
    measured). Through ENet's 88 batch-norm layers at 2 images per replica float32 round-off
    grows: all moments differ by 4.2% in norm (held to 6%), as much as a single process
    differs from itself between Keras' fused and unfused batch norm (same math, 2-3%). For
    scale: per-replica batch norm gives ~140%, averaging instead of summing the replicas'
    gradients 50%. The synchronised batch norm's own precision is tested on its own
    (tests/model/test_layers.py).
    """
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    env_tmp = tmp_path / "scratch"
    env_tmp.mkdir()

    def common(steps, batch):  # --batch-size is per replica (engines/table.py)
        return (str(small_data), "--batch-size", batch, "--steps", str(steps), "--seed", "3")

    def two_workers(steps, run, *extra):
        args = ["train", *common(steps, "2"), *NO_DROPOUT, "--mode", "ddp", "--local-workers", "2"]
        return _run_with_env([*args, *extra, "--run-dir", str(run)], {"TMPDIR": str(env_tmp)})

    result = two_workers(1, ddp, "--sync-batchnorm")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MultiWorkerMirroredStrategy over 2 workers, 2 CPU replica(s)" in result.stderr
    assert "global batch 4 (2 per replica)" in result.stderr
    # The chief writes the metrics lines; the other worker's log has none.
    assert len(metrics_lines(result.stdout)) == 1
    worker_log = (ddp / "logs" / "worker-1.log").read_text()
    assert metrics_lines(worker_log) == [] and "worker done: 1 steps" in worker_log
    # One set of checkpoints and one model, in the run; the worker's scratch copies are gone.
    assert sorted(p.name for p in (ddp / "checkpoints").glob("ckpt-*.index")) == ["ckpt-1.index"]
    assert (ddp / "model" / "saved_model.pb").is_file()
    assert list(env_tmp.iterdir()) == []

    shutil.copytree(single_step_run, single)  # the same command in single mode (conftest)

    a, b = checkpoint_values(ddp / "checkpoints"), checkpoint_values(single / "checkpoints")
    assert sorted(a) == sorted(b)
    classifier_m = [k for k in a if a[k].shape == (3, 3, 11, 16) and a[k].min() < 0]
    assert len(classifier_m) == 2  # the kernel and its first moment (v is >= 0)
    kernel = next(k for k in classifier_m if not _is_slot(k))
    moment = next(k for k in classifier_m if _is_slot(k))
    assert relative_error(a[kernel], b[kernel]) < 1e-5  # measured 1.1e-6
    assert relative_error(a[moment], b[moment]) < 5e-4  # measured 2.3e-4
    assert relative_error(optimizer_moments(a), optimizer_moments(b)) < 0.06  # measured 0.042
    assert relative_error(model_values(a), model_values(b)) < 3e-3
    loss, reference_loss = (v["epoch_loss_sum/.ATTRIBUTES/VARIABLE_VALUE"] for v in (a, b))
    assert abs(loss - reference_loss) < 1e-5 * reference_loss
    confusion = a["epoch_confusion/.ATTRIBUTES/VARIABLE_VALUE"]
    reference = b["epoch_confusion/.ATTRIBUTES/VARIABLE_VALUE"]
    assert confusion.sum() == reference.sum() > 0  # the same non-void pixels: same examples
    assert np.abs(confusion - reference).sum() < 0.01 * reference.sum()

    # Checkpoints move between modes: the ddp checkpoint scores in evaluate (a single
    # process), and ddp resumes the single run where it stopped.
    result = run_enet("evaluate", str(ddp / "checkpoints"), str(small_data), "--split", "val")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean IoU" in result.stdout
    result = two_workers(2, single, "--scale-lr")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr and "(epoch 1, step 1)" in result.stderr
    assert (single / "checkpoints" / "ckpt-2.index").is_file()
    assert json.loads((single / "metrics.json").read_text())["steps"] == 2
    # --scale-lr: step 2 moved the weights with 2 x the learning rate (2 replicas).
    from enet_cli.config import TrainConfig

    lr = _adam_step_learning_rate(
        checkpoint_values(single / "checkpoints", "ckpt-1"),
        checkpoint_values(single / "checkpoints", "ckpt-2"),
        step=2,
    )
    assert lr == pytest.approx(2 * TrainConfig().learning_rate, rel=1e-3)


def _adam_step_learning_rate(before: dict, after: dict, step: int) -> float:
    """The learning rate Adam used for step `step`, from the classifier kernel's change and
    its moments after the step: w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)."""
    kernels = [k for k, v in after.items() if v.shape == (3, 3, 11, 16)]
    weight = next(k for k in kernels if k.startswith("model/") and not _is_slot(k))
    slots = [after[k] for k in kernels if _is_slot(k)]
    m = next(x for x in slots if x.min() < 0)  # v is >= 0
    v = next(x for x in slots if x.min() >= 0)
    delta = (after[weight] - before[weight]).astype(np.float64)
    direction = np.sqrt(1 - 0.999**step) / (1 - 0.9**step) * m / (np.sqrt(v) + 1e-7)
    usable = np.abs(direction) > 0.1 * np.abs(direction).max()
    return float(np.median(-delta[usable] / direction[usable]))


def _run_with_env(args, extra_env, timeout=600):
    env = {**enet_env(), **extra_env}
    return subprocess.run(
        [sys.executable, "-m", "enet_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("victim", [1, 0])
def test_killing_a_worker_stops_the_whole_run(small_data, tmp_path, victim):
    """SIGKILL worker 1 (or the chief) mid-run: the launcher stops the other one (blocked in
    a collective) and reports the dead worker in one line within a bounded time, with no
    traceback from the survivor; no worker process survives."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enet_cli",
            "train",
            str(small_data),
            "--mode",
            "ddp",
            *LONG_RUN,
            "--run-dir",
            str(run),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=enet_env(),
    )
    pids = []
    for line in proc.stderr:  # "started 2 workers on ... (pids A, B); ..."
        match = re.search(r"\(pids (\d+), (\d+)\)", line)
        if match:
            pids = [int(match.group(1)), int(match.group(2))]
            break
    assert pids, "the launcher did not report its workers"
    for line in proc.stderr:  # the chief says which engine runs once the cluster is up
        if "MultiWorkerMirroredStrategy" in line:
            break
    time.sleep(5)  # inside the first step's collectives
    os.kill(pids[victim], signal.SIGKILL)
    killed = time.monotonic()
    _, rest = proc.communicate(timeout=120)
    elapsed = time.monotonic() - killed
    assert proc.returncode == 5, rest
    assert "Traceback" not in rest and "Error:" not in rest, rest
    errors = [line for line in error_lines(rest) if line.startswith("error:")]
    assert len(errors) == 1, rest
    if victim == 1:
        assert errors[-1].startswith("error: worker 1 was killed by SIGKILL")
        assert "worker-1.log" in errors[-1] and "resume" in errors[-1]
    else:
        assert errors[-1].startswith("error: worker 0 (the chief) was killed by SIGKILL")
        assert "resume" in errors[-1]
    assert elapsed < 60  # detection (0.2 s polls) + 3 s for the chief's own error + 10 s grace
    for pid in pids:
        assert not _alive(pid), f"worker pid {pid} survived"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a dead parent) counts as gone.
    status = Path(f"/proc/{pid}/status")
    return status.is_file() and "zombie" not in status.read_text()


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
@pytest.mark.parametrize("oob", [pytest.param("average", marks=pytest.mark.compat), "sum"])
def test_smddp_engine_two_ranks_average_gradients_and_only_rank_0_writes(small_data, tmp_path, oob):
    """Two rank processes as smddprun starts them, on the stand-in library (which really
    reduces across processes). Checked against the same step computed here by hand: each
    rank's half batch (its own batch-norm statistics), the loss normalised by the pixels of
    both halves, gradients summed over the halves, weight decay added once. The same
    numbers whether oob_allreduce averages or sums (its documentation says both)."""
    calls = tmp_path / "calls"
    runs = [tmp_path / "rank0", tmp_path / "rank1"]
    args = ["train", str(small_data), "--mode", "ddp", "--batch-size", "2", "--steps", "1"]
    procs = start_smddp_ranks(args, runs, calls, {"SMDDP_STANDIN_OOB": oob})
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
    cfg = ModelConfig(num_classes=manifest.num_classes, dropout=0, stage1_dropout=0)
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


def _wait_for(path: Path, procs, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def _stop_step(text: str, reason: str) -> int:
    match = re.search(re.escape(reason) + r": stopped at step (\d+) ", text)
    assert match, text[-3000:]
    return int(match.group(1))


def test_sigterm_to_local_workers_stops_them_at_one_step_with_a_checkpoint(small_data, tmp_path):
    """SIGTERM to `enet train --local-workers 2` reaches both workers; they stop after the
    same step, the chief saves that step's checkpoint, and the command exits 130."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "enet_cli", "train", str(small_data), "--mode", "ddp",
         *LONG_RUN, "--checkpoint-every-steps", "1", "--run-dir", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=enet_env(),
    )  # fmt: skip
    _wait_for(run / "checkpoints" / "ckpt-1.index", [proc])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    step = _stop_step(err, "SIGTERM")
    worker = (run / "logs" / "worker-1.log").read_text()
    assert worker.count("SIGTERM received") == 1, worker  # the launcher passed it on, once
    # The worker's own last line may be cut short when the launcher exits with the chief;
    # if it is there, it names the same step.
    if "stopped at step" in worker:
        assert _stop_step(worker, "SIGTERM") == step
    saved = checkpoint_values(run / "checkpoints")
    assert int(saved["global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == step
    assert (run / "checkpoints" / f"ckpt-{step}.index").is_file()


def test_smddp_rank_stopped_alone_stops_every_rank_at_the_same_step(small_data, tmp_path):
    """SIGTERM to rank 1 only: the engine's any_worker (an oob_allreduce of the stop flag)
    makes rank 0 stop after the same step, and rank 0 saves it."""
    runs = [tmp_path / "rank0", tmp_path / "rank1"]
    args = ["train", str(small_data), "--mode", "ddp", "--batch-size", "2", "--epochs", "50",
            "--checkpoint-every-steps", "1"]  # fmt: skip
    procs = start_smddp_ranks(args, runs, tmp_path / "calls")
    _wait_for(runs[0] / "checkpoints" / "ckpt-1.index", procs)
    procs[1].send_signal(signal.SIGTERM)
    errs = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [130, 130], errs
    step = _stop_step(errs[1], "SIGTERM")
    assert _stop_step(errs[0], "another worker was stopped") == step
    saved = checkpoint_values(runs[0] / "checkpoints")
    assert int(saved["global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == step
