"""`enet report`'s steps: check everything, score each run (evaluate's code), draw, write
the page and its figures into a staged directory, publish it whole."""

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from enet_cli.core import outputs, ui
from enet_cli.core.environment import environment
from enet_cli.core.errors import ConfigError
from enet_cli.data.manifest import Manifest
from enet_cli.pixels.drawing import palette
from enet_cli.workflows.report import figures
from enet_cli.workflows.report.collect import Extremes, RunRecord, labels_for, read_run
from enet_cli.workflows.report.page import (
    esc,
    img,
    page,
    per_class_table,
    settings_section,
    summary_table,
)

PAGE = "report.html"
FIGURES = "figures"


class ReportRequest(BaseModel):
    """What `enet report` was asked for."""

    model_config = ConfigDict(frozen=True)

    runs: List[Path] = Field(description="Run directories (or any MODEL evaluate takes).")
    data_dir: Path = Field(description="Output of enet preprocess.")
    out: Path = Field(description="Directory for report.html and figures/.")
    split: str = Field("val", description="Split to score.")
    examples: int = Field(4, ge=0, description="Images shown with the lowest and highest IoU.")
    batch_size: int = Field(4, ge=1)
    force: bool = False


def check(request: ReportRequest) -> Manifest:
    """Every mistake before anything is evaluated or written: the extra, the runs, the
    data and split (evaluate's own checks), the output."""
    from enet_cli.serving.evaluate_request import check_evaluation

    figures.require_matplotlib()
    resolved = [Path(r).resolve() for r in request.runs]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("RUN: the same run is given twice; give each run once")
    manifest = None
    for run in request.runs:
        manifest = check_evaluation(run, request.data_dir, request.split)
    outputs.check_apart(Path(request.out), [*request.runs, request.data_dir], "--out")
    outputs.check_replaceable(Path(request.out), "report", request.force, "--out")
    return manifest


def _manifest_summary(manifest: Manifest, data_dir: Path) -> Dict[str, Any]:
    height, width = manifest.image_size
    return {
        "directory": str(data_dir),
        "layout": manifest.source_layout,
        "source": manifest.source_dir,
        "class table": manifest.scheme,
        "image size": f"{height}x{width}",
        "classes": ", ".join(manifest.class_names),
        **{f"{name} images": split.records for name, split in manifest.splits.items()},
        "written by": manifest.created_by,
    }


def _train_share(manifest: Manifest) -> Optional[List[float]]:
    counts = np.asarray(manifest.train_pixel_histogram, np.float64)
    total = counts.sum()
    return list(counts / total) if total > 0 else None


def _score(request: ReportRequest, run: RunRecord, manifest: Manifest):
    """evaluate()'s metrics for the run and the images at both ends of it."""
    from enet_cli.serving.evaluate import evaluate

    extremes = Extremes(request.examples, manifest)
    total = manifest.splits[request.split].records
    with ui.frame_progress(f"scoring {run.label} on {request.split}", total, "images") as advance:

        def observe(names, pixels, labels, predictions) -> None:
            extremes.observe(names, pixels, labels, predictions)
            advance(len(names))

        metrics = evaluate(
            run.source, request.data_dir, request.split, request.batch_size, observe=observe
        )
    return metrics, extremes


def make_report(request: ReportRequest) -> Path:
    """The report directory (report.html, figures/*.png, metrics_<run>.json)."""
    manifest = check(request)
    runs = [read_run(label, path) for label, path in zip(labels_for(request.runs), request.runs)]
    without = [run.label for run in runs if not run.history]
    if without:
        ui.info(
            f"no training history in {', '.join(without)} (not a run directory): the "
            f"training curves leave {'it' if len(without) == 1 else 'them'} out"
        )
    scored = {run.label: _score(request, run, manifest) for run in runs}
    metrics = {label: found[0] for label, found in scored.items()}
    names = manifest.class_names
    colours = palette([c.color for c in manifest.classes], manifest.void_color)
    inputs = [*request.runs, request.data_dir]
    with outputs.claim(Path(request.out), "report", request.force, inputs, "--out") as staged:
        root = staged.path
        (root / FIGURES).mkdir()
        sections = [f"<h2>Summary ({esc(request.split)} split)</h2>", summary_table(runs, metrics)]

        with ui.status("drawing the figures"):
            if len(without) < len(runs):
                figures.curves(runs, root / FIGURES / "curves.png")
                sections += ["<h2>Training curves</h2>", img(f"{FIGURES}/curves.png", "curves")]
                if without:
                    sections.append(
                        f"<p class='note'>Left out (no training history): {esc(', '.join(without))}"
                        "</p>"
                    )
            else:
                sections += [
                    "<h2>Training curves</h2>",
                    "<p class='note'>Left out: no run has a training history (a SavedModel, "
                    "an export or a preset on its own).</p>",
                ]
            share = _train_share(manifest)
            ious = {label: m["iou"] for label, m in metrics.items()}
            figures.per_class(names, ious, share, root / FIGURES / "per_class_iou.png")
            sections += [
                "<h2>IoU per class</h2>",
                img(f"{FIGURES}/per_class_iou.png", "IoU per class"),
                per_class_table(names, metrics, share),
                "<h2>Confusion matrices</h2>",
            ]
            for n, run in enumerate(runs):
                file = f"{FIGURES}/confusion_{n + 1}.png"
                matrix = np.asarray(metrics[run.label]["confusion"])
                figures.confusion(names, matrix, f"{run.label}: rows are the truth", root / file)
                sections.append(img(file, f"confusion matrix of {run.label}"))
            for n, run in enumerate(runs):
                sections.append(_examples(run, scored[run.label][1], n, root, colours, manifest))
        sections += ["<h2>Settings</h2>", settings_section(runs, _manifest_summary(
            manifest, request.data_dir), environment())]  # fmt: skip
        for n, run in enumerate(runs):
            (root / f"metrics_{n + 1}.json").write_text(outputs.json_text(metrics[run.label]))
        intro = (
            f"{len(runs)} {'run' if len(runs) == 1 else 'runs'} on the {esc(request.split)} "
            f"split of {esc(request.data_dir)}."
        )
        title = "enet report: " + ", ".join(run.label for run in runs)
        (root / PAGE).write_text(page(title, intro, sections), encoding="utf-8")
        staged.publish()
    return Path(request.out) / PAGE


def _examples(run: RunRecord, extremes: Extremes, n: int, root: Path, colours, manifest) -> str:
    if extremes.k == 0:
        return ""
    parts = [f"<h2>Images: {esc(run.label)}</h2>"]
    for kind, found in (("lowest", extremes.worst()), ("highest", extremes.best())):
        parts.append(f"<h3>The {len(found)} with the {kind} IoU</h3>")
        for rank, example in enumerate(found, start=1):
            file = f"{FIGURES}/run{n + 1}_{kind}_{rank}.png"
            strip = figures.example_strip(example, colours, manifest.ignore_index)
            (root / file).write_bytes(strip)
            parts.append(
                f"<div class='strip'><p>{esc(example.name)}: mean IoU "
                f"{100 * example.iou:.1f}%</p>{img(file, example.name)}</div>"
            )
    return "\n".join(parts)
