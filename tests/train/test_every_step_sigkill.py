"""SIGKILL while writing, validating and between steps: see resume_chains.py."""

import os
import signal

import pytest
from resume_chains import (  # noqa: F401  (fixtures)
    Run,
    _checkpoints,
    _history,
    _same,
    _writing,
    straight,
    tiny_data,
)

from enet_testing import checkpoint_values


@pytest.mark.slow
def test_sigkill_while_writing_validating_or_between_steps_resumes_exactly(
    tiny_data, straight, tmp_path
):
    run_dir = tmp_path / "run"
    for point in ("checkpoint-write", "validation", "after-checkpoint"):
        before = _checkpoints(run_dir) if (run_dir / "checkpoints").exists() else []
        run = Run(tiny_data, run_dir, pause_at=point)
        assert run.wait_for(run.paused), (point, run.stderr)
        assert f"paused: {point}\n" in run.lines, run.stderr  # held there: the kill lands there
        if point == "checkpoint-write":  # its shards written, not yet made a checkpoint
            assert _writing(run_dir), sorted(p.name for p in (run_dir / "checkpoints").iterdir())
            assert _checkpoints(run_dir) == before
        run.proc.kill()
        assert run.finish() == -signal.SIGKILL, (point, run.stderr)
        assert set(before) <= set(_checkpoints(run_dir)), point  # nothing good was lost
    finish = Run(tiny_data, run_dir)
    assert finish.finish() == 0, finish.stderr
    assert "resuming from" in finish.stderr
    assert not _writing(run_dir)  # leftovers of the killed writes were cleaned up
    _same(
        checkpoint_values(run_dir / "checkpoints"),
        checkpoint_values(straight / "checkpoints"),
        "final state",
    )
    assert _checkpoints(run_dir) == [1, 2, 3]
    for step in _checkpoints(run_dir):  # every checkpoint left equals the straight one
        _same(
            checkpoint_values(run_dir / "checkpoints", f"ckpt-{step}"),
            checkpoint_values(straight / "checkpoints", f"ckpt-{step}"),
            f"ckpt-{step}",
        )
    assert _history(run_dir) == _history(straight)
    assert os.path.getsize(run_dir / "model" / "saved_model.pb") > 0
