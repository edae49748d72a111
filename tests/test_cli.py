"""The `enet` command as a user runs it: real subprocesses, exit codes, one-line errors."""

import json
import re

import pytest

from enet_testing import enet_env, enet_multiply_adds, error_lines, invoke, run_enet


@pytest.mark.compat
def test_help_lists_the_subcommands():
    result = invoke("--help")
    assert result.returncode == 0, result.stderr
    for command in ("preprocess", "train", "evaluate", "predict", "demo", "launch", "model"):
        assert command in result.stdout


def test_a_flag_is_shown_as_a_flag_in_every_commands_help():
    """No `<bool>` type beside our flags (--force, --augment/--no-augment, --yes, --version
    ...): it reads as if they took a value. Typer's own --help row keeps its rendering."""
    import typer

    from enet_cli.cli import app

    def paths(group, path=()):
        for name, command in getattr(group, "commands", {}).items():
            yield from (
                paths(command, (*path, name)) if hasattr(command, "commands") else [(*path, name)]
            )

    shown = 0
    for path in [(), *paths(typer.main.get_command(app))]:
        result = invoke(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        rows = [line for line in result.stdout.splitlines() if "<bool>" in line]
        assert [r for r in rows if "--help" not in r] == [], (path, rows)
        shown += "--force" in result.stdout or "--augment" in result.stdout
    assert shown >= 4  # the flags were there to see: preprocess, train, export, download...


@pytest.mark.compat
def test_version():
    from enet_cli import __version__

    result = invoke("--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith(f"enet-cli {__version__}")


@pytest.mark.compat
def test_train_help_explains_every_option_and_shows_defaults_as_defaults():
    import re
    import subprocess
    import sys

    env = {**enet_env(), "COLUMNS": "300"}  # one line per option
    result = subprocess.run(
        [sys.executable, "-m", "enet_cli", "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "[default: 300]" in text and "(300)" not in text
    assert "[default: --no-sync-batchnorm]" in text
    options = re.findall(r"│ (--[a-z0-9-]+)\s", text)
    assert len(options) > 30
    for option in options:
        line = next(line for line in text.splitlines() if f"│ {option} " in line)
        words = line.split(">", 1)[-1].split("[default")[0].strip(" │")
        assert len(words) > 10, f"{option} has no help text: {line}"


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
    result = invoke("model", "summary", "--classes", "12", "--size", "360x480")
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
    assert "bottlenecks" not in out  # the paper's depth goes without saying
    shallow = invoke("model", "summary", "--size", "360x480", "--bottlenecks", "1,3,0,1,1")
    assert shallow.returncode == 0, shallow.stderr
    assert "ENet, 11 classes, bottlenecks 1,3,0,1,1, input 360x480x3" in shallow.stdout
    assert "stage3_" not in shallow.stdout and "stage2_3_asymmetric5" in shallow.stdout
    macs = enet_multiply_adds(360, 480, 11, (1, 3, 0, 1, 1))
    assert f"multiply-adds per image: {macs / 1e9:.2f} G" in shallow.stdout


def test_output_to_a_pipe_is_whole():
    """Piped (not a terminal, no COLUMNS, as `enet ... > file` or `| grep`), nothing is cut
    to 80 columns: every block name of the summary is whole, and no cell ends in an
    ellipsis. A real process: whether stdout is a terminal is the process's."""
    import subprocess
    import sys

    from enet_cli.core.config import ModelConfig
    from enet_cli.model.enet import enet_blocks

    env = {k: v for k, v in enet_env().items() if k != "COLUMNS"}
    result = subprocess.run(
        [sys.executable, "-m", "enet_cli", "model", "summary"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\u2026" not in result.stdout, result.stdout
    names = re.findall(r"^\u2502 (\S+) +\u2502", result.stdout, re.M)
    expected = [block.layer.name for block in enet_blocks(ModelConfig())]
    assert names[-1] == "total" and names[:-1] == expected[: len(names) - 1], names
    assert len(names) > 25, names  # ENet's blocks, not a few of them


def test_model_summary_reads_a_config_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model:\n  num_classes: 32\ndata:\n  image_size: 720x960\n")
    result = invoke("model", "summary", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "720x960x32" in result.stdout


@pytest.mark.compat
@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["train", "--batch-size", "-4"], 2, "--batch-size"),
        (["train", "--mode", "sideways"], 2, "--mode"),
        (["train", "--size", "0x480"], 2, "must be 1 to 16384"),
        (["model", "summary", "--size", "100by100"], 2, "expected HEIGHTxWIDTH"),
        (["train", "--epochs", "many"], 2, "--epochs"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_bad_options_give_one_line_and_no_traceback(args, code, needle):
    result = invoke(*args)
    assert result.returncode == code
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert needle in lines[0] and lines[0].startswith("error:")
    assert "Traceback" not in result.stderr


def test_demo_runs_the_whole_workflow_and_its_numbers_are_evaluates(tmp_path):
    """`enet demo` as a new user runs it (one epoch to keep it short): every output it
    names exists, its JSON is strict, and the test mean IoU it prints is what `enet
    evaluate` computes from the model it wrote."""
    out = tmp_path / "demo"
    result = invoke("demo", "--out", str(out), "--epochs", "1", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = float(result.stdout.split("test mean IoU ")[1].split("%")[0])
    assert (out / "data" / "manifest.json").is_file()
    assert (out / "run" / "model" / "saved_model.pb").is_file()
    overlays = sorted((out / "predictions").rglob("*.png"))
    assert len(overlays) >= 3  # one per bundled test image at least
    saved = json.loads(
        (out / "test_metrics.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"test_metrics.json holds {c}: not JSON"),
    )
    scored = invoke(
        "evaluate", str(out / "run"), str(out / "data"), "--split", "test",
        "--json", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-2000:]
    evaluated = json.loads((tmp_path / "m.json").read_text())["mean_iou"]
    assert saved["mean_iou"] == pytest.approx(evaluated, rel=1e-6)
    assert printed == pytest.approx(100 * evaluated, abs=0.05)


def test_tensorflow_start_up_lines_only_when_asked_for():
    """Quiet by default (our one line stays alone on stderr); --verbose, like
    ENET_LOG_LEVEL=debug, lets TensorFlow's own start-up lines through."""
    quiet = run_enet("model", "summary", "--size", "24x32")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == ""
    loud = run_enet("--verbose", "model", "summary", "--size", "24x32")
    assert loud.returncode == 0, loud.stderr
    assert re.search(r"^[IWE]\d{4} |absl::InitializeLog|oneDNN", loud.stderr, re.M), loud.stderr
