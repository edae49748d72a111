"""What the tests share, in one module they import (as keras-hub's test_case.py): running
`enet` in this process or as a real one, the bundled samples and the paths of the
stand-ins, small deterministic inputs, and the comparisons the suites agree on. Fixtures
(trained runs, preprocessed data) live in conftest.py, the moto server in moto_aws.py."""

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Documented-API stand-ins for what cannot exist here (the smdistributed libraries).
STAND_INS = REPO / "tests" / "stand_ins"


def enet_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "120"
    return env


def run_enet(*args: str, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed `enet` entry point in a real subprocess (as a user would): for
    what the process itself shows (signals, exit codes seen by a shell, TensorFlow's C++
    start-up lines, locks between processes, worker processes)."""
    cmd: List[str] = [sys.executable, "-m", "enet_cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=enet_env(), cwd=cwd
    )


def invoke(
    *args: Any,
    cwd=None,
    env: Optional[Dict[str, str]] = None,
    unset: Sequence[str] = (),
    timeout: float = 0,
):
    """`enet ARGS` in this process through the same `main()` a user's shell runs, with
    stdout, stderr and the exit code captured: what a command prints, exits with and
    writes, without paying a TensorFlow import per call. `env` is set and `unset` removed
    for the call only; `timeout` is run_enet's, unused here (pytest-timeout stops a hung
    test)."""
    import contextlib
    import io

    from enet_cli.cli import main
    from enet_cli.core import ui

    argv = [str(a) for a in args]
    widths = ui.stdout.width, ui.stderr.width  # rich read COLUMNS once, at import
    ui.stdout.width = ui.stderr.width = 120  # as run_enet's environment has it
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    os.environ.update({"COLUMNS": "120", **(env or {})})
    for name in unset:
        os.environ.pop(name, None)
    sys.argv = ["enet", *argv]
    code: Any = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as exit_:
                code = exit_.code
    finally:
        ui.stdout.width, ui.stderr.width = widths
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    code = 0 if code is None else code if isinstance(code, int) else 1
    return subprocess.CompletedProcess(["enet", *argv], code, out.getvalue(), err.getvalue())


def error_lines(stderr: str) -> List[str]:
    """stderr lines that are ours (TensorFlow's C++ start-up chatter filtered out)."""
    noise = ("WARNING: All log messages", "I0000", "W0000", "E0000", "To enable the following")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(noise)]


# ---------------------------------------------------------------------------------------
# The careless user's checks (tests/test_reliability.py, tests/train/test_train_safety.py)
# ---------------------------------------------------------------------------------------
NOISE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|Traceback|\s+File \")")


def user_env() -> dict:
    env = enet_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has
    return env


def enet_user(*args: Any, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "enet_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or user_env(),
    )


def ctrl_c(args, *when: Callable[[List[str]], bool], timeout: float = 240):
    """Run `enet ARGS` as from a terminal (SIGINT not ignored) and press Ctrl-C once each
    `when(stderr lines so far)` holds, in turn; the finished process, stderr as text."""
    import signal
    import threading
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "enet_cli", *map(str, args)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=user_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        for condition in when:
            while time.monotonic() < deadline and not condition(lines):
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(lines))


def tree(path: Path) -> Dict[str, str]:
    """relative path -> SHA-256 (or link target) of everything under `path`."""
    path = Path(path)
    out = {}
    for item in sorted(path.rglob("*")):
        rel = item.relative_to(path).as_posix()
        if item.is_symlink():
            out[rel] = "-> " + os.readlink(item)
        elif item.is_file():
            out[rel] = hashlib.sha256(item.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def one_error_line(result: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    """stderr is exactly one line, ours, matching `pattern`; the exit code is `code`."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]
    return lines[0]


def last_error_line(result: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    """For commands that report progress first: the error is the last line, the only error
    line, and nothing is a traceback or library noise."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert [line for line in lines if NOISE.match(line)] == [], result.stderr[-2000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], lines
    assert re.search(pattern, lines[-1]), lines[-1]
    return lines[-1]


def copy_fixture(name: str, dest: Path) -> Path:
    """A private copy of a bundled CamVid sample, so a test may damage it."""
    import shutil

    target = dest / name
    shutil.copytree(FIXTURES / name, target)
    return target


def preprocess_to(input_dir: Path, output_dir: Path, **options):
    from enet_cli.core.config import PreprocessConfig
    from enet_cli.data.preprocess import preprocess

    cfg = PreprocessConfig(input_dir=input_dir, output_dir=output_dir, **options)
    return preprocess(cfg)


def read_records(data_dir, split):
    """name -> (image uint8 HxWx3, label uint8 HxW), straight from the shards."""
    from enet_cli.core.backend import tf
    from enet_cli.data.dataset import FEATURES
    from enet_cli.data.manifest import load_manifest

    manifest = load_manifest(data_dir)
    out = {}
    for path in manifest.shard_paths(data_dir, split):
        for record in tf.data.TFRecordDataset(str(path)):
            ex = tf.io.parse_single_example(record, FEATURES)
            image = tf.io.decode_png(ex["image"]).numpy()
            label = tf.io.decode_png(ex["label"]).numpy()[..., 0]
            out[ex["name"].numpy().decode()] = (image, label)
    return out


def shrink_image(path: Path) -> None:
    """Damage: the file becomes 240x180 (labels: nearest, values kept)."""
    from PIL import Image

    Image.open(path).resize((240, 180), Image.NEAREST).save(path)


def paint_unknown_colour(path: Path, count: int) -> None:
    """Damage: the first `count` pixels get a colour no class has."""
    from PIL import Image

    rgb = np.array(Image.open(path).convert("RGB"))
    rgb.reshape(-1, 3)[:count] = (1, 2, 3)
    Image.fromarray(rgb).save(path)


def fill_disk(disk: Path, leave_bytes: int) -> Path:
    """Fill the small_disk fixture's file system up to `leave_bytes` free; delete the file
    returned to free it again."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(free - leave_bytes, 0))
    return filler


def make_video(path: Path, frames, rate, codec="ffv1") -> Path:
    """A real video file: FFV1 (lossless, RGB kept exactly) in .mkv, H.264 in .mp4, or
    VP8 (`libvpx`) in .webm, which every browser plays (PyAV: the [video] extra, imported
    here so the compatibility jobs need not have it)."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        encoder = codec if codec in ("ffv1", "libvpx") else "libx264"
        stream = container.add_stream(encoder, rate=rate)
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        stream.height, stream.width = frames[0].shape[:2]
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = k, 1 / Fraction(rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def nothing_written(parent, name="out"):
    leftovers = [p.name for p in parent.iterdir() if name in p.name]
    return leftovers == []


SMALL_SIZE = "96x128"
# A shallower ENet for tests whose claim is not the architecture itself: one block of every
# kind (regular, dilated, asymmetric, down- and upsampling, both skips), a third of the
# paper's blocks, so a third of the tracing, saving and converting every trained test pays.
# Tests of the architecture (parameters, multiply-adds, layer equivalence) build the paper's.
SMALL_BOTTLENECKS = (1, 3, 0, 1, 1)
SMALL_MODEL = ("--bottlenecks", ",".join(map(str, SMALL_BOTTLENECKS)))


def enet_multiply_adds(h: int, w: int, classes: int, bottlenecks=(4, 8, 8, 2, 1)) -> int:
    """ENet's multiply-adds at h x w, from the architecture of the reference port
    (davidtvs/PyTorch-ENet, models/enet.py): every convolution's kernel height x width x
    input channels x output channels x the pixels it is applied at (a transposed
    convolution: its input pixels); batch norm, activations, pooling, unpooling not counted.
    Bottlenecks work at input channels / 4 (internal_ratio=4 of the block's input). A
    shallower ENet keeps the first `bottlenecks[k]` bottlenecks of stage k+1."""
    n1, n2, n3, n4, n5 = bottlenecks

    def px(f):
        return (h // f) * (w // f)

    def bottleneck(c, main):  # 1x1 c -> c/4, main conv (main = its taps), 1x1 c/4 -> c
        i = c // 4
        return c * i + main * i * i + i * c

    def down(c_in, c_out):  # 2x2/2 projection, 3x3, 1x1 expansion, all at the output size
        i = c_in // 4
        return 4 * c_in * i + 9 * i * i + i * c_out

    def up_at_input(c_in, c_out):  # main 1x1, projection 1x1, 2x2/2 transposed conv
        i = c_in // 4
        return c_in * c_out + c_in * i + 4 * i * i

    total = 9 * 3 * 13 * px(2)  # initial block: 13 3x3/2 filters beside the max pool
    total += down(16, 64) * px(4) + n1 * bottleneck(64, 9) * px(4)  # stage 1
    # stages 2 and 3: the 3rd and 7th of the plan are asymmetric (5x1 + 1x5), others 3x3
    plan = [9, 9, 5 + 5, 9, 9, 9, 5 + 5, 9]
    total += down(64, 128) * px(8)
    total += sum(bottleneck(128, taps) for taps in plan[:n2] + plan[:n3]) * px(8)
    total += up_at_input(128, 64) * px(8) + 32 * 64 * px(4)  # 4.0: 1x1 32->64 at 2x size
    total += n4 * bottleneck(64, 9) * px(4)
    total += up_at_input(64, 16) * px(4) + 16 * 16 * px(2)  # 5.0
    total += n5 * bottleneck(16, 9) * px(2)
    total += 9 * 16 * classes * px(2)  # full convolution: 3x3/2 transposed
    return total


# Two graphs of the same weights (Keras and SavedModel, XLA, TFLite) differ in the last
# float bits. The unpooling puts each value where its window's maximum was; where two
# values of a window are within those bits of each other, the two graphs can choose
# different corners and the logits downstream of it differ by up to ~3e-2 (seen in CI on
# 0.4% of the logits of one 4-image batch, in a single patch of one image; 1.6% of two
# images' pixels for the 2-epoch `trained_run`, whose near-initial weights tie more often).
# Everywhere else the logits agree to 1e-4.
LOGIT_ATOL = 1e-4
PIXELS_OFF_AT_A_TIE = 0.03
CLASS_AGREEMENT_FLOOR = 0.995


def assert_same_logits(actual, expected) -> None:
    """`actual` serves `expected`'s logits: every pixel's logits within LOGIT_ATOL except a
    tie's patch (at most PIXELS_OFF_AT_A_TIE of the pixels), and their classes agree."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    pixel_off = np.abs(actual - expected).max(axis=-1) > LOGIT_ATOL
    assert pixel_off.mean() <= PIXELS_OFF_AT_A_TIE, (
        f"{pixel_off.mean():.2%} of the pixels have a logit off by more than {LOGIT_ATOL}"
        f" (max {np.abs(actual - expected).max():.3g})"
    )
    same_class = np.mean(actual.argmax(-1) == expected.argmax(-1))
    assert same_class >= CLASS_AGREEMENT_FLOOR, f"classes agree on {same_class:.2%} of the pixels"


def train_config(data_dir: Path, run_dir: Path, **train):
    """A config for quick real training on `small_data`; keyword args go to the train
    section, or to runtime / model for the keys of those."""
    from enet_cli.train.settings import load_config

    runtime = {"run_dir": run_dir}
    for key in ("resume", "mode", "engine", "partitions", "microbatches", "pipeline"):
        if key in train:
            runtime[key] = train.pop(key)
    model = {key: train.pop(key) for key in ("dropout", "stage1_dropout") if key in train}
    model["bottlenecks"] = train.pop("bottlenecks", SMALL_BOTTLENECKS)
    data = {"data_dir": data_dir, "image_size": SMALL_SIZE}
    data.update({key: train.pop(key) for key in ("augment",) if key in train})
    settings = {"batch_size": 4, "epochs": 2, "learning_rate": 2e-3, "seed": 1}
    settings.update(train)
    return load_config(
        None,
        {
            "data": data,
            "model": model,
            "train": settings,
            "runtime": runtime,
        },
    )


def fit_quietly(cfg):
    """Run the real training loop in this process (single engine)."""
    from enet_cli.artifacts.run import local_paths
    from enet_cli.train.run import run_training

    return run_training(cfg, local_paths(cfg.runtime.run_dir))


def checkpoint_values(directory: Path, name: str = "") -> dict:
    """name -> array for every variable in checkpoint `name` (default: the latest) of
    `directory`. A directory of SMP's per-partition checkpoints (`mp_rank_<k>/`, or a run's
    `checkpoints/` holding `smp/`) gives the union of the partitions' parts of one save,
    read file by file here (not through enet_cli), checking that what two parts both hold
    (the state outside the model) is the same."""
    import tensorflow as tf

    directory = Path(directory)
    if (directory / "smp").is_dir() and not tf.train.latest_checkpoint(str(directory)):
        directory = directory / "smp"
    parts = sorted(directory.glob("mp_rank_*"), key=lambda p: int(p.name.split("_")[-1]))
    if parts:
        name = name or Path(tf.train.latest_checkpoint(str(parts[0]))).name
        merged: dict = {}
        for part in parts:
            for key, value in checkpoint_values(part, name).items():
                if key in merged:
                    np.testing.assert_array_equal(merged[key], value, err_msg=key)
                merged[key] = value
        return merged
    path = str(directory / name) if name else tf.train.latest_checkpoint(str(directory))
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH") and "save_counter" not in name
    }


# ---------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """`root/name`, made by the first pytest-xdist worker that asks (under an OS lock) and
    reused by the others: a trained run costs a minute, and two workers on two cores would
    each pay it. Without xdist it is an ordinary session directory."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one per run
    target, done = root / "shared" / name, root / "shared" / f"{name}.done"
    target.parent.mkdir(exist_ok=True)
    with open(root / "shared" / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            make(target)
            done.touch()
    return target


# `enet` with TensorFlow (and both Keras) unimportable: what the process imports is the
# point, so these run as real processes.
WITHOUT_TENSORFLOW = """
import sys

for name in ("tensorflow", "tf_keras", "keras"):  # None: every import of it fails
    sys.modules[name] = None
from enet_cli.cli import main

main(sys.argv[1:])
"""


def enet_without_tensorflow(*args, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, *map(str, args)],
        input=stdin, capture_output=True, timeout=120, env=enet_env(),
    )  # fmt: skip
