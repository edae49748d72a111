"""`enet train` as a careless user runs it: one owner per run directory, --no-resume that
loses nothing, corrupt data, a full disk, Ctrl-C pressed twice. Each case is a real `enet`
subprocess; stderr must be our one line (enet_testing.one_error_line / last_error_line)."""

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enet_testing import (
    FIXTURES,
    SMALL_MODEL,
    ctrl_c,
    fill_disk,
    invoke,
    last_error_line,
    one_error_line,
    tree,
)
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
    result = enet("train", data, "--run-dir", tmp_path / "run", "--steps", "1", *SMALL_MODEL)
    one_error_line(result, 3, pattern)
    one_error_line(enet("evaluate", trained_run, data, "--split", "train"), 3, pattern)


def test_a_corrupt_record_whose_checksum_matches_names_its_shard(trained_run, small_data, tmp_path):
    """A shard damaged after preprocess wrote its checksum into the manifest (or by a copy
    that rewrote both): TensorFlow says only "corrupted record at N" inside its graph
    function's name; the line names the shard and carries none of that."""
    from enet_cli.data.manifest import file_sha256

    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    shard = sorted(data.glob("val-*.tfrecord"))[0]
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    manifest = data / "manifest.json"
    manifest.write_text(manifest.read_text().replace(
        json.dumps(file_sha256(small_data / shard.name)), json.dumps(file_sha256(shard))
    ))  # fmt: skip
    result = invoke("evaluate", trained_run, data, "--split", "val")
    line = last_error_line(
        result, 3, rf"cannot read shard {shard} \(corrupted record at \d+\); the data is corrupt"
    )
    assert "function_node" not in line and "Op:" not in line


# ---------------------------------------------------------------------------------------
# A full disk: one line naming the path, nothing half-written, for every command that writes
# ---------------------------------------------------------------------------------------
def test_a_full_disk_is_recognised_in_every_library_s_words():
    """The one rule (core/errors.py) that tells a full disk from other failures, whether it
    comes as an OSError (Python, PyAV, ONNX) or as TensorFlow's text."""
    import errno

    from enet_cli.core.errors import disk_full, reason

    tf_text = RuntimeError(
        "{{function_node __wrapped__SaveV2_dtypes_1079_device_/job:localhost/replica:0/task:0/"
        "device:CPU:0}} /x/ckpt-2_temp/part-00000-of-00001.data-00000-of-00001.tempstate; No "
        "space left on device [Op:SaveV2]"
    )
    assert disk_full(tf_text) and reason(tf_text) == "no space left on device"
    full = OSError(errno.ENOSPC, "No space left on device")
    assert disk_full(full) and reason(full) == "no space left on device"
    other = RuntimeError(
        "{{function_node __wrapped__IteratorGetNext}} corrupted record at 7 [Op:X] name: "
    )
    assert not disk_full(other) and reason(other) == "corrupted record at 7"
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))


def test_a_full_disk_while_exporting_predicting_or_evaluating(
    trained_run, small_data, small_disk, tmp_path
):
    clip = tmp_path / "drive.mkv"
    _write_clip(clip, trained_run)
    filler = fill_disk(small_disk, 60_000)
    for args in (
        ("export", trained_run, "--out", small_disk / "e"),
        ("export", trained_run, "--format", "checkpoint", "--out", small_disk / "e"),
    ):
        result = invoke(*args)
        last_error_line(
            result, 2, rf"cannot write --out {small_disk}/e: no space left on device; free space"
        )
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    filler.unlink()
    filler = fill_disk(small_disk, 0)  # a video's first frames fit in a few kB
    result = invoke("predict", trained_run, clip, "--out", small_disk / "p")
    last_error_line(
        result, 2, rf"cannot write {small_disk}/p/drive_overlay.mp4: no space left on device"
    )
    assert [p.name for p in small_disk.rglob("*") if "partial" in p.name] == []
    image = FIXTURES / "camvid-segnet-mini" / "test" / "0001TP_007590.png"
    result = invoke("predict", trained_run, image, "--out", small_disk / "q")
    last_error_line(
        result, 2, rf"cannot write {small_disk}/q/0001TP_007590_classes.png: no space left"
    )
    result = invoke("evaluate", trained_run, small_data, "--json", small_disk / "m.json")
    last_error_line(result, 2, rf"cannot write {small_disk}/m.json: no space left on device")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no empty --out
    filler.unlink()
    assert invoke("predict", trained_run, clip, "--out", small_disk / "p").returncode == 0
    assert sorted(p.name for p in (small_disk / "p").iterdir()) == ["drive_overlay.mp4"]


def _write_clip(path: Path, run: Path) -> None:
    """A 12-frame lossless clip of the run's own validation images (PyAV, the [video] extra)."""
    import av
    import numpy as np

    from enet_cli.artifacts.run import RunMeta

    height, width = RunMeta.of_checkpoints(run / "model").image_size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv444p"
        rng = np.random.default_rng(0)
        for _ in range(12):
            picture = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------------------
# A full disk during training: the last good checkpoint is kept and a rerun resumes
# ---------------------------------------------------------------------------------------
def test_full_disk_during_training_and_preprocess(small_data, camvid_segnet_mini, small_disk):
    run = small_disk / "run"
    args = ("train", small_data, "--run-dir", run, "--batch-size", "4", "--epochs", "1",
            "--steps", "2", "--checkpoint-every-steps", "1", "--keep-checkpoints", "1",
            *SMALL_MODEL)  # fmt: skip
    # Room for one checkpoint (~1.3 MB: weights and Adam's moments) and the logs, not two.
    filler = fill_disk(small_disk, 1_900_000)
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
    filler = fill_disk(small_disk, 200_000)
    result = enet("preprocess", camvid_segnet_mini, small_disk / "data")
    last_error_line(result, 2, r"cannot write OUTPUT_DIR .*: no space left on device; free space")
    filler.unlink()
    assert sorted(p.name for p in small_disk.iterdir()) == []


def test_a_full_disk_at_the_end_keeps_the_checkpoints_and_a_rerun_writes_the_model(
    small_data, small_disk
):
    """Room for the checkpoint (1.3 MB) but not the SavedModel (1.1 MB): training's work is
    in the checkpoint, so the line says so (exit 5, a training failure) and the same command
    writes the model once there is space. In-process: the disk, not the process, is tested."""
    run = small_disk / "run"
    args = ("train", small_data, "--run-dir", run, "--batch-size", "4", "--steps", "1")
    args += SMALL_MODEL
    filler = fill_disk(small_disk, 1_800_000)
    result = invoke(*args)
    last_error_line(
        result, 5, r"training finished, but cannot write the run's model directory .*/run/model: "
        r"no space left on device; .*the checkpoints are kept: run the same command again",
    )  # fmt: skip
    assert (run / "checkpoints" / "ckpt-1.index").is_file() and not (run / "model").exists()
    assert [p.name for p in run.iterdir() if "partial" in p.name] == []
    filler.unlink()
    again = invoke(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "model" / "saved_model.pb").is_file() and (run / "metrics.json").is_file()


# ---------------------------------------------------------------------------------------
# Training interrupted twice
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_says_what_was_kept(small_data, tmp_path):
    run = tmp_path / "run"
    result = ctrl_c(
        ["train", small_data, "--run-dir", run, "--batch-size", "4", "--epochs", "3",
         "--checkpoint-every-steps", "1", *SMALL_MODEL],
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
