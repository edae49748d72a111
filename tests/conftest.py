"""Shared test helpers: run the real `enet` command, and small deterministic inputs."""

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def enet_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "120"
    return env


def run_enet(*args: str, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed `enet` entry point in a real subprocess (as a user would)."""
    cmd: List[str] = [sys.executable, "-m", "enet_cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=enet_env(), cwd=cwd
    )


def error_lines(stderr: str) -> List[str]:
    """stderr lines that are ours (TensorFlow's C++ start-up chatter filtered out)."""
    noise = ("WARNING: All log messages", "I0000", "W0000", "E0000", "To enable the following")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(noise)]


@pytest.fixture
def enet():
    return run_enet


def copy_fixture(name: str, dest: Path) -> Path:
    """A private copy of a bundled CamVid sample, so a test may damage it."""
    import shutil

    target = dest / name
    shutil.copytree(FIXTURES / name, target)
    return target


@pytest.fixture
def camvid_segnet_mini(tmp_path) -> Path:
    return copy_fixture("camvid-segnet-mini", tmp_path)


@pytest.fixture
def camvid_kaggle_mini(tmp_path) -> Path:
    return copy_fixture("camvid-kaggle-mini", tmp_path)


def preprocess_to(input_dir: Path, output_dir: Path, **options):
    from enet_cli.config import PreprocessConfig
    from enet_cli.data.preprocess import preprocess

    cfg = PreprocessConfig(input_dir=input_dir, output_dir=output_dir, **options)
    return preprocess(cfg)


@pytest.fixture(scope="session")
def segnet_data(tmp_path_factory) -> Path:
    """The SegNet sample preprocessed once at its native 360x480 (read-only for tests)."""
    out = tmp_path_factory.mktemp("segnet") / "data"
    preprocess_to(FIXTURES / "camvid-segnet-mini", out, workers=2, shards=4)
    return out
