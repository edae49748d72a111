"""The report's figures: matplotlib (Agg: files, no display) for the plots, Pillow for the
image strips, whose pixels must stay the model's own (no resampling by a plot)."""

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from enet_cli.core.errors import EnvironmentProblem
from enet_cli.pixels.drawing import indexed_png, png_bytes
from enet_cli.workflows.report.collect import Example, RunRecord

EXTRA = "pip install 'enet-cli[report]'"
DPI = 110
# Colour per run: matplotlib's default cycle, so two runs are told apart the same way in
# every figure.
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def require_matplotlib():
    """pyplot on the Agg backend, or a one-line error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise EnvironmentProblem(
            f"enet report draws with matplotlib, which is not installed: {EXTRA}"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colour(n: int) -> str:
    return RUN_COLOURS[n % len(RUN_COLOURS)]


def _save(fig, path: Path) -> None:
    plt = require_matplotlib()
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def curves(runs: List[RunRecord], path: Path) -> None:
    """Loss and mean IoU per epoch, train dashed and val solid, the best epoch (highest val
    mean IoU) starred; the learning rate below. Runs without history are left out."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for n, run in enumerate(runs):
        if not run.history:
            continue
        epochs = [e["epoch"] for e in run.history]
        colour = _colour(n)
        for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "mean_iou", "mean IoU")):
            for prefix, style in (("", "--"), ("val_", "-")):
                values = [e.get(prefix + key, np.nan) for e in run.history]
                split = "val" if prefix else "train"
                ax.plot(epochs, values, style, color=colour, label=f"{run.label} {split}")
            ax.set_title(title)
            ax.set_xlabel("epoch")
        best = run.best_epoch
        if best is not None:
            value = next(e["val_mean_iou"] for e in run.history if e["epoch"] == best)
            star = dict(color=colour, markersize=14, markeredgecolor="black")
            axes[1].plot([best], [value], "*", label=f"{run.label} best (epoch {best})", **star)
            axes[0].axvline(best, color=colour, alpha=0.3, linewidth=1)
        axes[2].plot(epochs, [e.get("lr", np.nan) for e in run.history], color=colour,
                     label=run.label)  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    axes[0].legend(fontsize=8)
    _save(fig, path)


def per_class(
    names: Sequence[str],
    ious: Dict[str, Dict[str, float]],
    train_share: Optional[Sequence[float]],
    path: Path,
) -> None:
    """IoU per class for each run (bars side by side), beside the class's share of the
    training pixels: rare classes are where IoU is usually lost."""
    plt = require_matplotlib()
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 0.45 * len(names) + 1.5), sharey=True,
        gridspec_kw={"width_ratios": [3, 1.4]},
    )  # fmt: skip
    rows = np.arange(len(names))
    height = 0.8 / max(1, len(ious))
    for n, (label, by_class) in enumerate(ious.items()):
        values = [100 * by_class.get(name, np.nan) for name in names]
        left.barh(rows + n * height, values, height, color=_colour(n), label=label)
    left.set_yticks(rows + height * (len(ious) - 1) / 2)
    left.set_yticklabels(names)
    left.invert_yaxis()
    left.set_xlim(0, 100)
    left.set_xlabel("IoU (%)")
    left.set_title("IoU per class")
    left.grid(axis="x", alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    if train_share is not None:
        right.barh(rows + height * (len(ious) - 1) / 2, [100 * s for s in train_share],
                   0.6, color="#888888")  # fmt: skip
        right.set_xlabel("% of training pixels")
        right.set_title("class share (train)")
        right.grid(axis="x", alpha=0.3)
    else:
        right.set_axis_off()
    _save(fig, path)


def confusion(names: Sequence[str], matrix: np.ndarray, title: str, path: Path) -> None:
    """The confusion matrix normalised by row (each true class's pixels sum to 100%)."""
    plt = require_matplotlib()
    counts = np.asarray(matrix, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = 0.55 * len(names) + 2.5
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(names) <= 25:  # numbers stay legible
        for i in range(len(names)):
            for j in range(len(names)):
                if share[i, j] >= 0.005:
                    ink = "white" if share[i, j] > 0.5 else "black"
                    text = f"{100 * share[i, j]:.0f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=ink)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class's pixels")
    _save(fig, path)


STRIP_TITLES = ("image", "truth", "prediction", "where they differ")
CAPTION = 22  # pixels above the panels for their titles


def _caption_font():
    """Pillow's own scalable font (10.1 and later), else its small bitmap one."""
    try:
        return ImageFont.load_default(size=15)
    except TypeError:
        return ImageFont.load_default()


def example_strip(example: Example, palette: np.ndarray, ignore_index: int) -> bytes:
    """image | truth | prediction | where they differ (red: wrong, black: void), side by
    side at the data's size, as PNG bytes."""
    image = example.image
    height, width = image.shape[:2]
    truth = Image.fromarray(np.asarray(indexed_png(example.label, palette).convert("RGB")))
    predicted = indexed_png(np.minimum(example.prediction, ignore_index), palette).convert("RGB")
    valid = example.label != ignore_index
    wrong = valid & (example.label != example.prediction)
    grey = (0.35 * image.mean(axis=2, keepdims=True)).astype(np.uint8).repeat(3, axis=2)
    differ = np.where(wrong[..., None], np.array([230, 30, 30], np.uint8), grey)
    differ[~valid] = 0
    panels = [Image.fromarray(image), truth, predicted, Image.fromarray(differ)]
    strip = Image.new("RGB", (4 * width + 3 * 4, height + CAPTION), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = _caption_font()
    for n, (panel, title) in enumerate(zip(panels, STRIP_TITLES)):
        x = n * (width + 4)
        strip.paste(panel, (x, CAPTION))
        draw.text((x + 2, 3), title, fill=(30, 30, 30), font=font)
    return png_bytes(strip)
