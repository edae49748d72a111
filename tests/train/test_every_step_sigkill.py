"""SIGKILL while writing, validating and between steps: see resume_chains.py."""

import os
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

from conftest import checkpoint_values


@pytest.mark.slow
def test_sigkill_while_writing_validating_or_between_steps_resumes_exactly(
    tiny_data, straight, tmp_path
):
    run_dir = tmp_path / "run"

    def newer(before) -> bool:
        return max(_checkpoints(run_dir), default=0) > max(before, default=0)

    def trigger(what: str, pid: int, before) -> bool:
        if what == "while a checkpoint is written":
            return _writing(run_dir) or newer(before)
        if what == "during validation":  # it holds the val shard open while it reads it
            return _reads(pid, "val-") or newer(before)
        return newer(before)

    for what in ("while a checkpoint is written", "during validation", "after a checkpoint"):
        before = _checkpoints(run_dir) if (run_dir / "checkpoints").exists() else []
        run = Run(tiny_data, run_dir)
        assert run.wait_for(run.started_training), run.stderr
        pid = run.proc.pid
        assert run.wait_for(lambda: trigger(what, pid, before)), (what, run.stderr)  # noqa: B023
        run.proc.kill()
        assert run.finish() == -signal.SIGKILL, (what, run.stderr)
        assert set(before) <= set(_checkpoints(run_dir)), what  # nothing good was lost
    finish = Run(tiny_data, run_dir)
    assert finish.finish() == 0, finish.stderr
    assert "resuming from" in finish.stderr
    assert not _writing(run_dir)  # leftovers of the killed writes were cleaned up
    _same(
        checkpoint_values(run_dir / "checkpoints"),
        checkpoint_values(straight / "checkpoints"),
        "final state",
    )
    for step in _checkpoints(run_dir):  # every checkpoint left equals the straight one
        _same(
            checkpoint_values(run_dir / "checkpoints", f"ckpt-{step}"),
            checkpoint_values(straight / "checkpoints", f"ckpt-{step}"),
            f"ckpt-{step}",
        )
    assert _history(run_dir) == _history(straight)
    assert os.path.getsize(run_dir / "model" / "saved_model.pb") > 0
