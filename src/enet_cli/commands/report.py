"""`enet report`: pictures of what one or more trained models learned (workflows/report/)."""

from pathlib import Path
from typing import List

import typer

from enet_cli.commands.options import flag, model_path
from enet_cli.core import ui


def report(
    runs: List[Path] = typer.Argument(
        ...,
        help="Run directories (curves need their history), or any MODEL enet evaluate takes; "
        "two or more are compared.",
    ),
    data_dir: Path = typer.Option(..., "--data", help="Output of enet preprocess."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for report.html and figures/."),
    split: str = typer.Option("val", "--split", help="Split to score: train, val or test."),
    examples: int = typer.Option(
        4, "--examples", min=0, help="Images shown with the lowest and with the highest IoU."
    ),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per batch."),
    force: bool = flag(False, "--force", help="Replace an earlier report in --out."),
) -> None:
    """Write an HTML page of what a model learned: training curves, IoU per class beside
    each class's share of the data, confusion matrix, the images it gets most and least
    right, and the run's settings. Opens from disk, offline.

    The numbers are enet evaluate's (the same code); needs matplotlib:
    pip install 'enet-cli\\[report]'.

    Example: enet report runs/a runs/b --data data/camvid --out report/
    """
    from enet_cli.workflows.report.make import ReportRequest, make_report

    request = ReportRequest(
        runs=[model_path(r) for r in runs],
        data_dir=data_dir,
        out=out,
        split=split,
        examples=examples,
        batch_size=batch_size,
        force=force,
    )
    written = make_report(request)
    ui.info(f"report written to {written} (open it in a browser)")


def register(app: typer.Typer) -> None:
    app.command()(report)
