"""The one training step (train/step.py): `--clip-norm` clips the *global* gradient in every
engine, because every engine hands `Update.apply` the whole batch's gradient.

Clipping to a quarter of the gradient's global norm must scale every variable's update by
exactly 1/4. An engine that clipped a partial gradient (one replica's, one microbatch's)
would scale each part by its own factor (the parts' norms differ), and one that ignored
the option would not scale at all: both fail the elementwise check.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from enet_testing import SMALL_MODEL, STAND_INS, enet_env

PROBE = Path(__file__).with_name("step_probe.py")


def _env(**extra):
    env = enet_env()
    paths = [str(STAND_INS), str(PROBE.parent), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["STEP_PROBE_BOTTLENECKS"] = SMALL_MODEL[1]
    env.update(extra)
    return env


def _check(data, engine: str) -> None:
    n = sum(1 for k in data.files if k.startswith(f"{engine}/plain_"))
    plain = np.concatenate([data[f"{engine}/plain_{i}"].ravel() for i in range(n)])
    clipped = np.concatenate([data[f"{engine}/clipped_{i}"].ravel() for i in range(n)])
    plain, clipped = plain.astype(np.float64), clipped.astype(np.float64)
    assert n > 100 and np.linalg.norm(plain) > 0, engine  # every ENet variable's gradient
    norm = np.linalg.norm(clipped)
    assert abs(norm - float(data[f"{engine}/clip_norm"])) < 1e-4 * norm, engine
    error = np.linalg.norm(clipped - plain / 4) / np.linalg.norm(plain / 4)
    assert error < 1e-4, (engine, error)


def _probe(tmp_path, engines):
    out = tmp_path / "steps.npz"
    result = subprocess.run(
        [sys.executable, str(PROBE), str(out), *engines],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = np.load(out)
    for engine in engines:
        _check(data, engine)


def test_clip_norm_clips_the_global_gradient_in_the_tf_engines(tmp_path):
    """Mirrored (2 replicas, gradients all-reduced) and the tf pipeline (2 stages x 2
    microbatches, gradients summed), in one process: one traced step each, run unclipped
    then clipped. Single mode is the mirrored engine's code with one replica."""
    _probe(tmp_path, ["mirrored", "pipeline"])


@pytest.mark.compat
@pytest.mark.smp
def test_clip_norm_clips_the_global_gradient_under_smp(tmp_path):
    """The SMP stand-in: the gradients of smp.step, accumulate()d over 2 microbatches."""
    _probe(tmp_path, ["smp"])


def test_clip_norm_clips_the_global_gradient_over_smddp_ranks(tmp_path):
    """Two rank processes on the stand-in SMDDP (which really reduces between them)."""
    from enet_cli.train.launcher import free_ports

    port = free_ports(1)[0]
    (tmp_path / "calls").mkdir()
    procs = []
    for rank in (0, 1):
        env = _env(
            OMPI_COMM_WORLD_RANK=str(rank),
            OMPI_COMM_WORLD_SIZE="2",
            OMPI_COMM_WORLD_LOCAL_RANK=str(rank),
            SMDDP_STANDIN_ADDR=f"127.0.0.1:{port}",
            SMDDP_STANDIN_LOG=str(tmp_path / "calls"),
        )
        command = [sys.executable, str(PROBE), str(tmp_path / f"rank{rank}.npz"), "smddp"]
        procs.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    ranks = [np.load(tmp_path / f"rank{rank}.npz") for rank in (0, 1)]
    for data in ranks:
        _check(data, "smddp")
    np.testing.assert_allclose(ranks[0]["smddp/clipped_0"], ranks[1]["smddp/clipped_0"], rtol=1e-6)
