"""`enet preprocess` and `enet model summary`: datasets in, the graph described."""

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from enet_cli.commands.options import (
    CONFIG_OPTION,
    PANEL_DATA,
    PANEL_MODEL,
    config_option,
    flag,
    overrides,
)
from enet_cli.core.config import DEFAULT_IMAGE_SIZE, Interpolation, PreprocessConfig, make_options
from enet_cli.core.ui import stdout


def _pp(field: str) -> object:
    return config_option("preprocess", field, PANEL_DATA)


def preprocess(
    input_dir: Path = typer.Argument(
        ..., help="The dataset's root: CamVid, Cityscapes, VOC-style, or image/mask folders."
    ),
    output_dir: Path = typer.Argument(..., help="Directory to create: shards + manifest.json."),
    layout: Optional[str] = _pp("layout"),
    classes: Optional[str] = _pp("classes"),
    ignore_index: Optional[int] = _pp("ignore_index"),
    val_fraction: Optional[float] = _pp("val_fraction"),
    split_seed: Optional[int] = _pp("split_seed"),
    image_size: Optional[str] = _pp("image_size"),
    interpolation: Optional[Interpolation] = _pp("interpolation"),
    shards: Optional[int] = _pp("shards"),
    workers: Optional[int] = _pp("workers"),
    force: bool = flag(False, "--force", help="Replace an existing OUTPUT_DIR."),
) -> None:
    """Turn a dataset into TFRecord shards and a manifest (the layout is detected and named).

    Example: enet preprocess ~/datasets/cityscapes data/cityscapes --size 512x1024
    """
    cfg = make_options(PreprocessConfig, locals())
    from enet_cli.data.preprocess import preprocess as run_preprocess

    manifest, layout, reports = run_preprocess(cfg)
    height, width = manifest.image_size
    table = Table(
        title=f"{layout.name} layout -> {manifest.scheme} ({manifest.num_classes} classes + "
        f"void), {height}x{width}, in {cfg.output_dir}"
    )
    for column in ("split", "images", "shards", "classes present", "seconds", "images/s"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for r in reports:
        table.add_row(
            r.split,
            str(r.images),
            str(r.shards),
            str(r.classes_present) if r.labeled else "no labels",
            f"{r.seconds:.1f}",
            f"{r.images_per_second:.1f}",
        )
    stdout.print(table)


def model_summary(
    num_classes: Optional[int] = config_option("model", "num_classes", PANEL_MODEL),
    image_size: Optional[str] = config_option("data", "image_size", PANEL_MODEL),
    bottlenecks: Optional[str] = config_option("model", "bottlenecks", PANEL_MODEL),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Print ENet's blocks with output shapes, parameters and multiply-adds.

    Example: enet model summary --classes 12 --size 720x960
    """
    from enet_cli.train.settings import load_config

    cfg = load_config(config, overrides(locals()))  # mistakes first, before TensorFlow loads
    from enet_cli.core.config import PAPER_BOTTLENECKS, model_size
    from enet_cli.model import build_enet
    from enet_cli.model.summary import summarize

    height, width = cfg.data.image_size or DEFAULT_IMAGE_SIZE
    inside = model_size(height, width)
    model = build_enet(cfg.model, inside)
    rows = summarize(model)
    padded = "" if inside == (height, width) else f" (padded to {inside[0]}x{inside[1]})"
    depth = ",".join(map(str, cfg.model.bottlenecks))
    depth = "" if cfg.model.bottlenecks == PAPER_BOTTLENECKS else f", bottlenecks {depth}"
    title = f"ENet, {cfg.model.num_classes} classes{depth}, input {height}x{width}x3{padded}"
    table = Table(title=title)
    for column, justify in (
        ("block", "left"),
        ("main op", "left"),
        ("output shape", "right"),
        ("parameters", "right"),
        ("multiply-adds", "right"),
    ):
        table.add_column(column, justify=justify)
    for row in rows:
        shape = "x".join(str(d) for d in row.output_shape[1:])
        table.add_row(row.name, row.kind, shape, f"{row.params:,}", f"{row.multiply_adds:,}")
    total_params = sum(r.params for r in rows)
    total_macs = sum(r.multiply_adds for r in rows)
    table.add_section()
    out_shape = "x".join(str(d) for d in model.output_shape[1:])
    table.add_row("total", "", out_shape, f"{total_params:,}", f"{total_macs:,}")
    stdout.print(table)
    non_trainable = model.count_params() - total_params
    stdout.print(
        f"trainable parameters: {total_params:,} (+{non_trainable:,} batch-norm statistics); "
        f"multiply-adds per image: {total_macs / 1e9:.2f} G"
    )


def register(app: typer.Typer) -> None:
    app.command()(preprocess)
    model_app = typer.Typer(
        help="Inspect the ENet graph.", no_args_is_help=True, rich_markup_mode="rich"
    )
    model_app.command("summary")(model_summary)
    app.add_typer(model_app, name="model")
