"""SIGTERM at every step of a small run: see resume_chains.py for the setup."""

import signal

import pytest
from resume_chains import (  # noqa: F401  (fixtures)
    Run,
    _checkpoints,
    _history,
    _reads,
    _same,
    _writing,
    straight,
    tiny_data,
)

from enet_testing import checkpoint_values


@pytest.mark.slow
@pytest.mark.compat
def test_sigterm_at_every_step_saves_the_straight_runs_checkpoint_and_resumes_exactly(
    tiny_data, straight, tmp_path
):
    run_dir = tmp_path / "run"
    stops = []
    for _ in range(5):
        run = Run(tiny_data, run_dir)
        assert run.wait_for(run.started_training), run.stderr
        run.proc.send_signal(signal.SIGTERM)  # lands during the first step (it traces)
        code = run.finish()
        if code == 0:
            break
        assert code == 130, run.stderr
        last = [x for x in run.lines if x.startswith("error:")][-1]
        step = int(last.split("stopped at step ")[1].split()[0])
        assert f"checkpoint {run_dir / 'checkpoints' / f'ckpt-{step}'} saved" in last, last
        stops.append(step)
        _same(
            checkpoint_values(run_dir / "checkpoints", f"ckpt-{step}"),
            checkpoint_values(straight / "checkpoints", f"ckpt-{step}"),
            f"ckpt-{step} saved on SIGTERM",
        )
        assert (
            f"resuming from {run_dir / 'checkpoints' / f'ckpt-{stops[-2]}'}" in run.stderr
            if (len(stops) > 1)
            else "starting from scratch" in run.stderr
        )
    assert stops == [1, 2, 3]  # every step: an epoch's last, and the run's last mid-epoch
    _same(
        checkpoint_values(run_dir / "checkpoints"),
        checkpoint_values(straight / "checkpoints"),
        "final state",
    )
    assert _history(run_dir) == _history(straight)
