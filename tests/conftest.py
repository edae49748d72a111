"""Fixtures shared by the suites (preprocessed samples, trained runs) and the guard that
keeps tests out of the working tree. Helpers live in enet_testing.py: tests import them
from there, never from this file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The test processes import onnxruntime (test_onnx.py, at collection): no usage reports to
# Microsoft from them either (see serving/onnx_model.py); test_onnx checks enet's own opt-out
# in processes without this.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from enet_testing import (
    FIXTURES,
    REPO,
    SMALL_BOTTLENECKS,
    SMALL_MODEL,
    SMALL_SIZE,
    copy_fixture,
    fit_quietly,
    made_once,
    preprocess_to,
    run_enet,
    train_config,
)

# The laptop-side extras ([video], [onnx]) and the notebook runner install only on Python
# >= 3.10 (pyproject's dev extra): the compatibility jobs, on the containers' Python 3.8
# and 3.9, run none of these modules' tests (none is marked compat) and could not import
# them to deselect them.
LAPTOP_ONLY = ["test_video.py", "test_onnx.py", "test_notebooks.py", "test_quickstart.py"]
collect_ignore = LAPTOP_ONLY if sys.version_info < (3, 10) else []


@pytest.fixture
def enet():
    return run_enet


@pytest.fixture
def camvid_segnet_mini(tmp_path) -> Path:
    return copy_fixture("camvid-segnet-mini", tmp_path)


@pytest.fixture
def camvid_kaggle_mini(tmp_path) -> Path:
    return copy_fixture("camvid-kaggle-mini", tmp_path)


@pytest.fixture(scope="session", autouse=True)
def _caches_in_the_runs_temporary_directory(tmp_path_factory):
    """What enet caches (compiled kernels, the job's wheel: core/cache.py) goes into this
    run's temporary directory, shared by its workers and the processes they start, never
    into the user's ~/.cache."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    cache = root / "shared" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield cache
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(scope="session")
def segnet_data(tmp_path_factory) -> Path:
    """The SegNet sample preprocessed once at its native 360x480 (read-only for tests)."""

    def make(root: Path) -> None:
        preprocess_to(FIXTURES / "camvid-segnet-mini", root / "data", workers=2, shards=4)

    return made_once(tmp_path_factory, "segnet", make) / "data"


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """The SegNet sample preprocessed at 96x128: real images, fast training steps."""

    def make(root: Path) -> None:
        preprocess_to(
            FIXTURES / "camvid-segnet-mini", root / "data", image_size=SMALL_SIZE, workers=1
        )

    return made_once(tmp_path_factory, "small", make) / "data"


@pytest.fixture(scope="session")
def single_step_run(small_data, tmp_path_factory) -> Path:
    """One single-mode step at batch 4 (seed 3, no dropout): the reference the distributed
    engines' first steps are compared with. Read-only: copy it to continue it."""

    def make(root: Path) -> None:
        result = run_enet(
            "train", str(small_data), "--batch-size", "4", "--steps", "1", "--seed", "3",
            "--dropout", "0", "--stage1-dropout", "0", "--run-dir", str(root / "run"), *SMALL_MODEL,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]

    return made_once(tmp_path_factory, "single-step", make) / "run"


@pytest.fixture(scope="session")
def trained_run(small_data, tmp_path_factory) -> Path:
    """A short real training run (SavedModel + checkpoints) for evaluate/predict tests,
    with random flips (so its weights are those the export tests' tolerances were set on).
    Read-only: copy it to change it."""

    def make(root: Path) -> None:
        fit_quietly(train_config(small_data, root / "run", epochs=2, augment=True))

    return made_once(tmp_path_factory, "trained", make) / "run"


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (CI and these machines run as root), unmounted afterwards: a disk that
    fills up (enet_testing.fill_disk) for every writing command's full-disk case."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)])
    assert done.returncode == 0, "mounting a tmpfs needs root, as CI has"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


# Guard: tests write only into temporary directories, never into the working tree
_TOOL_DEBRIS = ("__pycache__/", ".pytest_cache/", ".egg-info/", ".ruff_cache/")


def _working_tree_files() -> set:
    """Untracked and ignored files of the repository (git's view), minus tool caches."""
    try:
        listed = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return set()
    if listed.returncode != 0:  # not a git checkout: nothing to compare
        return set()
    paths = {line[3:] for line in listed.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(d in p for d in _TOOL_DEBRIS)}


# Each test file's measured seconds (benchmarks/test_suite.py --write keeps it current).
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_configure(config):
    # pytest-xdist 3.7+ hands out files with the most tests first, whatever they cost, which
    # leaves the one-test multi-process files for the end; keep the order below instead
    # (3.6, the last on Python 3.8, keeps the collection order anyway).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The longest test files first (as measured), so that the two xdist processes end
    with short ones and finish together: with `--dist loadfile` a 40 s file handed out
    last keeps one process busy while the other waits. A file not measured yet counts as
    the longest. Within a file the order is the file's own."""
    try:
        seconds = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return
    unmeasured = max(seconds.values(), default=0.0) + 1.0
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], unmeasured))


def pytest_sessionstart(session):
    config = session.config
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        config._enet_tree_before = _working_tree_files()
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        _two_logical_cpus()  # a process that runs tests (xdist's controller runs none)


def _two_logical_cpus() -> None:
    """Split this test process's CPU into two logical devices before its TensorFlow
    runtime starts (it cannot be done later): what `--mode mp`'s pipeline and a two-replica
    MirroredStrategy need, so their tests train in this process instead of paying a fresh
    one's TensorFlow import each. Ops without a device still run on /CPU:0, as in a user's
    process: the other tests see no difference. A MirroredStrategy over both devices still
    needs a process of its own: a second one in a process reuses the first one's
    collective instance keys and TensorFlow aborts its all-reduce (shape mismatch)."""
    from enet_cli.core.backend import tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(2)]
    )


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_enet_tree_before", None)
    if before is None:
        return
    new = sorted(_working_tree_files() - before)
    if new:
        session.config._enet_tree_written = new
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    new = getattr(config, "_enet_tree_written", None)
    if new:
        terminalreporter.write_line(
            f"FAILED working-tree guard: tests wrote {len(new)} file(s) into the repository "
            f"(write under tmp_path instead): {', '.join(new[:10])}",
            red=True,
        )


@pytest.fixture(scope="session")
def untrained_exports(small_data, tmp_path_factory) -> dict:
    """An untrained ENet (seeded random weights: frame order and runtimes need no accuracy)
    written as a SavedModel with its enet.json, and exported to TFLite and ONNX as `enet
    export` does: {"saved_model" | "tflite" | "onnx": directory}. Read-only."""

    def make(root: Path) -> None:
        import tensorflow as tf

        from enet_cli.artifacts.run import RunMeta
        from enet_cli.core.config import ModelConfig
        from enet_cli.core.formats import ModelFormat
        from enet_cli.data.manifest import load_manifest
        from enet_cli.model import build_enet
        from enet_cli.serving.export import ExportRequest, export_model, write_saved_model

        manifest = load_manifest(small_data)
        cfg = ModelConfig(num_classes=manifest.num_classes, bottlenecks=SMALL_BOTTLENECKS)
        meta = RunMeta.from_manifest(cfg, manifest)
        tf.random.set_seed(7)
        write_saved_model(build_enet(meta.model, None), meta, root / "saved_model")
        for fmt in (ModelFormat.tflite, ModelFormat.onnx):
            request = ExportRequest(source=root / "saved_model", out=root / fmt.value, format=fmt)
            export_model(request)

    root = made_once(tmp_path_factory, "untrained", make)
    return {name: root / name for name in ("saved_model", "tflite", "onnx")}


# Debian's Chromium (.ci/run installs it); ENET_CHROMIUM names another binary.
CHROMIUM = os.environ.get("ENET_CHROMIUM", "/usr/bin/chromium")
# What this machine's closed network needs: no background connections, no sandbox (root).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven by Playwright, for the pages enet report writes and enet
    serve serves. Missing is a failure that says how to install it, not a skip."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} is missing: apt-get install chromium (or set ENET_CHROMIUM)"
    )
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield found
        found.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    """Where a page test saves its screenshot: the test's directory, or the docs' images
    when ENET_SCREENSHOTS names that folder (how docs/images/*_page.png are made)."""
    return Path(os.environ.get("ENET_SCREENSHOTS") or tmp_path)
