"""`enet train` and `enet demo`: training on this machine (one process, local workers, or
inside a SageMaker container, where the job's settings come from its hyperparameters)."""

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from enet_cli.commands.options import (
    CONFIG_OPTION,
    argument,
    command_with,
    keyword,
    overrides,
    training_parameters,
)
from enet_cli.core.ui import plural, stdout


def train(**options: Any) -> None:
    """Train ENet on a preprocessed directory (resumes the run directory's last checkpoint).

    Example: enet train data/camvid --run-dir runs/camvid --epochs 300
    """
    from enet_cli.train.launcher import is_worker
    from enet_cli.train.run import launch_if_requested, run_training, settings_for_run

    cfg, paths = settings_for_run(options.pop("config"), overrides(options))
    if not is_worker():
        code = launch_if_requested(cfg, paths, sys.argv[1:])
        if code is not None:
            raise typer.Exit(code)
    summary = run_training(cfg, paths)
    if "saved_model" not in summary:  # a worker other than the chief: it wrote nothing
        stdout.print(f"worker done: {plural(summary['steps'], 'step')}")
        return
    best = summary.get("best_val_mean_iou", -1.0)
    best_text = f"{best:.4f}" if best >= 0 else "n/a (no full epoch yet)"
    epochs, steps = plural(summary["epochs_completed"], "epoch"), plural(summary["steps"], "step")
    stdout.print(
        f"done: {epochs}, {steps}; best val mean "
        f"IoU {best_text}; SavedModel in {paths.export}; metrics in "
        f"{paths.outputs / 'metrics.json'}; TensorBoard: tensorboard --logdir {paths.logs}"
    )


def demo(
    out: Path = typer.Option(Path("enet-demo"), "--out", "-o", help="Where everything goes."),
    epochs: int = typer.Option(40, "--epochs", min=1, help="Training epochs (8 images each)."),
) -> None:
    """Run the whole workflow on bundled CamVid images: preprocess, train, evaluate, predict.

    Example: enet demo --out enet-demo
    """
    from enet_cli.workflows.demo import run_demo

    result = run_demo(out, epochs)
    test = result.test_metrics
    stdout.print(
        f"demo done: test mean IoU {100 * test['mean_iou']:.1f}%, pixel accuracy "
        f"{100 * test['pixel_accuracy']:.1f}% (a model trained on 8 images)",
        soft_wrap=True,
    )
    for label, path in (
        ("preprocessed data", result.data_dir),
        ("run (checkpoints, logs)", result.run_dir),
        ("SavedModel", result.run_dir / "model"),
        ("overlays", result.predictions),
        ("test metrics", result.out / "test_metrics.json"),
    ):
        stdout.print(f"  {label}: {path}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    leading = [
        argument(
            "data_dir",
            "Output of enet preprocess (in SageMaker: the train channel).",
            Optional[Path],
            None,
        ),
        keyword("config", CONFIG_OPTION, Optional[Path]),
    ]
    app.command("train")(command_with(train, leading + training_parameters()))
    app.command()(demo)
