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

from enet_cli.container.contract import ROOT_ENV
from enet_testing import (
    SMALL_MODEL,
    STAND_INS,
    checkpoint_values,
    enet_env,
    error_lines,
    invoke,
    run_enet,
    user_env,
)

NO_DROPOUT = ("--dropout", "0", "--stage1-dropout", "0")
# 2 workers x 2 images
LONG_RUN = ("--local-workers", "2", "--batch-size", "2", "--epochs", "50", *SMALL_MODEL)


@pytest.fixture
def smddp_importable(monkeypatch):
    """The stand-in SMDDP on sys.path for this test only."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    yield
    for name in [m for m in sys.modules if m.startswith("smdistributed")]:
        del sys.modules[name]


@pytest.mark.compat
def test_engine_choice_follows_mode_and_library(smddp_importable):
    from enet_cli.core.config import EngineChoice, RuntimeConfig
    from enet_cli.core.errors import ConfigError
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
    from enet_cli.core.config import EngineChoice, RuntimeConfig
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
    grows: all moments differ by 4.2% in norm on one machine, 10.2% on another (an AMD
    EPYC: oneDNN picks other kernels), held to 15%; a single process differs from itself by
    2-3% between Keras' fused and unfused batch norm (same math). For
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
        args = ["train", *common(steps, "2"), *NO_DROPOUT, *SMALL_MODEL, "--mode", "ddp"]
        args += ["--local-workers", "2"]
        return _run_with_env([*args, *extra, "--run-dir", str(run)], {"TMPDIR": str(env_tmp)})

    result = two_workers(1, ddp, "--sync-batchnorm")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "MultiWorkerMirroredStrategy over 2 workers, 2 CPU replica(s), batch norm synchronised"
        in (result.stderr)
    )
    assert "global batch 4 (2 per replica)" in result.stderr
    # The chief writes the metrics lines; the other worker's log has none.
    assert len(metrics_lines(result.stdout)) == 1
    assert "done: 0 epochs, 1 step; " in result.stdout, result.stdout[-2000:]
    worker_log = (ddp / "logs" / "worker-1.log").read_text()
    assert metrics_lines(worker_log) == [] and "worker done: 1 step" in worker_log
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
    assert relative_error(optimizer_moments(a), optimizer_moments(b)) < 0.15  # 0.042, 0.102
    assert relative_error(model_values(a), model_values(b)) < 3e-3
    loss, reference_loss = (v["epoch_loss_sum/.ATTRIBUTES/VARIABLE_VALUE"] for v in (a, b))
    assert abs(loss - reference_loss) < 1e-5 * reference_loss
    confusion = a["epoch_confusion/.ATTRIBUTES/VARIABLE_VALUE"]
    reference = b["epoch_confusion/.ATTRIBUTES/VARIABLE_VALUE"]
    assert confusion.sum() == reference.sum() > 0  # the same non-void pixels: same examples
    assert np.abs(confusion - reference).sum() < 0.01 * reference.sum()

    # Checkpoints move between modes: the ddp checkpoint scores in evaluate (a single
    # process); ddp resuming a single run is test_sigterm_to_local_workers_... below.
    result = invoke("evaluate", str(ddp / "checkpoints"), str(small_data), "--split", "val")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean IoU" in result.stdout


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
    traceback from the survivor and no "SIGTERM received" about a signal nobody sent; no
    worker process survives, and no worker's temporary files (autograph's, its scratch)."""
    run = tmp_path / "run"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
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
        env={**user_env(), "TMPDIR": str(scratch)},  # as a user's shell: no log level set
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
    assert "SIGTERM received" not in rest, rest
    # nor TensorFlow's C++ lines about the collectives the dead peer aborted
    # ("E0000 ... base_collective_executor.cc:252] BaseCollectiveExecutor::StartAbort ...")
    assert [x for x in rest.splitlines() if re.match(r"[IWEF]\d{4} ", x)] == [], rest
    assert list(scratch.iterdir()) == []
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


def test_sigterm_to_local_workers_stops_them_at_one_step_with_a_checkpoint(
    small_data, single_step_run, tmp_path
):
    """SIGTERM to `enet train --local-workers 2` reaches both workers; they stop after the
    same step, the chief saves that step's checkpoint, and the command exits 130.

    The workers resume a single-process run (checkpoints move between modes) with
    --scale-lr: its step 2 moved the weights with 2 x the learning rate (2 replicas). One
    cluster for both claims: each start of one costs half a minute of the suite."""
    run = tmp_path / "run"
    shutil.copytree(single_step_run, run)  # conftest: batch 4, seed 3, no dropout, 1 step
    proc = subprocess.Popen(
        [sys.executable, "-m", "enet_cli", "train", str(small_data), "--mode", "ddp",
         *LONG_RUN, *NO_DROPOUT, "--seed", "3", "--scale-lr", "--checkpoint-every-steps", "1",
         "--keep-checkpoints", "100", "--run-dir", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=enet_env(),
    )  # fmt: skip
    _wait_for(run / "checkpoints" / "ckpt-2.index", [proc])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    assert "resuming from" in err and "(epoch 1, step 1)" in err, err[-3000:]
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

    from enet_cli.core.config import TrainConfig

    lr = _adam_step_learning_rate(
        checkpoint_values(run / "checkpoints", "ckpt-1"),
        checkpoint_values(run / "checkpoints", "ckpt-2"),
        step=2,
    )
    assert lr == pytest.approx(2 * TrainConfig().learning_rate, rel=1e-3)
