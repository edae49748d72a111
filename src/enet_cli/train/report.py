"""What training reports, and to whom: a compact table row per epoch for people at a terminal,
the exact `enet-metrics:` lines for machines (SageMaker's metric regexes, CI logs, pipes),
TensorBoard scalars, and each finished epoch's metrics kept for metrics.json. The chief
alone reports.
"""

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

from enet_cli.core import outputs, ui
from enet_cli.core.backend import tf
from enet_cli.core.config import LogFormat
from enet_cli.core.metrics import format_metrics_line

# (key, heading, width, format) of a table row; a missing value is "-".
COLUMNS = (
    ("epoch", "epoch", 6, "{:.0f}"),
    ("step", "step", 8, "{:.0f}"),
    ("loss", "loss", 8, "{:.4f}"),
    ("mean_iou", "mIoU", 7, "{:.4f}"),
    ("val_loss", "val loss", 9, "{:.4f}"),
    ("val_mean_iou", "val mIoU", 9, "{:.4f}"),
    ("lr", "lr", 9, "{:.2e}"),
    ("images_per_sec", "img/s", 7, "{:.1f}"),
)
BEST = "* best"


def _finite(value) -> bool:
    return value is not None and not (math.isnan(float(value)) or math.isinf(float(value)))


def format_row(values: Dict[str, float], best: bool) -> str:
    cells = []
    for key, _, width, fmt in COLUMNS:
        value = values.get(key)
        cells.append((fmt.format(float(value)) if _finite(value) else "-").rjust(width))
    return " ".join(cells) + ("  " + BEST if best else "")


def format_header() -> str:
    return " ".join(heading.rjust(width) for _, heading, width, _ in COLUMNS)


def table_wanted(log_format: LogFormat) -> bool:
    """`auto`: a table for a person at a terminal; the metrics lines for everything else,
    SageMaker's log stream included (its metric regexes read them)."""
    if log_format != LogFormat.auto:
        return log_format == LogFormat.table
    from enet_cli.container.contract import in_sagemaker

    return ui.stdout.is_terminal and not in_sagemaker()


class Reporter:
    """Per epoch: a table row or a metrics line on stdout, and TensorBoard scalars."""

    def __init__(self, chief: bool, logs: Path, log_format: LogFormat):
        self.chief = chief
        self.table = table_wanted(log_format)
        self.header_printed = False
        self.writers = {}
        if chief:
            for split in ("train", "val"):
                self.writers[split] = tf.summary.create_file_writer(str(logs / split))

    def scalars(self, split: str, step: int, values: Dict[str, float]) -> None:
        if not self.chief:
            return
        with self.writers[split].as_default():
            for name, value in values.items():
                if _finite(value):
                    tf.summary.scalar(name, float(value), step=step)
            self.writers[split].flush()

    def line(self, values: Dict[str, float], best: bool = False) -> None:
        if not self.chief:
            return
        if not self.table:
            print(format_metrics_line(values), flush=True)
            return
        if not self.header_printed:
            ui.stdout.print(format_header(), style="bold", soft_wrap=True)
            self.header_printed = True
        ui.stdout.print(format_row(values, best), style="green" if best else None, soft_wrap=True)


class History:
    """Each finished epoch's metrics, kept beside the checkpoints (the chief's) so that a
    resumed run's metrics.json still holds every epoch. Keyed by epoch: an epoch redone
    after a kill (its checkpoint never written) replaces its own entry with equal values."""

    NAME = "history.json"

    def __init__(self, directory: Optional[Path], start_epoch: int):
        self.path = None if directory is None else Path(directory) / self.NAME
        self.epochs: List[Dict[str, float]] = []
        if self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError):
                saved = []
            self.epochs = [e for e in saved if int(e.get("epoch", 0)) <= start_epoch]

    def add(self, epoch: int, values: Dict[str, float]) -> None:
        self.epochs = [e for e in self.epochs if int(e["epoch"]) <= epoch] + [values]
        if self.path is not None:
            outputs.write_atomic(self.path, outputs.json_text(self.epochs, indent=None))
