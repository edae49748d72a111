"""The `enet` command as a user runs it: real subprocesses, exit codes, one-line errors."""

import pytest

from conftest import enet_env, enet_multiply_adds, error_lines, run_enet


@pytest.mark.compat
def test_help_lists_the_subcommands():
    result = run_enet("--help")
    assert result.returncode == 0, result.stderr
    for command in ("preprocess", "train", "evaluate", "predict", "demo", "launch", "model"):
        assert command in result.stdout


@pytest.mark.compat
def test_version():
    from enet_cli import __version__

    result = run_enet("--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith(f"enet-cli {__version__}")


def test_console_script_is_the_same_command():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("enet", path=str(Path(sys.executable).parent))
    assert script, "the enet console script is not installed next to this Python"
    result = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=120, env=enet_env()
    )
    assert result.returncode == 0
    assert result.stdout == run_enet("--help").stdout


def test_model_summary_prints_stages_and_totals():
    result = run_enet("model", "summary", "--classes", "12", "--size", "360x480")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for block in (
        "initial",
        "stage2_3_asymmetric5",
        "stage3_8_dilated16",
        "stage5_0_up",
        "fullconv",
    ):
        assert block in out
    assert "350,582" in out and "360x480x12" in out
    assert f"{enet_multiply_adds(360, 480, 12) / 1e9:.2f} G" in out


def test_model_summary_reads_a_config_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model:\n  num_classes: 32\ndata:\n  image_size: 720x960\n")
    result = run_enet("model", "summary", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "720x960x32" in result.stdout


@pytest.mark.compat
@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["train", "--batch-size", "-4"], 2, "--batch-size"),
        (["train", "--mode", "sideways"], 2, "--mode"),
        (["train", "--size", "361x480"], 2, "nearest valid size is 360x480"),
        (["model", "summary", "--size", "100x100"], 2, "nearest valid size is 104x104"),
        (["train", "--epochs", "many"], 2, "--epochs"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_bad_options_give_one_line_and_no_traceback(args, code, needle):
    result = run_enet(*args)
    assert result.returncode == code
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert needle in lines[0] and lines[0].startswith("error:")
    assert "Traceback" not in result.stderr
