"""`enet train` as a careless user runs it: one owner per run directory, --no-resume that
loses nothing, corrupt data, a full disk, Ctrl-C pressed twice. Each case is a real `enet`
subprocess; stderr must be our one line (enet_testing.one_error_line / last_error_line)."""

import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enet_testing import ctrl_c, last_error_line, one_error_line, tree
from enet_testing import enet_user as enet


def test_no_resume_validates_first_and_keeps_the_old_checkpoints(trained_run, small_data, tmp_path):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    before = tree(run / "checkpoints")
    result = enet("train", small_data, "--run-dir", run, "--no-resume", "--size", "360x480")
    one_error_line(result, 3, r"--size 360x480 differs from the preprocessed size")
    assert tree(run / "checkpoints") == before


def test_a_run_directory_has_one_owner_and_the_lock_dies_with_it(small_data, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from enet_cli.core import outputs; "
            "outputs.lock_run_dir(sys.argv[1]); print('locked', flush=True); time.sleep(600)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = enet("train", small_data, "--run-dir", run, "--steps", "1", "--batch-size", "4")
        one_error_line(result, 2, rf"run directory .*/run is in use .*\(PID {holder.pid}\)")
        assert sorted(p.name for p in run.iterdir()) == [".enet.lock"]  # nothing written
        # the OS lock is the process's: a SIGKILL frees it at once
        holder.kill()
        holder.wait()
        fd = os.open(run / ".enet.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if still held
        finally:
            os.close(fd)
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_corrupt_shard_is_named(trained_run, small_data, tmp_path):
    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    shard = sorted(data.glob("train-*.tfrecord"))[0]
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte
    shard.write_bytes(bytes(blob))
    pattern = rf"shard .*{shard.name} does not match its checksum .* re-run enet preprocess"
    result = enet("train", data, "--run-dir", tmp_path / "run", "--steps", "1")
    one_error_line(result, 3, pattern)
    one_error_line(enet("evaluate", trained_run, data, "--split", "train"), 3, pattern)


# ---------------------------------------------------------------------------------------
# A full disk: the last good checkpoint is kept and a rerun resumes
# ---------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (CI and these machines run as root), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)])
    assert done.returncode == 0, "mounting a tmpfs needs root, as CI has"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path, leave_bytes: int) -> Path:
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(free - leave_bytes, 0))
    return filler


def test_full_disk_during_training_and_preprocess(small_data, camvid_segnet_mini, small_disk):
    run = small_disk / "run"
    args = ("train", small_data, "--run-dir", run, "--batch-size", "4", "--epochs", "1",
            "--steps", "2", "--checkpoint-every-steps", "1", "--keep-checkpoints", "1")  # fmt: skip
    # Room for one checkpoint (~4.3 MB: weights and Adam's moments) and the logs, not two.
    filler = _fill(small_disk, 6_500_000)
    result = enet(*args)
    last_error_line(
        result, 5, r"cannot write a checkpoint in .*run/checkpoints .*resume from .*ckpt-1"
    )
    assert not list((run / "checkpoints").glob("*_temp*"))  # no half-written checkpoint
    assert (run / "checkpoints" / "ckpt-1.index").is_file()  # the last good one is kept
    filler.unlink()
    again = enet(*args)
    assert again.returncode == 0, again.stderr
    assert "ckpt-1 (epoch 1, step 1)" in again.stderr  # resumed, not started over

    shutil.rmtree(run)
    filler = _fill(small_disk, 200_000)
    result = enet("preprocess", camvid_segnet_mini, small_disk / "data")
    last_error_line(result, 2, r"cannot write OUTPUT_DIR .*No space left on device")
    filler.unlink()
    assert sorted(p.name for p in small_disk.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Training interrupted twice
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_says_what_was_kept(small_data, tmp_path):
    run = tmp_path / "run"
    result = ctrl_c(
        ["train", small_data, "--run-dir", run, "--batch-size", "4", "--epochs", "3",
         "--checkpoint-every-steps", "1"],
        # The state file, not ckpt-1.index: the manager records the checkpoint only after
        # its files are written, and a Ctrl-C in between rightly finds none yet.
        lambda lines: (run / "checkpoints" / "checkpoint").exists(),
        # pressed again while the step or its save runs
        lambda lines: any("SIGINT received" in x for x in lines),
    )  # fmt: skip
    last = last_error_line(result, 130, ".")
    # Whether the second press landed during the step or just after the save, the line says
    # what is kept and how to go on.
    assert re.search(
        r"stopped at once by a second Ctrl-C, nothing saved; the last checkpoint is .*ckpt-\d+"
        r"|SIGINT: stopped at step \d+ \(epoch 1\); checkpoint .*ckpt-\d+ saved",
        last,
    ), last
    assert "run the same command again" in last
