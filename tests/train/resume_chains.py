"""Shared by the two every-step tests (a file each: the two test processes run them side by
side). Stopped at every step, by SIGTERM and by SIGKILL, a run ends where a straight run ends.

A small run (3 steps: an epoch of 2 and one more, a checkpoint after every step) is run
straight once for the whole test run, then as a chain of real `enet train` processes:
- SIGTERM chain: each process is stopped as soon as it starts training, so it stops after
  exactly one step: at steps 1, 2 (an epoch's last step) and 3 (the run's last step, in the
  middle of an epoch);
  every checkpoint a stop saves must equal the straight run's checkpoint of that step,
  variable for variable (a checkpoint is a pure function of its step);
- SIGKILL chain: killed while a checkpoint is being written, during an epoch's validation,
  and right after a checkpoint, each time resumed; each process is held at its point
  (pause_probe.py) so the kill lands exactly there.
Both chains must end with the straight run's weights, optimizer state and history.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest

from enet_testing import FIXTURES, SMALL_MODEL, enet_env, made_once, preprocess_to

SIZE = "32x48"
ARGS = [
    "--steps", "3", "--batch-size", "4", "--checkpoint-every-steps", "1",
    "--keep-checkpoints", "10", "--seed", "1", "--size", SIZE, "--learning-rate", "0.002",
    *SMALL_MODEL,
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 train and 4 val images of the SegNet sample at 32x48: 2 steps per epoch."""

    def make(root: Path) -> None:
        raw = root / "raw"
        source = FIXTURES / "camvid-segnet-mini"
        for images, labels, count in (("train", "trainannot", 8), ("val", "valannot", 4)):
            (raw / images).mkdir(parents=True)
            (raw / labels).mkdir()
            for path in sorted((source / images).iterdir())[:count]:
                shutil.copy(path, raw / images / path.name)
                shutil.copy(source / labels / path.name, raw / labels / path.name)
        preprocess_to(raw, root / "data", image_size=SIZE, workers=1)

    return made_once(tmp_path_factory, "tiny", make) / "data"


PAUSE_PROBE = Path(__file__).with_name("pause_probe.py")


class Run:
    """One `enet train` process whose stderr is read as it comes; with `pause_at`, held at
    that point of the run until it is killed (pause_probe.py)."""

    def __init__(self, data: Path, run_dir: Path, pause_at: str = ""):
        env = dict(enet_env(), TF_DETERMINISTIC_OPS="1")
        self.run_dir = run_dir
        start = [str(PAUSE_PROBE), pause_at] if pause_at else ["-m", "enet_cli"]
        self.proc = subprocess.Popen(
            [sys.executable, *start, "train", str(data), "--run-dir", str(run_dir), *ARGS],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.lines: List[str] = []
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")), daemon=True
        )
        self._reader.start()

    def wait_for(self, predicate, timeout: float = 240, poll: float = 0.002) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if predicate():
                return True
            time.sleep(poll)
        return False

    def paused(self) -> bool:
        return any(line.startswith("paused: ") for line in self.lines)

    def started_training(self) -> bool:
        return any("starting from scratch" in x or "resuming from" in x for x in self.lines)

    def finish(self, timeout: float = 300) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=10)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def _checkpoints(run_dir: Path) -> List[int]:
    return sorted(int(p.name[5:-6]) for p in (run_dir / "checkpoints").glob("ckpt-*.index"))


def _writing(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*_temp*"))


def _same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for name in a:
        np.testing.assert_allclose(
            a[name], b[name], rtol=1e-6, atol=1e-7, err_msg=f"{what}: {name}"
        )


def _history(run_dir: Path) -> list:
    """Every epoch's metrics but its throughput (a timing)."""
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return [{k: v for k, v in epoch.items() if k != "images_per_sec"} for epoch in history]


@pytest.fixture(scope="session")
def straight(tiny_data, tmp_path_factory) -> Path:
    """The straight run, read-only: made once for both chains (a file each, often run side
    by side by the two test processes)."""

    def make(root: Path) -> None:
        run = Run(tiny_data, root / "run")
        assert run.finish() == 0, run.stderr
        assert _checkpoints(root / "run") == [1, 2, 3]

    return made_once(tmp_path_factory, "straight", make) / "run"


def _reads(pid: int, name: str) -> bool:
    """Whether process `pid` has a file whose name starts with `name` open."""
    try:
        links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return any(Path(link).name.startswith(name) for link in links)
