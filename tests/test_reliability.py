"""Nothing lost, nothing leaked, no traceback: the careless user's table.

Each case runs the real `enet` command in a subprocess, in the environment a user has (no
TF_CPP_MIN_LOG_LEVEL), and checks the exit code, that stderr is our one `error:` line and
nothing else (no traceback, no TensorFlow start-up lines), and what is on disk afterwards:
every input tree hashed before and after.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import List

import pytest

from enet_testing import (
    FIXTURES,
    SMALL_MODEL,
    SMALL_SIZE,
    enet_env,
    invoke,
    last_error_line,
    one_error_line,
    tree,
    user_env,
)
from enet_testing import enet_user as enet


@pytest.fixture
def raw(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURES / "camvid-segnet-mini", tmp_path / "CamVid"))


# ---------------------------------------------------------------------------------------
# Data loss: preprocess and export never replace what they did not make
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layout, output, message",
    [
        ("C", "C", r"OUTPUT_DIR .*/C is the input"),
        ("proj/CamVid", "proj", r"OUTPUT_DIR .*/proj contains the input"),
        ("sub", "sub/train", r"OUTPUT_DIR .*/sub/train is inside the input"),
    ],
)
def test_preprocess_never_writes_over_its_input(tmp_path, layout, output, message):
    source = tmp_path / layout
    shutil.copytree(FIXTURES / "camvid-segnet-mini", source)
    (tmp_path / "proj").mkdir(exist_ok=True)
    (tmp_path / "proj" / "notes.txt").write_text("my notes")
    before = tree(tmp_path)
    result = enet("preprocess", source, tmp_path / output, "--force")
    one_error_line(result, 2, message)
    assert tree(tmp_path) == before


def test_preprocess_force_replaces_only_its_own_output(raw, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("three years")
    result = enet("preprocess", raw, precious, "--force")
    one_error_line(result, 2, "is not the output of enet preprocess; it is never replaced")
    assert (precious / "thesis.txt").read_text() == "three years"

    out = tmp_path / "data"
    assert enet("preprocess", raw, out, "--size", "32x48").returncode == 0
    one_error_line(enet("preprocess", raw, out), 2, "already exists; use --force")
    (out / "notes.txt").write_text("added by hand")  # an output someone wrote into
    result = enet("preprocess", raw, out, "--force")
    one_error_line(result, 2, r"holds files enet preprocess did not write \(notes.txt\)")
    (out / "notes.txt").unlink()
    first = json.loads((out / "manifest.json").read_text())
    assert enet("preprocess", raw, out, "--force").returncode == 0
    assert json.loads((out / "manifest.json").read_text())["image_size"] != first["image_size"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CamVid", "data", "precious"]


def test_export_never_replaces_the_run_or_other_files(trained_run, small_data, tmp_path):
    """The first refusal through a real `enet` (what a terminal shows: our line and no
    library's around it); the rest in-process, where the rule is what is tested."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    before = tree(run)
    one_error_line(enet("export", run, "--out", run), 2, r"--out .*/run is the input")
    one_error_line(invoke("export", run, "--out", run / "model2"), 2, "is inside the input")
    result = invoke("export", run, "--data", small_data, "--out", small_data / "x")
    one_error_line(result, 2, "is inside the input")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("three years")
    result = invoke("export", run, "--out", precious, "--force")
    one_error_line(result, 2, "is not the output of enet export")
    assert tree(run) == before and (precious / "thesis.txt").exists()

    out = tmp_path / "exported"
    shutil.copytree(run / "model", out)  # the run's SavedModel: written by the same export
    one_error_line(invoke("export", run, "--out", out), 2, "already exists; use --force")
    result = invoke("export", run, "--out", out, "--format", "tflite", "--force")
    assert result.returncode == 0, result.stderr
    assert (out / "model.tflite").is_file() and not (out / "saved_model.pb").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_no_output_file_replaces_an_input(trained_run, small_data, tmp_path):
    """Files a user names (--json, --confusion-csv, --summary) and predict's --out are held to
    the rule directories are: never one of the command's inputs, nor inside one (a dataset's
    manifest or shard, a model's enet.json). Refused in one line before any model loads, and
    the disk is as it was. In-process: the refusal, not the process, is what is tested."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    image = FIXTURES / "camvid-segnet-mini" / "test" / "0001TP_007590.png"
    shard = next(data.glob("val-*.tfrecord"))
    cases = [
        (("evaluate", run, data, "--split", "val", "--json", data / "manifest.json"),
         rf"--json {data}/manifest.json is inside the input {data}; write it outside"),
        (("evaluate", run, data, "--split", "val", "--confusion-csv", shard),
         rf"--confusion-csv {shard} is inside the input {data}"),
        (("evaluate", run, data, "--split", "val", "--json", run / "model" / "enet.json"),
         rf"--json {run}/model/enet.json is inside the input {run}"),
        (("evaluate", run / "model", data, "--json", run / "model" / "enet.json"),
         rf"--json {run}/model/enet.json is inside the input {run}/model"),
        (("predict", run, image, "--out", tmp_path / "p", "--summary", run / "model" / "enet.json"),
         rf"--summary {run}/model/enet.json is inside the input {run}"),
        (("predict", run, image, "--out", run / "model"), rf"--out {run}/model is inside the"),
        (("benchmark", run, "--json", run / "metrics.json"), r"--json .*/metrics.json is inside"),
        (("train", data, "--run-dir", data, "--steps", "1"), rf"--run-dir {data} is the input"),
        (("train", data, "--run-dir", data / "r", "--steps", "1"), r"--run-dir .* is inside the"),
        (("train", data, "--run-dir", tmp_path, "--steps", "1"), r"--run-dir .* contains the"),
    ]  # fmt: skip
    before = tree(tmp_path)
    for args, message in cases:
        one_error_line(invoke(*args), 2, message)
    assert tree(tmp_path) == before


def test_a_file_model_keeps_its_metadata(tmp_path):
    """A TFLite or ONNX file is the model together with the enet.json and marker its export
    wrote beside it: outputs may not replace those either (no TensorFlow needed to say so)."""
    from enet_cli.artifacts.model_ref import model_inputs
    from enet_cli.core import outputs
    from enet_cli.core.errors import OutputError

    export = tmp_path / "e"
    export.mkdir()
    (export / "model.tflite").write_bytes(b"x")
    kept = model_inputs(export / "model.tflite")
    for name in ("enet.json", "model.tflite", outputs.MARKER):
        with pytest.raises(OutputError, match=f"--json {export}/{name} is the input"):
            outputs.check_file_target(export / name, "--json", kept)
    outputs.check_file_target(export / "metrics.json", "--json", kept)  # beside it: allowed
    assert model_inputs("my-training-job-7") == []  # a job's model: a download, not the user's


def test_force_replaces_only_what_enet_recorded_writing(tmp_path):
    """`--force` (jobs download, export, preprocess) decides ownership from the marker the
    command wrote, never from names: a user's `test_eval.json` or `2/README` in an output
    that looks like a download stays, and an output whose marker lists nothing is refused."""
    from enet_cli.core import outputs
    from enet_cli.core.errors import OutputError

    out = tmp_path / "download"
    with outputs.claim(out, "download", True) as staged:
        (staged.path / "1").mkdir()
        (staged.path / "1" / "saved_model.pb").write_bytes(b"pb")
        (staged.path / "metrics.json").write_text("{}")
        staged.publish()
    assert outputs.recorded_files(out) == ["1", "metrics.json"]
    (out / "test_eval.json").write_text("mine")  # named like ours, written by the user
    (out / "2").mkdir()
    (out / "2" / "README").write_text("mine too")
    before = tree(out)
    foreign = r"holds files enet jobs download did not write \(2, test_eval.json\)"
    with pytest.raises(OutputError, match=foreign), outputs.claim(out, "download", True):
        pass
    assert tree(out) == before
    (out / "test_eval.json").unlink()
    shutil.rmtree(out / "2")
    with outputs.claim(out, "download", True) as staged:  # only its own files: replaced
        (staged.path / "1").mkdir()
        staged.publish()
    assert sorted(p.name for p in out.iterdir()) == [outputs.MARKER, "1"]

    older = tmp_path / "older"
    older.mkdir()
    (older / "saved_model.pb").write_bytes(b"pb")
    (older / outputs.MARKER).write_text('{"kind": "export", "created_by": "enet-cli 0.9"}')
    with pytest.raises(OutputError, match="written by an older enet export that did not record"):
        outputs.check_replaceable(older, "export", True, "--out")


def test_a_refused_run_leaves_the_disk_as_it_found_it(small_data, tmp_path):
    """Refusals come before the run directory is touched: no lock file, no empty
    checkpoints/ or logs/, no run directory created; an existing one stays as it was."""
    new = tmp_path / "runs" / "new"
    result = invoke("train", small_data, "--run-dir", new, "--batch-size", "100", "--steps", "1")
    one_error_line(result, 3, r"--batch-size 100 is larger than the train split")
    assert list(tmp_path.iterdir()) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    result = invoke("train", small_data, "--run-dir", mine, "--batch-size", "100", "--steps", "1")
    one_error_line(result, 3, r"--batch-size 100 is larger than the train split")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_signal_whose_interrupt_was_lost_still_stops_the_publish(tmp_path):
    """A SIGTERM's KeyboardInterrupt can be lost inside a library (once in CI: `enet export
    --force`, killed while TensorFlow saved, published the new export and then said it was
    removed). The signal is remembered, and publishing an output checks it first: the old
    output stays and the staged one goes, as the command's one line says."""
    from enet_cli.core import outputs
    from enet_cli.core.ui import Interrupts

    out = tmp_path / "e"
    with outputs.claim(out, "export") as staged:
        (staged.path / "old.txt").write_text("old")
        staged.publish()
    before = tree(out)
    interrupts = Interrupts()
    claimed = outputs.claim(out, "export", True)
    with interrupts.raising(), pytest.raises(KeyboardInterrupt), claimed as staged:
        (staged.path / "new.txt").write_text("new")
        interrupts.signal_name = "SIGTERM"  # the handler ran; its exception was lost
        staged.publish()
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    # Outside a command's raising() block nothing is remembered: publishing goes on.
    with outputs.claim(out, "export", True) as staged:
        (staged.path / "new.txt").write_text("new")
        staged.publish()
    assert (out / "new.txt").is_file()


def test_sigterm_while_exporting_keeps_the_earlier_export_and_leaves_nothing_else(
    trained_run, tmp_path
):
    """`kill` (SIGTERM) of `enet export --force` while it writes: the staged export and its
    lock go, the earlier export stays as it was, and the process says so in one line."""
    out = tmp_path / "e"
    assert invoke("export", trained_run, "--format", "checkpoint", "--out", out).returncode == 0
    before = tree(out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "enet_cli", "export", str(trained_run), "--out", str(out),
         "--force"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=user_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list(tmp_path.glob(".e.partial-*")):
            time.sleep(0.05)
        assert list(tmp_path.glob(".e.partial-*")), "the export never started writing"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    last_error_line(result, 130, r"stopped by SIGTERM; what it was writing was removed")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_odd_values_are_one_line_before_any_work(small_data, raw, tmp_path):
    """Values that used to end in tracebacks deep inside (or in a SageMaker job): a settings
    file that is not UTF-8, a seed NumPy cannot take, a path longer than the file system
    takes, more local workers than cores. In-process: each is refused before TensorFlow or
    AWS is touched, and nothing is written."""
    from enet_cli.core.processes import usable_cores

    latin = tmp_path / "latin.yaml"
    latin.write_bytes("train:\n  epochs: 3  # f\xfcr dich\n".encode("latin-1"))
    long_name = tmp_path / ("x" * 300)
    cores = usable_cores()
    no_aws = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": ""}
    cases = [
        (("train", small_data, "--config", latin), 2,
         rf"config file {latin} is not UTF-8 text \(byte 23\); save it as UTF-8"),
        (("tune", small_data, "--ranges", latin, "--s3-prefix", "s3://b/p", "--dry-run"), 2,
         rf"--ranges {latin} is not UTF-8 text"),
        (("train", small_data, "--seed", "4294967296"), 2,
         r"invalid value for --seed: Input should be less than or equal to 2147483647"),
        (("launch", small_data, "--seed", "4294967296", "--s3-prefix", "s3://b/p",
          "--dry-run"), 2, r"--seed: Input should be less than or equal to 2147483647"),
        (("preprocess", raw, long_name), 2,
         r"OUTPUT_DIR: the name x{24}\.\.\. is 300 bytes, more than this file system takes"),
        (("train", small_data, "--run-dir", long_name), 2, r"--run-dir: the name x{24}"),
        (("evaluate", small_data, small_data, "--json", f"{long_name}.json"), 2,
         r"--json: the name x{24}\.\.\. is 305 bytes"),
        (("train", small_data, "--mode", "ddp", "--local-workers", str(cores + 1)), 2,
         rf"--local-workers: {cores + 1} workers on {cores} CPU core\(s\); use {cores} or fewer"),
    ]  # fmt: skip
    before = tree(tmp_path)
    for args, code, message in cases:
        one_error_line(invoke(*args, env=no_aws), code, message)
    assert tree(tmp_path) == before


def test_preprocess_workers_above_the_cores_are_lowered_with_a_note(raw, tmp_path):
    from enet_cli.core.processes import usable_cores

    cores = usable_cores()
    result = invoke("preprocess", raw, tmp_path / "d", "--size", "48x64", "--workers", "64")
    assert result.returncode == 0, result.stderr[-2000:]
    note = f"--workers 64: this machine has {cores} CPU core(s); using {cores}"
    assert note in result.stderr


# ---------------------------------------------------------------------------------------
# One owner per output
# ---------------------------------------------------------------------------------------
def test_an_output_being_built_has_one_owner(raw, tmp_path):
    from enet_cli.core import outputs

    out = tmp_path / "data"
    lock = outputs.Lock(tmp_path / ".data.lock", "OUTPUT_DIR").acquire()  # another writer
    try:
        one_error_line(enet("preprocess", raw, out), 2, rf"is in use .*\(PID {os.getpid()}\)")
        assert not out.exists()
    finally:
        lock.release()


def test_sigkill_of_preprocess_leaves_no_process_and_the_next_run_cleans_up(raw, tmp_path):
    fifo = raw / "train" / "zzzz.png"  # the pool blocks on it: the kill lands mid-run
    os.mkfifo(fifo)
    shutil.copy(raw / "trainannot" / "0001TP_007530.png", raw / "trainannot" / "zzzz.png")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "enet_cli", "preprocess", str(raw), str(work / "out")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=user_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_children(proc.pid)) < 3:
            time.sleep(0.1)
        time.sleep(2)  # the workers are busy (one is stuck on the FIFO)
        children = _children(proc.pid)
        assert len(children) >= 3, children  # the resource tracker and two workers
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)], "orphans left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [p.name for p in work.iterdir() if ".partial-" in p.name]  # SIGKILL: no clean-up
    fifo.unlink()
    (raw / "trainannot" / "zzzz.png").unlink()
    result = enet("preprocess", raw, work / "out")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # the stale partial is gone


def _children(pid: int) -> List[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---------------------------------------------------------------------------------------
# Bad input and broken outputs: one line each
# ---------------------------------------------------------------------------------------
def _bomb_png(path: Path, width: int = 30000, height: int = 30000) -> None:
    """A valid PNG header claiming a huge image (a few hundred bytes on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_preprocess_refuses_bad_images_in_one_line_with_workers(raw, tmp_path):
    from PIL import Image

    victim = sorted((raw / "train").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:2000])  # truncated
    result = enet("preprocess", raw, tmp_path / "a", "--workers", "2")
    last_error_line(result, 3, rf"cannot read image .*{victim.name}: image file is truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CamVid"]

    shutil.copy(FIXTURES / "camvid-segnet-mini" / "train" / victim.name, victim)
    _bomb_png(victim)
    _bomb_png(raw / "trainannot" / victim.name)
    result = enet("preprocess", raw, tmp_path / "b", "--workers", "2")
    last_error_line(result, 3, rf"{victim.name} is too large to decode safely")

    shutil.copy(FIXTURES / "camvid-segnet-mini" / "train" / victim.name, victim)
    label = raw / "trainannot" / victim.name
    shutil.copy(FIXTURES / "camvid-segnet-mini" / "trainannot" / victim.name, label)
    Image.open(label).save(label, format="JPEG", quality=95)  # still named .png
    result = enet("preprocess", raw, tmp_path / "c", "--workers", "1")
    last_error_line(result, 3, rf"label .*{victim.name} is stored as JPEG, a lossy format")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CamVid"]


def test_unwritable_and_wrong_kind_outputs(trained_run, small_data, raw, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    image = raw / "test" / "0001TP_007590.png"
    cases = [
        (("preprocess", raw, a_file / "out"), 2, r"cannot create .*a-file"),
        (("preprocess", raw, a_file), 2, r"OUTPUT_DIR .*a-file exists and is not a directory"),
        (("evaluate", trained_run, small_data, "--json", tmp_path), 2, r"--json .* is a directory"),
        (
            ("evaluate", trained_run, small_data, "--json", a_file / "m.json"),
            2,
            r"--json .*a-file is a file, not a directory",
        ),
        (("predict", trained_run, image, "--out", a_file), 2, r"--out .*a-file is a file"),
        (("predict", trained_run, image, "--out", a_file / "x"), 2, r"a-file is a file"),
        (
            ("train", small_data, "--run-dir", a_file, "--steps", "1"),
            2,
            r"--run-dir .*a-file exists and is not a directory",
        ),
        (("evaluate", trained_run, a_file), 3, r"data directory .*a-file is a file"),
    ]
    for index, (args, code, message) in enumerate(cases):
        # evaluate imports TensorFlow before it refuses: one real process shows that its
        # start-up lines stay out of stderr; the rule itself is checked in-process.
        one_error_line((enet if index == 2 else invoke)(*args), code, message)
    assert a_file.read_text() == "x"


def test_evaluate_splits_and_damaged_models(trained_run, small_data, raw, tmp_path):
    no_test = tmp_path / "no-test"
    for name in ("test", "testannot"):
        shutil.rmtree(raw / name)
    assert invoke("preprocess", raw, no_test, "--size", SMALL_SIZE).returncode == 0
    one_error_line(
        enet("evaluate", trained_run, no_test),
        3,
        r"has no 'test' split \(it has train, val\); choose one of those with --split",
    )
    result = invoke("evaluate", trained_run, small_data, "--split", "bogus")
    one_error_line(result, 3, "no 'bogus'")

    model = tmp_path / "model"
    image = FIXTURES / "camvid-segnet-mini" / "test" / "0001TP_007590.png"

    def damaged(how) -> Path:
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(trained_run / "model", model)
        how(model)
        return model

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])

    cases = [
        (lambda m: shutil.rmtree(m / "variables"), ("evaluate", model, small_data)),
        (lambda m: truncate(next((m / "variables").glob("*.data*"))), ("predict", model, image)),
        (lambda m: truncate(m / "saved_model.pb"), ("export", model, "--out", tmp_path / "e")),
    ]
    for how, args in cases:
        damaged(how)
        last_error_line(enet(*args), 3, r"cannot load the model in .*model: it is damaged")
    checkpoints = Path(shutil.copytree(trained_run / "checkpoints", tmp_path / "ckpt"))
    import tensorflow as tf

    latest = Path(tf.train.latest_checkpoint(str(checkpoints))).name
    truncate(next(checkpoints.glob(f"{latest}.data*")))
    last_error_line(enet("evaluate", checkpoints, small_data), 3, "cannot load the model")
    assert not (tmp_path / "e").exists()


def test_predict_refuses_inputs_that_would_overwrite_each_other(trained_run, tmp_path):
    image = FIXTURES / "camvid-segnet-mini" / "test" / "0001TP_007590.png"
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(image, tmp_path / sub / "x.png")
    result = enet("predict", trained_run, tmp_path / "a", tmp_path / "b", "--out", tmp_path / "o")
    one_error_line(result, 3, r"inputs .*a/x.png and .*b/x.png would both be written as x_")
    shutil.copy(image, tmp_path / "a" / "x.jpg")
    result = enet("predict", trained_run, tmp_path / "a", "--out", tmp_path / "o")
    one_error_line(result, 3, "would both be written as x_")
    _bomb_png(tmp_path / "b" / "x.png")
    result = enet("predict", trained_run, tmp_path / "b", "--out", tmp_path / "o")
    last_error_line(result, 3, r"x.png is too large to decode safely")
    assert not (tmp_path / "o" / "x_classes.png").exists()


MODULES_PROBE = Path(__file__).with_name("modules_probe.py")


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["train", "{missing}", "--run-dir", "{tmp}/run"], r"data directory .*missing"),
        (["train", "{data}", "--run-dir", "{tmp}/run", "--size", "360x480"], r"--size 360x480"),
        (["train", "{data}", "--run-dir", "{tmp}/run", "--batch-size", "99"], r"--batch-size 99"),
        (  # resuming a run of another depth (the shared run is a shallower ENet)
            ["train", "{data}", "--run-dir", "{tmp}/old"],
            rf"checkpoints in .*old/checkpoints are of an ENet with --bottlenecks "
            rf"{SMALL_MODEL[1]}, not 4,8,8,2,1; give --bottlenecks {SMALL_MODEL[1]} to resume",
        ),
        (["predict", "{run}", "{tmp}/missing.png"], r"missing\.png"),
        (["evaluate", "{run}", "{missing}"], r"data directory .*missing does not exist"),
        (["export", "{run}", "--out", "{run}/model/copy"], r"--out .* inside the input"),
    ],
)
def test_a_mistake_that_needs_no_model_is_reported_before_tensorflow_loads(
    small_data, trained_run, tmp_path, args, pattern
):
    """Seconds, not the tens of seconds TensorFlow and the model take to load: the process
    never imports TensorFlow (its modules, recorded by tests/modules_probe.py)."""
    values = {"missing": tmp_path / "missing", "data": small_data, "run": trained_run}
    shutil.copytree(trained_run / "checkpoints", tmp_path / "old" / "checkpoints")
    argv = [a.format(tmp=tmp_path, **values) for a in args]
    loaded = tmp_path / "modules.txt"
    result = subprocess.run(
        [sys.executable, str(MODULES_PROBE), str(loaded), *argv],
        capture_output=True, text=True, timeout=120, env=enet_env(),
    )  # fmt: skip
    one_error_line(result, result.returncode, pattern)
    assert result.returncode != 0
    assert "tensorflow" not in loaded.read_text().split(), argv
