"""The `enet` command. Thin on purpose: options -> config objects -> one core call -> a summary.

TensorFlow is imported inside the commands that need it, so `enet --help` stays fast. Every
`EnetError` from the core and every usage error becomes one red line on stderr and an exit
code (see errors.py); anything else is a bug and keeps its traceback.
"""

import contextlib
import inspect
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from enet_cli import __version__, ui
from enet_cli.config import (
    DEFAULT_IMAGE_SIZE,
    LOCAL_SETTINGS,
    SECTIONS,
    AwsConfig,
    ClassWeighting,
    DeployConfig,
    EngineChoice,
    Interpolation,
    LaunchConfig,
    LogFormat,
    LRSchedule,
    Mode,
    PipelineSchedule,
    Precision,
    PreprocessConfig,
    TransformConfig,
    TuneConfig,
    load_config,
    make_options,
    model_size,
    option_name,
    sort_settings,
)
from enet_cli.errors import DataError, EnetError, Interrupted, PeerLost

stdout, stderr = ui.stdout, ui.stderr

app = typer.Typer(
    name="enet",
    help="Train, evaluate and ship ENet semantic segmentation on CamVid, locally or on SageMaker.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
model_app = typer.Typer(
    help="Inspect the ENet graph.", no_args_is_help=True, rich_markup_mode="rich"
)
app.add_typer(model_app, name="model")

PANEL_DATA, PANEL_MODEL, PANEL_TRAIN, PANEL_DIST = "Data", "Model", "Training", "Distributed"
PANEL_OUT = "Checkpoints and output"
_OPTION_MODELS = {**SECTIONS, "preprocess": PreprocessConfig}


def _opt(section: str, field: str, panel: str, **kwargs: Any) -> Any:
    """A Typer option for a config field: its name, help and shown default come from config.py.

    The option's own default is None ("not given") so that a --config file value is only
    overridden by options the user actually typed.
    """
    info = _OPTION_MODELS[section].model_fields[field]
    default = info.get_default(call_default_factory=True) if not info.is_required() else ""
    if hasattr(default, "value"):
        default = default.value
    if isinstance(default, tuple) and field == "image_size":
        default = "x".join(str(v) for v in default)
    decls = kwargs.pop("decls", None) or [option_name(field)]
    help_text = escape(info.description or "")
    if default is not None and default != "":
        if isinstance(default, bool) and len(decls[0].split("/")) == 2:
            default = decls[0].split("/")[0 if default else 1]
        help_text += f" [dim]\\[default: {escape(str(default))}][/dim]"
    return typer.Option(
        None, *decls, help=help_text, show_default=False, rich_help_panel=panel, **kwargs
    )


def _overrides(given: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Sort a command's option values into config sections by field name (names are unique)."""
    return sort_settings(given)


MODEL_HELP = "Run directory, SavedModel, checkpoints, or a SageMaker training job's name."


def _model_argument(model: Path) -> Path:
    """A training job's name as MODEL: its model, downloaded (sagemaker/jobs.py)."""
    if model.exists() or "/" in str(model):
        return model
    from enet_cli.sagemaker.jobs import model_of

    return model_of(model)


CONFIG_OPTION = typer.Option(
    None,
    "--config",
    "-c",
    help="YAML or JSON file with sections model, data, train, runtime.",
    exists=False,
    dir_okay=False,
)


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"enet-cli {__version__} (Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Show TensorFlow's own log lines too (start-up included); as ENET_LOG_LEVEL=debug.",
    ),
) -> None:
    """Train, evaluate and ship ENet semantic segmentation on CamVid, locally or on SageMaker."""
    if verbose:  # read when TensorFlow is first imported, which no command has done yet
        import os

        os.environ["ENET_LOG_LEVEL"] = "debug"


# ---------------------------------------------------------------------------------------
# enet model summary
# ---------------------------------------------------------------------------------------
@model_app.command("summary")
def model_summary(
    num_classes: Optional[int] = _opt("model", "num_classes", PANEL_MODEL),
    image_size: Optional[str] = _opt("data", "image_size", PANEL_MODEL),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Print ENet's blocks with output shapes, parameters and multiply-adds.

    Example: enet model summary --classes 12 --size 720x960
    """
    cfg = load_config(config, _overrides(locals()))
    from enet_cli.model import build_enet
    from enet_cli.model.summary import summarize

    height, width = cfg.data.image_size or DEFAULT_IMAGE_SIZE
    inside = model_size(height, width)
    model = build_enet(cfg.model, inside)
    rows = summarize(model)
    padded = "" if inside == (height, width) else f" (padded to {inside[0]}x{inside[1]})"
    table = Table(title=f"ENet, {cfg.model.num_classes} classes, input {height}x{width}x3{padded}")
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


# ---------------------------------------------------------------------------------------
# Commands that later work fills in. They parse their options for real, so config mistakes
# are reported now, then say plainly that the capability is not there yet.
# ---------------------------------------------------------------------------------------
def _pp_opt(field: str, **kwargs: Any) -> Any:
    return _opt("preprocess", field, PANEL_DATA, **kwargs)


@app.command()
def preprocess(
    input_dir: Path = typer.Argument(
        ..., help="The dataset's root: CamVid, Cityscapes, VOC-style, or image/mask folders."
    ),
    output_dir: Path = typer.Argument(..., help="Directory to create: shards + manifest.json."),
    layout: Optional[str] = _pp_opt("layout"),
    classes: Optional[str] = _pp_opt("classes"),
    ignore_index: Optional[int] = _pp_opt("ignore_index"),
    val_fraction: Optional[float] = _pp_opt("val_fraction"),
    split_seed: Optional[int] = _pp_opt("split_seed"),
    image_size: Optional[str] = _pp_opt("image_size"),
    interpolation: Optional[Interpolation] = _pp_opt("interpolation"),
    shards: Optional[int] = _pp_opt("shards"),
    workers: Optional[int] = _pp_opt("workers"),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUTPUT_DIR."),
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


@app.command()
def train(
    data_dir: Optional[Path] = typer.Argument(
        None, help="Output of enet preprocess (in SageMaker: the train channel)."
    ),
    config: Optional[Path] = CONFIG_OPTION,
    mode: Optional[Mode] = _opt("runtime", "mode", PANEL_DIST),
    engine: Optional[EngineChoice] = _opt("runtime", "engine", PANEL_DIST),
    image_size: Optional[str] = _opt("data", "image_size", PANEL_DATA),
    augment: Optional[bool] = _opt("data", "augment", PANEL_DATA, decls=["--augment/--no-augment"]),
    random_scale: Optional[str] = _opt("data", "random_scale", PANEL_DATA),
    color_jitter: Optional[float] = _opt("data", "color_jitter", PANEL_DATA),
    dropout: Optional[float] = _opt("model", "dropout", PANEL_MODEL),
    stage1_dropout: Optional[float] = _opt("model", "stage1_dropout", PANEL_MODEL),
    epochs: Optional[int] = _opt("train", "epochs", PANEL_TRAIN),
    steps: Optional[int] = _opt("train", "steps", PANEL_TRAIN),
    batch_size: Optional[int] = _opt("train", "batch_size", PANEL_TRAIN),
    learning_rate: Optional[float] = _opt("train", "learning_rate", PANEL_TRAIN),
    weight_decay: Optional[float] = _opt("train", "weight_decay", PANEL_TRAIN),
    clip_norm: Optional[float] = _opt("train", "clip_norm", PANEL_TRAIN),
    lr_schedule: Optional[LRSchedule] = _opt("train", "lr_schedule", PANEL_TRAIN),
    lr_decay_epochs: Optional[int] = _opt("train", "lr_decay_epochs", PANEL_TRAIN),
    lr_decay_factor: Optional[float] = _opt("train", "lr_decay_factor", PANEL_TRAIN),
    class_weighting: Optional[ClassWeighting] = _opt("train", "class_weighting", PANEL_TRAIN),
    precision: Optional[Precision] = _opt("train", "precision", PANEL_TRAIN),
    seed: Optional[int] = _opt("train", "seed", PANEL_TRAIN),
    partitions: Optional[int] = _opt("runtime", "partitions", PANEL_DIST),
    microbatches: Optional[int] = _opt("runtime", "microbatches", PANEL_DIST),
    pipeline: Optional[PipelineSchedule] = _opt("runtime", "pipeline", PANEL_DIST),
    local_workers: Optional[int] = _opt("runtime", "local_workers", PANEL_DIST),
    sync_batchnorm: Optional[bool] = _opt(
        "runtime", "sync_batchnorm", PANEL_DIST, decls=["--sync-batchnorm/--no-sync-batchnorm"]
    ),
    scale_lr: Optional[bool] = _opt(
        "train", "scale_lr", PANEL_DIST, decls=["--scale-lr/--no-scale-lr"]
    ),
    val_every_steps: Optional[int] = _opt("train", "val_every_steps", PANEL_TRAIN),
    checkpoint_every_steps: Optional[int] = _opt("train", "checkpoint_every_steps", PANEL_OUT),
    keep_checkpoints: Optional[int] = _opt("train", "keep_checkpoints", PANEL_OUT),
    run_dir: Optional[Path] = _opt("runtime", "run_dir", PANEL_OUT),
    resume: Optional[bool] = _opt("runtime", "resume", PANEL_OUT, decls=["--resume/--no-resume"]),
    log_format: Optional[LogFormat] = _opt("runtime", "log_format", PANEL_OUT),
) -> None:
    """Train ENet on a preprocessed directory (resumes the run directory's last checkpoint).

    Example: enet train data/camvid --run-dir runs/camvid --epochs 300
    """
    from enet_cli.train.launcher import is_worker
    from enet_cli.train.run import launch_if_requested, train_from_settings

    overrides = _overrides(locals())
    if not is_worker():
        code = launch_if_requested(config, overrides, sys.argv[1:])
        if code is not None:
            raise typer.Exit(code)
    summary, paths = train_from_settings(config, overrides)
    if "saved_model" not in summary:  # a worker other than the chief: it wrote nothing
        stdout.print(f"worker done: {summary['steps']} steps")
        return
    best = summary.get("best_val_mean_iou", -1.0)
    best_text = f"{best:.4f}" if best >= 0 else "n/a (no full epoch yet)"
    stdout.print(
        f"done: {summary['epochs_completed']} epochs, {summary['steps']} steps; best val mean "
        f"IoU {best_text}; SavedModel in {paths.export}; metrics in "
        f"{paths.outputs / 'metrics.json'}; TensorBoard: tensorboard --logdir {paths.logs}"
    )


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    data_dir: Path = typer.Argument(..., help="Output of enet preprocess."),
    split: str = typer.Option("test", "--split", help="Split to score: train, val or test."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per batch."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write all metrics as JSON."),
    confusion_csv: Optional[Path] = typer.Option(
        None, "--confusion-csv", help="Write the confusion matrix (rows: truth) as CSV."
    ),
    tta: Optional[str] = typer.Option(
        None,
        "--tta",
        help="Test-time augmentation: flip (left-right), scales=S1,S2,... (times the model's "
        "size), or both, e.g. flip,scales=0.75,1,1.25; class probabilities are averaged.",
    ),
) -> None:
    """Score a trained model: per-class IoU and accuracy, mean IoU, pixel accuracy.

    Example: enet evaluate runs/camvid data/camvid --split test --json test.json --tta flip
    """
    from enet_cli.evaluate import evaluate as run_evaluate
    from enet_cli.tta import parse_tta

    augment = None if tta is None else parse_tta(tta)
    model = _model_argument(model)
    metrics = run_evaluate(model, data_dir, split, batch_size, json_path, confusion_csv, augment)
    how = "" if augment is None else f"; {augment.describe()}"
    table = Table(title=f"{metrics['model']} on {split} ({metrics['images']} images{how})")
    for column in ("class", "IoU", "accuracy"):
        table.add_column(column, justify="left" if column == "class" else "right")

    def pct(value: float) -> str:
        return "-" if value != value else f"{100 * value:.1f}"

    for name, iou in metrics["iou"].items():
        table.add_row(name, pct(iou), pct(metrics["accuracy"][name]))
    table.add_section()
    table.add_row("mean", pct(metrics["mean_iou"]), pct(metrics["class_accuracy"]))
    stdout.print(table)
    stdout.print(
        f"mean IoU {pct(metrics['mean_iou'])}%, pixel accuracy {pct(metrics['pixel_accuracy'])}%"
        f", class-average accuracy {pct(metrics['class_accuracy'])}% (void ignored); "
        f"{metrics['ms_per_image']:.1f} ms per image{how}",
        soft_wrap=True,
    )


def _size_option(value: Optional[str]) -> Optional[str]:
    if value is not None:
        from enet_cli.config import parse_size

        try:
            parse_size(value)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
    return value


def _parsed_size(value: Optional[str]):
    from enet_cli.config import parse_size

    return None if value is None else parse_size(value)


@app.command()
def predict(
    model: Path = typer.Argument(
        ..., help="Run directory, SavedModel, checkpoint directory, TFLite or ONNX export."
    ),
    inputs: List[Path] = typer.Argument(
        ...,
        help="Images, videos (mp4, mov, avi, mkv, webm), directories of either (searched "
        "recursively), or - for raw RGB frames on stdin.",
    ),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Output directory."),
    runtime: Optional[str] = typer.Option(
        None,
        "--runtime",
        help="Run the model in keras, saved_model, tflite or onnx (default: the fastest one "
        "MODEL has).",
        metavar="<keras|saved_model|tflite|onnx>",
    ),
    glob: str = typer.Option("*", "--glob", help="Files of a directory to take, e.g. '*.mp4'."),
    batch: int = typer.Option(4, "--batch", min=1, help="Video frames per inference call."),
    classes_video: Optional[str] = typer.Option(
        None,
        "--classes-video",
        help="Also write a video's class maps losslessly: png (an indexed PNG per frame in "
        "NAME_classes/) or ffv1 (NAME_classes.mkv, gray: pixel value = class index).",
        metavar="<png|ffv1>",
    ),
    summary: Optional[Path] = typer.Option(
        None,
        "--summary",
        help="Write each class's pixel share per input and frame, over time (.csv or .json).",
    ),
    stream_size: Optional[str] = typer.Option(
        None,
        "--stream-size",
        callback=_size_option,
        help="HEIGHTxWIDTH of the raw RGB24 frames read from - (stdin).",
    ),
    fps: float = typer.Option(30.0, "--fps", help="Frame rate of the frames read from -."),
    fps_counter: bool = typer.Option(
        True, "--fps-counter/--no-fps-counter", help="Draw frames/s into video overlays."
    ),
) -> None:
    """Segment images and videos: class maps and colour overlays.

    An image gives NAME_classes.png (indexed: pixel value = class) and NAME_overlay.png.
    A video gives NAME_overlay.mp4 at its own size and frame rate (video needs PyAV:
    pip install 'enet-cli\\[video]').

    Example: enet predict runs/camvid street.png drive.mp4 --out predictions

    Live: ffmpeg -i rtsp://camera -f rawvideo -pix_fmt rgb24 - | enet predict runs/camvid - --stream-size 720x1280
    """  # noqa: E501
    from enet_cli.inference import Runtime, load_predictor
    from enet_cli.predict import (
        Prediction,
        PredictOptions,
        check_inputs_kept,
        check_out_dir,
        collect_inputs,
        parallel_for,
        require_video_support,
        run_predict,
    )

    if runtime is not None and runtime not in [r.value for r in Runtime]:
        raise typer.BadParameter(
            f"{runtime!r} is not one of {', '.join(r.value for r in Runtime)}",
            param_hint="--runtime",
        )
    options = PredictOptions(
        out=out,
        batch=batch,
        classes_video=classes_video,
        summary=summary,
        glob=glob,
        stream_size=_parsed_size(stream_size),
        stream_rate=fps,
        fps_counter=fps_counter,
    )
    options.check()
    found = collect_inputs(inputs, glob)
    check_out_dir(out)
    check_inputs_kept(found, out)
    require_video_support(found, options)
    predictor = load_predictor(
        _model_argument(model), Runtime(runtime) if runtime else None, parallel_for(found)
    )
    ui.info(f"model: {predictor.source} (runtime {predictor.runtime.value})")

    def show(result) -> None:
        if not isinstance(result, Prediction):
            return
        top = sorted(result.class_fractions.items(), key=lambda kv: -kv[1])[:3]
        shares = ", ".join(f"{name} {100 * share:.0f}%" for name, share in top)
        if result.kind == "video":
            rate = result.frames / max(result.seconds, 1e-9)
            shares += f"; {result.frames} frames at {rate:.1f} frames/s"
        stdout.print(f"{result.source} -> {result.overlay_png} ({shares})", soft_wrap=True)

    report = run_predict(predictor, found, options, show)
    if report.interrupted is not None:
        cut = report.interrupted
        total = f" of {cut.frames_total}" if cut.frames_total else ""
        raise Interrupted(
            f"stopped: {cut.overlay_png} holds the first {cut.frames}{total} frames of "
            f"{cut.source} (playable, shorter); inputs after it were not predicted"
        )
    if len(report.skipped) == 1 and len(found) == 1:
        raise DataError(report.skipped[0].reason)
    if report.skipped:
        raise DataError(
            f"{len(report.skipped)} of {len(found)} inputs skipped or incomplete (see the "
            f"warnings above); the others are in {out}"
        )


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / 2**20:.2f} MiB"


@app.command()
def export(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to create."),
    format: str = typer.Option(
        "saved_model",
        "--format",
        help="saved_model, tflite, onnx (needs the [onnx] extra), or checkpoint (the run's "
        "checkpoints as whole ones, e.g. an SMP run's per-partition checkpoints merged).",
        metavar="<saved_model|tflite|onnx|checkpoint>",
    ),
    quantize: str = typer.Option(
        "none",
        "--quantize",
        help="TFLite weights/activations: none (float32), float16, or int8 (full integer, "
        "calibrated on training images; needs --data).",
        metavar="<none|float16|int8>",
    ),
    data_dir: Optional[Path] = typer.Option(
        None,
        "--data",
        help="Preprocessed data: int8 calibration, and agreement with the float model.",
    ),
    split: str = typer.Option("val", "--split", help="Split the agreement is measured on."),
    size: Optional[str] = typer.Option(
        None,
        "--size",
        callback=_size_option,
        help="HEIGHTxWIDTH a TFLite file takes (default: the training size), or an ONNX "
        "file (default: any size).",
    ),
    calibration_images: int = typer.Option(
        16, "--calibration-images", min=1, help="Training images int8 calibrates on."
    ),
    xla: bool = typer.Option(False, "--xla", help="SavedModel: serve XLA-compiled."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier export at --out."),
) -> None:
    """Export a trained model: SavedModel, ONNX, or TFLite in float32, float16 or int8.

    Prints the size on disk and, with --data, how often the export predicts the float
    model's class and the mean IoU of both on --split.

    Example: enet export runs/camvid --format tflite --quantize int8 --data data/camvid
    --out enet-int8
    """
    from enet_cli.export import ExportFormat, ExportRequest, Quantize, export_model

    formats = [f.value for f in ExportFormat]
    if format not in formats:
        raise typer.BadParameter(
            f"{format!r} is not one of {', '.join(formats)}", param_hint="--format"
        )
    levels = [q.value for q in Quantize]
    if quantize not in levels:
        raise typer.BadParameter(
            f"{quantize!r} is not one of {', '.join(levels)}", param_hint="--quantize"
        )
    request = ExportRequest(
        source=_model_argument(model),
        out=out,
        format=ExportFormat(format),
        quantize=Quantize(quantize),
        data_dir=data_dir,
        split=split,
        image_size=_parsed_size(size),
        calibration_images=calibration_images,
        xla=xla,
        force=force,
    )
    request.check()
    with ui.status(f"exporting {model} as {format} ({quantize})"):
        report = export_model(request)
    what = {"tflite": f"TFLite {quantize}", "onnx": "ONNX", "saved_model": "SavedModel"}.get(
        format, format
    )
    stdout.print(f"wrote {what} to {report.path}: {_mib(report.size_bytes)}", soft_wrap=True)
    if report.operators:
        kind = "TFLite builtins" if format == "tflite" else "in ONNX's default domain"
        stdout.print(f"operators (all {kind}): {', '.join(report.operators)}", soft_wrap=True)
    found = report.agreement
    if found is None:
        if format != "checkpoint":  # a copy of the training state: nothing to measure
            stdout.print("agreement with the float model: not measured (give --data DATA_DIR)")
        return
    delta = round(100 * found.mean_iou_delta, 2) + 0.0  # + 0.0: never "-0.00"
    stdout.print(
        f"against the float model on {found.split} ({found.images} images): pixel agreement "
        f"{100 * found.pixel_agreement:.2f}%, mean IoU {100 * found.mean_iou_export:.2f}% vs "
        f"{100 * found.mean_iou_float:.2f}% (delta {delta:+.2f} points)",
        soft_wrap=True,
    )


@app.command()
def benchmark(
    model: Optional[Path] = typer.Argument(
        None, help="Trained model to time (default: a freshly initialised ENet)."
    ),
    what: str = typer.Option(
        "all",
        "--what",
        help="What to time (all: train, infer and pipeline; video: enet predict's whole path "
        "on 360x480 and 720x960 videos, per runtime).",
        metavar="<train|infer|pipeline|video|all>",
    ),
    size: str = typer.Option(
        "360x480", "--size", callback=_size_option, help="HEIGHTxWIDTH of the images."
    ),
    batch: int = typer.Option(4, "--batch", min=1, help="Training and pipeline batch."),
    iterations: int = typer.Option(20, "--iterations", min=2, help="Timed iterations each."),
    warmup: int = typer.Option(3, "--warmup", min=1, help="Untimed iterations first."),
    variants: Optional[str] = typer.Option(
        None,
        "--variants",
        help="Inference variants, comma-separated (default: all of keras,keras_xla,"
        "saved_model,tflite_float32,tflite_float16,tflite_int8,onnx; for video: keras,"
        "saved_model,tflite_float32,tflite_int8,onnx).",
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data", help="Preprocessed data for the pipeline and int8 (default: the sample)."
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Time training, inference and the input pipeline: medians and spread, machine, versions.

    Example: enet benchmark --what infer --variants keras,tflite_float32 --json bench.json
    """
    from enet_cli.benchmark import (
        INFER_VARIANTS,
        VIDEO_VARIANTS,
        BenchmarkRequest,
        What,
        default_variants,
        run_benchmark,
    )

    choices = [w.value for w in What]
    if what not in choices:
        raise typer.BadParameter(
            f"{what!r} is not one of {', '.join(choices)}", param_hint="--what"
        )
    known = VIDEO_VARIANTS if what == "video" else INFER_VARIANTS
    chosen = tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else None
    unknown = [v for v in chosen or () if v not in known]
    if unknown or chosen == ():
        raise typer.BadParameter(
            f"{', '.join(unknown) or variants!r}: choose from {', '.join(known)}",
            param_hint="--variants",
        )
    if json_path is not None:
        from enet_cli import outputs

        outputs.check_file_target(json_path, "--json")
    request = BenchmarkRequest(
        model=model,
        what=What(what),
        image_size=_parsed_size(size),
        batch=batch,
        iterations=iterations,
        warmup=warmup,
        data_dir=data_dir,
        variants=chosen or default_variants(what),
    )
    report = run_benchmark(request)
    found = report.machine
    table = Table(
        title=f"{found['cores']} cores, {found['cpu']}; load {found['load_average']}",
        caption=", ".join(f"{k} {v}" for k, v in report.versions.items())
        + f"; CPU flags {' '.join(found['cpu_flags']) or 'none of note'}",
    )
    for column in ("what", "variant", "median", "q1-q3", "min-max", "unit", "n", "note"):
        table.add_column(
            column, justify="left" if column in ("what", "variant", "note") else "right"
        )
    for m in report.results:
        table.add_row(
            m.what, m.variant, f"{m.median:.2f}", f"{m.q1:.2f}-{m.q3:.2f}",
            f"{m.min:.2f}-{m.max:.2f}", m.unit, str(m.n), m.note,
        )  # fmt: skip
    stdout.print(table)
    if json_path is not None:
        outputs.write_file(json_path, report.model_dump_json(indent=2) + "\n", "--json")
        stdout.print(f"report written to {json_path}", soft_wrap=True)


@app.command()
def demo(
    out: Path = typer.Option(Path("enet-demo"), "--out", "-o", help="Where everything goes."),
    epochs: int = typer.Option(40, "--epochs", min=1, help="Training epochs (8 images each)."),
) -> None:
    """Run the whole workflow on bundled CamVid images: preprocess, train, evaluate, predict.

    Example: enet demo --out enet-demo
    """
    from enet_cli.demo import run_demo

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


PANEL_LAUNCH = "SageMaker job"
# Training options that describe this machine, not the job (the container decides them).
_NOT_LAUNCHED = (*LOCAL_SETTINGS, "resume")


def launch(**options: Any) -> None:
    """Submit this package's `enet train` as an Amazon SageMaker training job.

    DATA is an s3:// URI or a local preprocessed directory (uploaded, skipping files already
    there). Every training option passes through as a hyperparameter.

    Example: enet launch data/camvid --mode ddp --epochs 300 --dry-run
    """
    from enet_cli.sagemaker.launch import launch as submit

    data = options.pop("data")
    launch_values = {k: options.pop(k) for k in list(options) if k in LaunchConfig.model_fields}
    launch_cfg = make_options(LaunchConfig, launch_values)
    cfg = load_config(options.pop("config"), _overrides(options))
    submit(cfg, launch_cfg, data)


def _config_params(model, section: str, panel: str, skip=()) -> List[inspect.Parameter]:
    """Keyword options for every field of the flat config `model` (help, defaults and
    limits from config.py; `--x/--no-x` for booleans that default to true)."""
    _OPTION_MODELS[section] = model
    params = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        annotation: Any = Optional[str]
        if info.annotation is bool:
            annotation = Optional[bool]
        elif info.annotation in (int, Optional[int]):
            annotation = Optional[int]
        elif info.annotation in (Path, Optional[Path]):
            annotation = Optional[Path]
        decls = None
        if info.annotation is bool:
            flag = option_name(name)
            decls = [f"{flag}/--no-{flag[2:]}"] if info.default is True else [flag]
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=_opt(section, name, panel, decls=decls),
                annotation=annotation,
            )
        )
    return params


def _register(command, name: str, leading: List[inspect.Parameter], options) -> None:
    """Give `command(**options)` the signature `leading + options` and add it to the app."""
    params = leading + list(options)
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    app.command(name)(command)


def _argument(name: str, help_text: str, annotation: Any = str, default: Any = ...):
    return inspect.Parameter(
        name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Argument(default, help=help_text, show_default=False),
        annotation=annotation,
    )


def _train_options() -> List[inspect.Parameter]:
    """train()'s options minus those that describe this machine: what a job passes on."""
    return [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for name, p in inspect.signature(train).parameters.items()
        if name not in _NOT_LAUNCHED
    ]


DATA_ARGUMENT = ("data", "s3:// URI or a local preprocessed directory.")

# launch takes train's options (minus the local ones) and LaunchConfig's: one list of
# training options for both commands, so every one of them passes through.
_register(
    launch,
    "launch",
    [_argument(*DATA_ARGUMENT)],
    _train_options() + _config_params(LaunchConfig, "launch", PANEL_LAUNCH),
)


# ---------------------------------------------------------------------------------------
# After training on SageMaker: tune, deploy, invoke, transform, jobs
# ---------------------------------------------------------------------------------------
PANEL_TUNE, PANEL_SERVE, PANEL_AWS = "Tuning job", "Endpoint / transform", "AWS"


def _pick(options: Dict[str, Any], model) -> Dict[str, Any]:
    return {k: options.pop(k) for k in list(options) if k in model.model_fields}


def tune(**options: Any) -> None:
    """Tune enet train's options with a SageMaker hyperparameter tuning job.

    Each training job is what enet launch would submit; the tuner varies learning rate,
    weight decay, dropout, class weighting and batch size (or --ranges FILE) to maximize the
    validation mean IoU. Every value is checked before anything is uploaded.

    Example: enet tune data/camvid --epochs 100 --max-jobs 12 --dry-run
    """
    from enet_cli.sagemaker.tune import tune as submit

    data = options.pop("data")
    tune_cfg = make_options(TuneConfig, _pick(options, TuneConfig))
    launch_cfg = make_options(LaunchConfig, _pick(options, LaunchConfig))
    if launch_cfg.job_name:
        raise typer.BadParameter("--job-name: name the tuning job with --tuning-job-name")
    cfg = load_config(options.pop("config"), _overrides(options))
    submit(cfg, launch_cfg, tune_cfg, data)


_register(
    tune,
    "tune",
    [_argument(*DATA_ARGUMENT)],
    _train_options()
    + _config_params(LaunchConfig, "launch", PANEL_LAUNCH)
    + _config_params(TuneConfig, "tune", PANEL_TUNE),
)

MODEL_ARGUMENT = (
    "model",
    "A training job name, an s3:// model.tar.gz, or a local run / SavedModel directory.",
)


def deploy(**options: Any) -> None:
    """Serve a trained ENet on a SageMaker endpoint (TensorFlow Serving + enet's handler).

    The endpoint takes image/png, image/jpeg or application/x-npy and answers with the class
    map as image/png, application/json (with per-class shares) or float16 probabilities
    (application/x-npy), by the Accept header. It bills while it exists: enet undeploy NAME.

    Example: enet deploy runs/camvid --wait, then enet invoke NAME photo.png --out out/
    """
    from enet_cli.sagemaker.deploy import deploy as create

    model = options.pop("model")
    create(model, make_options(DeployConfig, options))


_register(
    deploy,
    "deploy",
    [_argument(*MODEL_ARGUMENT)],
    _config_params(DeployConfig, "deploy", PANEL_SERVE),
)


def transform(**options: Any) -> None:
    """Segment every image under an S3 prefix with a SageMaker batch transform job.

    Each object under INPUT is one request to the same handler as enet deploy's endpoint;
    OUTPUT receives <key>.out with the reply (--accept). Billed for the job's duration only.

    Example: enet transform runs/camvid s3://bucket/frames/ s3://bucket/masks/ --wait
    """
    from enet_cli.sagemaker.deploy import transform as start

    model, source, target = options.pop("model"), options.pop("input"), options.pop("output")
    start(model, source, target, make_options(TransformConfig, options))


_register(
    transform,
    "transform",
    [
        _argument(*MODEL_ARGUMENT),
        _argument("input", "s3:// prefix of the images."),
        _argument("output", "s3:// prefix for the class maps (outside INPUT)."),
    ],
    _config_params(TransformConfig, "transform", PANEL_SERVE),
)


def undeploy(**options: Any) -> None:
    """Delete an endpoint, its endpoint configuration and its model (billing stops)."""
    from enet_cli.sagemaker.deploy import undeploy as delete

    name = options.pop("name")
    delete(name, make_options(AwsConfig, options))


_AWS_WHERE = ("region",)  # what undeploy/invoke/jobs need of AwsConfig
_AWS_SKIP = tuple(n for n in AwsConfig.model_fields if n not in _AWS_WHERE)
_register(
    undeploy,
    "undeploy",
    [_argument("name", "The endpoint's name.")],
    _config_params(AwsConfig, "aws", PANEL_AWS, skip=_AWS_SKIP),
)


def invoke(**options: Any) -> None:
    """Send images to an enet endpoint; write the PNGs enet predict writes.

    Each image's class map and overlay come from the endpoint's JSON reply.

    Example: enet invoke enet-2026-12-04-11-30-00-123 photo.png --out out/
    """
    from enet_cli.sagemaker.deploy import invoke as call

    endpoint, images, out = options.pop("endpoint"), options.pop("images"), options.pop("out")
    call(endpoint, [Path(p) for p in images], Path(out), make_options(AwsConfig, options))


_register(
    invoke,
    "invoke",
    [
        _argument("endpoint", "The endpoint's name (enet deploy printed it)."),
        _argument("images", "PNG or JPEG images (others are sent as PNG).", List[Path]),
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option("predictions", "--out", "-o", help="Directory for the PNGs."),
            annotation=Path,
        ),
    ],
    _config_params(AwsConfig, "aws", PANEL_AWS, skip=_AWS_SKIP),
)


jobs_app = typer.Typer(
    help="This tool's SageMaker training jobs: list, describe, logs, stop, download.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(jobs_app, name="jobs")
REGION_OPTION = typer.Option(None, "--region", help="AWS region (default: the AWS config's).")
JOB_ARGUMENT = typer.Argument(..., help="The training job's name.", show_default=False)


@jobs_app.command("list")
def jobs_list(
    region: Optional[str] = REGION_OPTION,
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many, newest first."),
) -> None:
    """The training jobs enet launch and enet tune submitted (tagged enet-cli)."""
    from enet_cli.sagemaker.jobs import list_jobs, print_jobs

    print_jobs(list_jobs(AwsConfig(region=region), limit))


@jobs_app.command("describe")
def jobs_describe(name: str = JOB_ARGUMENT, region: Optional[str] = REGION_OPTION) -> None:
    """Status, instances, final metrics, hyperparameters, model and failure of a job."""
    from enet_cli.sagemaker.jobs import describe

    describe(name, AwsConfig(region=region))


@jobs_app.command("logs")
def jobs_logs(
    name: str = JOB_ARGUMENT,
    follow: bool = typer.Option(False, "--follow", "-f", help="Until the job ends."),
    region: Optional[str] = REGION_OPTION,
) -> None:
    """The job's log lines from CloudWatch (every host's, by time)."""
    from enet_cli.sagemaker.jobs import logs

    logs(name, AwsConfig(region=region), follow)


@jobs_app.command("stop")
def jobs_stop(name: str = JOB_ARGUMENT, region: Optional[str] = REGION_OPTION) -> None:
    """Stop a running job (SageMaker keeps its model and checkpoints)."""
    from enet_cli.sagemaker.jobs import stop

    stop(name, AwsConfig(region=region))


@jobs_app.command("download")
def jobs_download(
    name: str = JOB_ARGUMENT,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory (default: ./NAME)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier download there."),
    region: Optional[str] = REGION_OPTION,
) -> None:
    """Download a finished job's model for enet evaluate, predict and export."""
    from enet_cli.sagemaker.jobs import download

    download(name, out, AwsConfig(region=region), force)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------
# Typer >= 0.2x vendors click; its exception classes are reachable through public names.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _fail(message: str, code: int) -> "None":
    import signal

    with contextlib.suppress(ValueError):  # only the main thread may; elsewhere irrelevant
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # more Ctrl-C while exiting: no traceback
    stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def main(argv: Optional[List[str]] = None) -> None:
    """Run `enet`: one line on stderr and an exit code for every user mistake, never a traceback."""
    try:
        result = app(args=argv, prog_name="enet", standalone_mode=False)
    except PeerLost as err:
        from enet_cli.train.launcher import is_worker

        if is_worker():  # the launcher reports which worker died and where its log is
            sys.exit(err.exit_code)
        _fail(str(err), err.exit_code)
    except EnetError as err:
        _fail(str(err), err.exit_code)
    except _ClickException as err:
        if type(err).__name__ == "NoArgsIsHelpError":
            stderr.print(err.format_message())
            sys.exit(err.exit_code)
        hint = ""
        ctx = getattr(err, "ctx", None)
        if ctx is not None:
            hint = f" (see {ctx.command_path} --help)"
        message = err.format_message().strip().splitlines()[0].replace("Value error, ", "")
        _fail(message + hint, err.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    sys.exit(result if isinstance(result, int) else 0)
