"""`enet evaluate`, `predict`, `export` and `benchmark`: a trained model on this machine."""

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from enet_cli.artifacts.model_ref import model_inputs
from enet_cli.commands.options import MODEL_HELP, check_size, flag, model_path, size_of
from enet_cli.core import ui
from enet_cli.core.errors import DataError, Interrupted
from enet_cli.core.formats import FORMATS, InferenceRuntime, ModelFormat, Quantize
from enet_cli.core.ui import stdout
from enet_cli.workflows.benchmark import What


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / 2**20:.2f} MiB"


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
    from enet_cli.serving.evaluate_request import check_evaluation

    model = model_path(model)
    check_evaluation(model, data_dir, split, json_path, confusion_csv)  # before TensorFlow
    from enet_cli.serving.evaluate import evaluate as run_evaluate
    from enet_cli.serving.tta import parse_tta

    augment = None if tta is None else parse_tta(tta)
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


def predict(
    model: Path = typer.Argument(
        ...,
        help="Run directory, SavedModel, checkpoint directory, TFLite or ONNX export, or a "
        "preset's name (enet models).",
    ),
    inputs: List[Path] = typer.Argument(
        ...,
        help="Images, videos (mp4, mov, avi, mkv, webm), directories of either (searched "
        "recursively), or - for raw RGB frames on stdin.",
    ),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Output directory."),
    runtime: Optional[InferenceRuntime] = typer.Option(
        None,
        "--runtime",
        help="Run the model in this runtime (default: the fastest one MODEL has).",
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
        callback=check_size,
        help="HEIGHTxWIDTH of the raw RGB24 frames read from - (stdin).",
    ),
    fps: float = typer.Option(30.0, "--fps", help="Frame rate of the frames read from -."),
    fps_counter: bool = flag(
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
    from enet_cli.serving.inputs import (
        PredictOptions,
        check_inputs_kept,
        check_out_dir,
        collect_inputs,
        require_video_support,
    )

    options = PredictOptions(
        out=out,
        batch=batch,
        classes_video=classes_video,
        summary=summary,
        glob=glob,
        stream_size=size_of(stream_size),
        stream_rate=fps,
        fps_counter=fps_counter,
    )
    kept = model_inputs(model)  # the model's files: no output may replace them
    options.check(kept)
    found = collect_inputs(inputs, glob)
    check_out_dir(out, kept)
    check_inputs_kept(found, out)
    require_video_support(found, options.stream_size)
    from enet_cli.serving.predict import Prediction, parallel_for, run_predict
    from enet_cli.serving.runtimes import load_predictor

    predictor = load_predictor(model_path(model), runtime, parallel_for(found))
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
    troubled = {item.source for item in report.skipped}  # an input may have two problems
    if len(troubled) == 1 and len(found) == 1:
        raise DataError(report.skipped[0].reason)
    if troubled:
        raise DataError(
            f"{len(troubled)} of {len(found)} inputs skipped or incomplete (see the "
            f"warnings above); the others are in {out}"
        )


def export(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to create."),
    format: ModelFormat = typer.Option(
        ModelFormat.saved_model,
        "--format",
        help="onnx needs the \\[onnx] extra; checkpoint: the run's checkpoints as whole ones, "
        "e.g. an SMP run's per-partition checkpoints merged.",
    ),
    quantize: Quantize = typer.Option(
        Quantize.none,
        "--quantize",
        help="TFLite weights/activations: none (float32), float16, or int8 (full integer, "
        "calibrated on training images; needs --data).",
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
        callback=check_size,
        help="HEIGHTxWIDTH a TFLite file takes (default: the training size), or an ONNX "
        "file (default: any size).",
    ),
    calibration_images: int = typer.Option(
        16, "--calibration-images", min=1, help="Training images int8 calibrates on."
    ),
    xla: bool = flag(False, "--xla", help="SavedModel: serve XLA-compiled."),
    force: bool = flag(False, "--force", help="Replace an earlier export at --out."),
) -> None:
    """Export a trained model: SavedModel, ONNX, or TFLite in float32, float16 or int8.

    Prints the size on disk and, with --data, how often the export predicts the float
    model's class and the mean IoU of both on --split.

    Example: enet export runs/camvid --format tflite --quantize int8 --data data/camvid
    --out enet-int8
    """
    from enet_cli.serving.export_request import ExportRequest

    request = ExportRequest(
        source=model_path(model),
        out=out,
        format=format,
        quantize=quantize,
        data_dir=data_dir,
        split=split,
        image_size=size_of(size),
        calibration_images=calibration_images,
        xla=xla,
        force=force,
    )
    request.check()
    if request.format is ModelFormat.checkpoint:
        from enet_cli.train.state import export_checkpoints as export_model
    else:
        from enet_cli.serving.export import export_model
    what = FORMATS[format].title
    if format is ModelFormat.tflite:
        what += f" {quantize.label}"
    with ui.status(f"exporting {model} as {what}"):
        report = export_model(request)
    stdout.print(f"wrote {what} to {report.path}: {_mib(report.size_bytes)}", soft_wrap=True)
    if report.operators:
        kind = "TFLite builtins" if format is ModelFormat.tflite else "in ONNX's default domain"
        stdout.print(f"operators (all {kind}): {', '.join(report.operators)}", soft_wrap=True)
    found = report.agreement
    if found is None:
        if format is not ModelFormat.checkpoint:  # a copy of the training state: nothing to measure
            stdout.print("agreement with the float model: not measured (give --data DATA_DIR)")
        return
    delta = round(100 * found.mean_iou_delta, 2) + 0.0  # + 0.0: never "-0.00"
    stdout.print(
        f"against the float model on {found.split} ({found.images} images): pixel agreement "
        f"{100 * found.pixel_agreement:.2f}%, mean IoU {100 * found.mean_iou_export:.2f}% vs "
        f"{100 * found.mean_iou_float:.2f}% (delta {delta:+.2f} points)",
        soft_wrap=True,
    )
    lost = found.loss()
    if lost:
        helps = (
            f"calibrate on more images (--calibration-images {4 * calibration_images}) or "
            "export --quantize float16, which keeps the float model's classes"
            if quantize is Quantize.int8
            else "check the model and --size"
        )
        ui.warn(f"the {what} export {lost} on {found.split}; {helps}")


def benchmark(
    model: Optional[Path] = typer.Argument(
        None,
        help="Trained model or preset to time (default: a freshly initialised ENet). A "
        "TFLite or ONNX export is timed as it is, in its own runtime (--what infer or "
        "video), without TensorFlow.",
    ),
    what: What = typer.Option(
        What.all,
        "--what",
        help="What to time (all: train, infer and pipeline; video: enet predict's whole path "
        "on 360x480 and 720x960 videos, per runtime).",
    ),
    size: Optional[str] = typer.Option(
        None,
        "--size",
        callback=check_size,
        help="HEIGHTxWIDTH of the images (default: the model's training size; 360x480 "
        "without a model).",
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
    from enet_cli.workflows.benchmark import (
        INFER_VARIANTS,
        VIDEO_VARIANTS,
        BenchmarkRequest,
        benchmark_size,
        check_export_request,
        default_variants,
        exported_runtime,
        run_benchmark,
    )

    known = VIDEO_VARIANTS if what is What.video else INFER_VARIANTS
    chosen = tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else None
    model = model_path(model) if model is not None else None
    export = exported_runtime(model)  # a TFLite or ONNX export: timed as it is
    if export is not None:
        check_export_request(export, what, chosen)
        known = chosen = (export.value,)
    unknown = [v for v in chosen or () if v not in known]
    if unknown or chosen == ():
        raise typer.BadParameter(
            f"{', '.join(unknown) or variants!r}: choose from {', '.join(known)}",
            param_hint="--variants",
        )
    if json_path is not None:
        from enet_cli.core import outputs

        kept = [*(model_inputs(model) if model is not None else ()), data_dir]
        outputs.check_file_target(json_path, "--json", kept)
    request = BenchmarkRequest(
        model=model,
        what=what,
        image_size=size_of(size) if size else None,
        batch=batch,
        iterations=iterations,
        warmup=warmup,
        data_dir=data_dir,
        variants=chosen or default_variants(what.value),
    )
    (height, width), why = benchmark_size(request)
    report = run_benchmark(request)
    found = report.machine
    table = Table(
        title=f"{height}x{width} ({why}); {found['cores']} cores, {found['cpu']}; load "
        f"{found['load_average']}",
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
        outputs.write_file(json_path, report.model_dump_json(indent=2) + "\n", "--json", kept)
        stdout.print(f"report written to {json_path}", soft_wrap=True)


def models(
    json_out: bool = flag(False, "--json", help="Print the registry as JSON instead."),
) -> None:
    """List the presets: trained ENets that ship with enet, usable by name as MODEL.

    Example: enet predict camvid street.png
    """
    from enet_cli.artifacts.presets import presets, size_of

    found = presets()
    if json_out:
        stdout.print_json(data={name: p.model_dump(exclude={"name"}) for name, p in found.items()})
        return
    table = Table(title="presets (use the name as MODEL)")
    for column in ("name", "description", "size", "parameters", "test mean IoU", "weights"):
        table.add_column(column, justify="right" if column in ("parameters",) else "left")
    for name, preset in found.items():
        height, width = size_of(preset)
        test = preset.test
        table.add_row(
            name,
            preset.description,
            f"{height}x{width}",
            f"{preset.parameters:,}",
            f"{100 * test.mean_iou:.1f} ({test.images} {test.split} images)",
            f"enet-cli {preset.source.commit}, epoch {preset.source.epoch}",
        )
    stdout.print(table)


def register(app: typer.Typer) -> None:
    for command in (evaluate, predict, export, benchmark, models):
        app.command()(command)
