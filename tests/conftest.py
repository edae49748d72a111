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
