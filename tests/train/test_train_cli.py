"""`enet train` as a process: SIGTERM then resume, the SageMaker container contract, errors."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from enet_testing import (
    SMALL_BOTTLENECKS,
    SMALL_MODEL,
    SMALL_SIZE,
    enet_env,
    error_lines,
    invoke,
)

TRAIN_ARGS = [
    *("--size", SMALL_SIZE, "--batch-size", "4", "--learning-rate", "0.002", "--seed", "1"),
    *SMALL_MODEL,
]


def _sagemaker_tree(root, data, hyperparameters):
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "data").mkdir(parents=True)
    shutil.copytree(data, root / "input" / "data" / "train")
    (root / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in hyperparameters.items()})
    )  # SDK 2 JSON-encodes values
    (root / "input" / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )


def _run_in_container(root, *args):
    env = enet_env()
    env["ENET_SAGEMAKER_ROOT"] = str(root)
    return subprocess.run(
        [sys.executable, "-m", "enet_cli", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_sagemaker_container_contract(small_data, tmp_path):
    root = tmp_path / "opt_ml"
    _sagemaker_tree(
        root,
        small_data,
        {
            "epochs": 1,
            "batch_size": 4,
            "image_size": SMALL_SIZE,
            "learning_rate": 0.002,
            "bottlenecks": list(SMALL_BOTTLENECKS),
            "model_dir": "s3://bucket/job/model",  # added by SageMaker: accepted, dropped
        },
    )
    result = _run_in_container(root)
    assert result.returncode == 0, result.stderr
    assert (root / "model" / "1" / "saved_model.pb").is_file()  # TF Serving layout
    assert (root / "model" / "1" / "enet.json").is_file()
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1
    assert (root / "checkpoints" / "checkpoint").is_file()
    assert list((root / "output" / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert not (root / "output" / "failure").exists()
    assert "enet-metrics: epoch=1 " in result.stdout


@pytest.mark.compat
@pytest.mark.parametrize(
    "hyperparameters,code,needle",
    [
        ({"batch_size": 500, "image_size": SMALL_SIZE}, 3, "larger than the train split"),
        ({"batch_sise": 4}, 2, "unknown hyperparameter 'batch_sise'"),
    ],
)
def test_sagemaker_failures_land_in_the_failure_file(
    small_data, tmp_path, hyperparameters, code, needle
):
    root = tmp_path / "opt_ml"
    _sagemaker_tree(root, small_data, hyperparameters)
    result = _run_in_container(root)
    assert result.returncode == code
    assert needle in error_lines(result.stderr)[-1]
    assert needle in (root / "output" / "failure").read_text()


def test_cli_data_errors(small_data, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(small_data, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = 7
    (newer / "manifest.json").write_text(json.dumps(manifest))
    for args, code, needle in (
        ([str(tmp_path / "missing")], 3, "does not exist"),
        ([str(newer)], 3, "upgrade enet-cli"),
        ([str(small_data), "--batch-size", "99"], 3, "--batch-size 99 is larger"),
        (
            [str(small_data), "--mode", "mp", "--engine", "smp"],
            6,
            "--engine smp needs smdistributed.modelparallel.tensorflow",
        ),
    ):
        result = invoke("train", *args, "--run-dir", str(tmp_path / "r"), "--size", SMALL_SIZE)
        assert result.returncode == code, result.stderr
        lines = error_lines(result.stderr)
        assert needle in lines[-1] and "Traceback" not in result.stderr


def test_fused_kernel_is_built_once_and_its_absence_is_a_warning(small_data, tmp_path):
    """A fresh cache: the first run compiles the kernel and says so; without a compiler the
    run warns in one line and trains on Keras' ops (same numbers, see tests/model)."""

    def train(run: str, **env):
        result = subprocess.run(
            [sys.executable, "-m", "enet_cli", "train", str(small_data), "--steps", "2",
             "--run-dir", str(tmp_path / run), *TRAIN_ARGS],
            capture_output=True, text=True, timeout=300, env={**enet_env(), **env},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert (tmp_path / run / "model" / "saved_model.pb").is_file()
        return error_lines(result.stderr)

    cache = tmp_path / "kernels"
    lines = train("built", ENET_KERNEL_CACHE=str(cache))
    assert [line for line in lines if "compiling the fused training kernels" in line], lines
    assert not [line for line in lines if "warning" in line], lines
    assert len(list(cache.glob("kernels-*.so"))) == 1

    lines = train("no-compiler", ENET_KERNEL_CACHE=str(tmp_path / "empty"), CXX="/nonexistent/c++")
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1, lines
    assert "no fused training kernels" in warnings[0] and "/nonexistent/c++" in warnings[0]
    assert "composed ops" in warnings[0]


def _in_a_terminal(args, timeout=300) -> str:
    """Run `enet` with a pseudo-terminal as stdin, stdout and stderr (as in tmux); return
    everything it wrote there."""
    import os
    import pty
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "enet_cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=enet_env(),
        close_fds=True,
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_table_row_per_epoch_and_machines_the_metrics_lines(small_data, tmp_path):
    """In a terminal: a header and one compact row per epoch (a mark on a new best), no
    enet-metrics: line and no TensorFlow start-up line. --log-format metrics keeps the
    machine lines there too; without a terminal they are the default (SageMaker's regexes
    read them: test_launch.py)."""
    from enet_cli.train.report import format_header

    common = ["train", str(small_data), *TRAIN_ARGS, "--epochs", "1", "--no-resume"]
    text = _in_a_terminal([*common, "--run-dir", str(tmp_path / "table")])
    assert "previous checkpoints were moved" not in text  # a new run has none
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # colours and cursor moves
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines()]
    assert format_header().strip() in lines
    rows = [line for line in lines if re.match(r"^1 +6 +\d+\.\d{4} ", line)]
    assert len(rows) == 1, lines
    assert rows[0].endswith("* best")
    assert len(rows[0]) <= 100  # one line in a 120-column terminal
    assert "enet-metrics:" not in text
    assert not re.search(r"[IWE]0000|cuInit|oneDNN", text)

    machine = [*common, "--log-format", "metrics"]
    text = _in_a_terminal([*machine, "--run-dir", str(tmp_path / "m")])
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "\n").splitlines()
    metrics = [line for line in lines if line.startswith("enet-metrics: epoch=")]
    assert len(metrics) == 1 and format_header().strip() not in text, lines
