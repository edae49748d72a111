"""`enet benchmark`: how fast ENet trains, infers and is fed on this machine, honestly timed.

Every figure is the median of many iterations after warm-up, with its spread (min, max,
quartiles), next to what the machine is (cores, CPU flags, load) and what software ran
(Python, TensorFlow, Keras): shared machines are noisy, so compare figures as ratios
measured in the same run. Training times the engine's real step (weighted loss, Adam,
weight decay); inference times one image per call through every way ENet can be served:
Keras in graph mode, Keras XLA-compiled, the exported SavedModel, TFLite in float32,
float16 and int8 (XNNPACK), and ONNX InferenceRuntime; the input pipeline times decoding plus
augmentation; video times `enet predict`'s whole path on a video, per runtime.
"""

import os
import statistics
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from pydantic import BaseModel

from enet_cli.core import ui
from enet_cli.core.environment import machine, package_versions
from enet_cli.core.errors import ConfigError
from enet_cli.core.formats import FORMATS, InferenceRuntime

INFER_VARIANTS = (
    "keras",
    "keras_xla",
    "saved_model",
    "tflite_float32",
    "tflite_float16",
    "tflite_int8",
    "onnx",
)
# The runtimes a video is predicted with (`enet predict --runtime`), TFLite twice.
VIDEO_VARIANTS = ("keras", "saved_model", "tflite_float32", "tflite_int8", "onnx")
VIDEO_SIZES = ((360, 480), (720, 960))  # CamVid's own frames, and those frames at 2x
VIDEO_FRAMES = 64


def default_variants(what: str) -> Tuple[str, ...]:
    """Every variant this installation can run: ONNX needs the [onnx] extra."""
    import importlib.util

    found = VIDEO_VARIANTS if what == "video" else INFER_VARIANTS
    have_onnx = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime"))
    return tuple(v for v in found if v != "onnx" or have_onnx)


class What(str, Enum):
    train = "train"
    infer = "infer"
    pipeline = "pipeline"
    video = "video"
    all = "all"


DEFAULT_SIZE = (360, 480)  # CamVid's, the published recipe's


class BenchmarkRequest(BaseModel):
    model: Optional[Path] = None  # trained weights; None: a freshly initialised ENet
    what: What = What.all
    image_size: Optional[Tuple[int, int]] = None  # None: the model's own (see benchmark_size)
    batch: int = 4  # training and pipeline batch; inference is one image per call
    iterations: int = 20
    warmup: int = 3
    data_dir: Optional[Path] = None  # pipeline and int8 calibration; default: bundled sample
    variants: Tuple[str, ...] = INFER_VARIANTS
    video_sizes: Tuple[Tuple[int, int], ...] = VIDEO_SIZES
    video_frames: int = VIDEO_FRAMES


class Measurement(BaseModel):
    what: str
    variant: str
    unit: str  # "images/s" or "ms/image"
    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int
    note: str = ""

    @classmethod
    def of(cls, what: str, variant: str, unit: str, values: List[float], note: str = ""):
        q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        return cls(
            what=what,
            variant=variant,
            unit=unit,
            median=statistics.median(values),
            q1=q1,
            q3=q3,
            min=min(values),
            max=max(values),
            n=len(values),
            note=note,
        )


class BenchmarkReport(BaseModel):
    machine: Dict[str, object]
    versions: Dict[str, str]
    settings: Dict[str, object]
    results: List[Measurement] = []


def versions(tensorflow: bool = True) -> Dict[str, str]:
    """What ran: TensorFlow's side only when it ran (an exported TFLite or ONNX model is
    timed without it), and the standalone runtimes that are installed."""
    found = package_versions(("ai-edge-litert", "onnxruntime"))
    if tensorflow:
        from enet_cli.core.backend import keras, tf

        found.update(
            tensorflow=tf.__version__,
            keras=_keras_version(keras),
            onednn="off" if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" else "on",
            fused_kernels=_fused_kernels_state(),
        )
    return found


def exported_runtime(model: Optional[Path]) -> Optional[InferenceRuntime]:
    """The runtime of a TFLite or ONNX export at `model` (timed as it is, without
    TensorFlow); None for no model or one that TensorFlow runs (exported anew per variant)."""
    if model is None:
        return None
    from enet_cli.artifacts.model_ref import locate

    runtime = FORMATS[locate(model).format].runtimes[0]
    return None if runtime.needs_tensorflow else runtime


def check_export_request(runtime: InferenceRuntime, what: "What", variants) -> None:
    """An export is timed as it is: by its own runtime, for inference or video."""
    if what not in (What.infer, What.video):
        raise ConfigError(
            f"--what {what.value}: an exported {runtime.value} model can be timed with "
            "--what infer or --what video; train and pipeline need a run or SavedModel"
        )
    other = [v for v in variants or () if v != runtime.value]
    if other:
        raise ConfigError(
            f"--variants {','.join(other)}: the model is a {runtime.value} export, which runs "
            f"in {runtime.value} only; drop --variants, or give a run or SavedModel"
        )


def _fused_kernels_state() -> str:
    """Whether float32 training ran model/fused.py's kernels, and if not, why."""
    from enet_cli.model import fused

    if fused.prelu() is not None:
        return "on"
    return f"off ({fused.unavailable_reason() or 'turned off, or a GPU'})"


def _keras_version(keras) -> str:
    """tf.keras is tf-keras on TF >= 2.16 (which has the version), TF's own Keras before."""
    try:
        import tf_keras

        return tf_keras.__version__
    except ImportError:
        return getattr(keras, "__version__", "bundled with TensorFlow")


def _times(call: Callable[[], object], warmup: int, iterations: int) -> List[float]:
    """Seconds per call, warm-up calls (tracing, compilation, allocation) excluded."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def benchmark_size(request: BenchmarkRequest) -> Tuple[Tuple[int, int], str]:
    """The size to time at and why: as asked, else the size the model was trained at (a
    model trained at 180x240 is used at 180x240), else CamVid's."""
    if request.image_size is not None:
        return tuple(request.image_size), "--size"
    if request.model is not None:
        from enet_cli.artifacts.model_ref import locate

        return tuple(locate(request.model).meta.image_size), "the model's training size"
    return DEFAULT_SIZE, "CamVid's, the default without a model"


def run_benchmark(request: BenchmarkRequest) -> BenchmarkReport:
    size, _ = benchmark_size(request)
    request = request.model_copy(update={"image_size": size})
    what = request.what
    export = exported_runtime(request.model)
    if export is not None:
        check_export_request(export, what, request.variants)
    report = BenchmarkReport(
        machine=machine(),
        versions=versions(tensorflow=export is None),
        settings={
            "what": what.value,
            "image_size": list(request.image_size),
            "batch": request.batch,
            "iterations": request.iterations,
            "warmup": request.warmup,
            "model": str(request.model) if request.model else "freshly initialised ENet",
        },
    )
    if export is not None:
        with tempfile.TemporaryDirectory(prefix="enet-benchmark-") as scratch:
            report.results.extend(_time_export(request, export, Path(scratch)))
        return report
    with tempfile.TemporaryDirectory(prefix="enet-benchmark-") as scratch:
        scratch_dir = Path(scratch)
        data_dir = request.data_dir
        if what in (What.pipeline, What.all) or (
            what in (What.infer, What.video) and "tflite_int8" in request.variants
        ):
            data_dir = data_dir or _sample_data(scratch_dir / "data", request.image_size)
        if what in (What.train, What.all):
            report.results.append(_train(request))
        if what in (What.infer, What.all):
            report.results.extend(_infer(request, scratch_dir, data_dir))
        if what in (What.pipeline, What.all):
            report.results.append(_pipeline(request, data_dir))
        if what == What.video:
            report.results.extend(_video(request, scratch_dir, data_dir))
    return report


def _model(request: BenchmarkRequest, data_dir: Optional[Path] = None):
    """(Keras ENet, RunMeta): the trained one at request.model, else a fresh one for the
    classes of `data_dir` (CamVid's 11 when none is given)."""
    from enet_cli.artifacts.run import RunMeta
    from enet_cli.core.config import ModelConfig
    from enet_cli.data.manifest import load_manifest
    from enet_cli.model import build_enet
    from enet_cli.serving.runtimes import load_keras_model

    if request.model is not None:
        return load_keras_model(request.model)
    if data_dir is not None:
        manifest = load_manifest(data_dir)
        meta = RunMeta.from_manifest(ModelConfig(num_classes=manifest.num_classes), manifest)
    else:
        names = [f"class{k}" for k in range(11)]
        meta = RunMeta(
            model=ModelConfig(num_classes=11),
            image_size=request.image_size,
            class_names=names,
            class_colors=[(k, k, k) for k in range(11)],
            ignore_index=11,
        )
    return build_enet(meta.model, None), meta


def _train(request: BenchmarkRequest) -> Measurement:
    from enet_cli.core.backend import tf
    from enet_cli.core.config import TrainConfig, model_size
    from enet_cli.train.engines.single import SingleEngine
    from enet_cli.train.optim import build_update
    from enet_cli.train.task import SegmentationTask

    model, meta = _model(request)
    k = meta.model.num_classes
    ui.info(f"train: {request.batch} x {request.image_size[0]}x{request.image_size[1]} steps")
    task = SegmentationTask(k, meta.ignore_index, tuple([1.0] * k))
    update = build_update(TrainConfig(), model.trainable_variables)
    engine = SingleEngine()
    engine.create_optimizer_slots(update.optimizer, model)  # one trace, as enet train's
    step = engine.make_train_step(model, update, task)
    shape = (request.batch, *model_size(*request.image_size))  # as the training batches
    images = tf.random.uniform((*shape, 3), seed=1)
    labels = tf.random.uniform(shape, maxval=k + 1, dtype=tf.int32, seed=2)
    seconds = _times(
        lambda: step((images, labels))["loss"].numpy(), request.warmup, request.iterations
    )
    rates = [request.batch / s for s in seconds]
    return Measurement.of("train", "keras float32", "images/s", rates, f"batch {request.batch}")


def _infer(request: BenchmarkRequest, scratch: Path, data_dir: Optional[Path]) -> List[Measurement]:
    from enet_cli.core.backend import tf
    from enet_cli.core.formats import ModelFormat
    from enet_cli.pixels.preprocessor import run_padded, to_unit
    from enet_cli.serving.export import ExportRequest, export_model, serving_model
    from enet_cli.serving.runners import TFLiteRunner

    model, meta = _model(request, data_dir)
    meta = meta.model_copy(update={"image_size": tuple(request.image_size)})
    copy = serving_model(model, meta)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, *request.image_size, 3), dtype=np.uint8)
    image = to_unit(pixels)
    weights = scratch / "weights"
    if request.model is None:  # export needs a model on disk: save the fresh one
        from enet_cli.serving.export import export_saved_model

        export_saved_model(copy, meta, weights)
    source = request.model or weights
    results = []
    for variant in request.variants:
        ui.info(f"infer: {variant}")
        note = ""
        if variant in ("keras", "keras_xla"):
            fn = tf.function(
                lambda x: run_padded(copy, x),
                jit_compile=(variant == "keras_xla") or None,
                autograph=False,
            )
            call = lambda fn=fn: fn(image).numpy()  # noqa: E731
        elif variant == "saved_model":
            out = scratch / variant
            export_model(ExportRequest(source=source, out=out))
            serve = tf.saved_model.load(str(out)).signatures["serving_default"]
            call = lambda serve=serve: serve(images=tf.constant(pixels))["classes"].numpy()  # noqa: E731
        elif variant.startswith("tflite_"):
            quantize = variant.split("_", 1)[1].replace("float32", "none")
            out = scratch / variant
            report = export_model(
                ExportRequest(
                    source=source,
                    out=out,
                    format=ModelFormat.tflite,
                    quantize=quantize,
                    data_dir=data_dir if quantize == "int8" else None,
                    image_size=request.image_size,
                    calibration_images=8,
                    measure_agreement=False,
                )
            )
            runner = TFLiteRunner(report.path)
            call = lambda runner=runner: runner(pixels)  # noqa: E731
            note = f"{report.size_bytes / 2**20:.2f} MiB"
        elif variant == "onnx":
            from enet_cli.serving.runners import OnnxRunner

            onnx_request = ExportRequest(source=source, out=scratch / variant, format="onnx")
            report = export_model(onnx_request)
            runner = OnnxRunner(report.path)
            call = lambda runner=runner: runner(pixels)  # noqa: E731
            note = f"{report.size_bytes / 2**20:.2f} MiB, onnxruntime CPU"
        else:
            raise ValueError(f"unknown inference variant {variant!r}")
        seconds = _times(call, request.warmup, request.iterations)
        results.append(
            Measurement.of("infer", variant, "ms/image", [1000 * s for s in seconds], note)
        )
    return results


def _time_export(
    request: BenchmarkRequest, runtime: InferenceRuntime, scratch: Path
) -> List[Measurement]:
    """A TFLite or ONNX export, as it is, in its runtime: one image per call (infer), or
    `enet predict`'s whole path on videos (video). No TensorFlow."""
    from enet_cli.serving.runtimes import load_predictor

    if request.what == What.video:
        return _video(request, scratch, None, {runtime.value: request.model})
    predictor = load_predictor(request.model, runtime)
    height, width = predictor.fixed_size or request.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    ui.info(f"infer: {runtime.value} ({predictor.source})")
    seconds = _times(lambda: predictor.run(pixels), request.warmup, request.iterations)
    from enet_cli.artifacts.model_ref import locate

    megabytes = locate(request.model).path.stat().st_size / 2**20
    note = f"{megabytes:.2f} MiB, the export as it is"
    return [Measurement.of("infer", runtime.value, "ms/image", [1000 * s for s in seconds], note)]


def _exported(request: BenchmarkRequest, variant: str, scratch: Path, data_dir) -> Path:
    """The model (request.model, or a fresh ENet saved once) in the form `variant` runs."""
    from enet_cli.serving.export import (
        ExportRequest,
        export_model,
        export_saved_model,
        serving_model,
    )

    source = request.model
    if source is None:
        source = scratch / "weights"
        if not source.exists():
            model, meta = _model(request, data_dir)
            meta = meta.model_copy(update={"image_size": tuple(request.image_size)})
            export_saved_model(serving_model(model, meta), meta, source)
    if variant in ("keras", "saved_model"):
        return source
    out = scratch / f"video-{variant}"
    if not out.exists():
        fmt, _, quantize = variant.partition("_")
        export_model(
            ExportRequest(
                source=source,
                out=out,
                format=fmt,
                quantize=quantize.replace("float32", "none") or "none",
                data_dir=data_dir if quantize == "int8" else None,
                image_size=request.image_size if fmt == "tflite" else None,
                calibration_images=8,
                measure_agreement=False,
            )
        )
    return out


def _sample_video(path: Path, size: Tuple[int, int], frames: int) -> Path:
    """A video of the bundled CamVid frames (a real drive), resized to `size`, H.264."""
    from fractions import Fraction

    from PIL import Image

    from enet_cli.pixels.preprocessor import resize_image
    from enet_cli.serving.video import VideoWriter
    from enet_cli.workflows.demo import DEMO_DATA

    pictures = [
        resize_image(Image.open(p).convert("RGB"), size, "bilinear")
        for p in sorted((DEMO_DATA / "train").glob("*.png"))
    ]
    writer = VideoWriter(path, size, Fraction(30))
    for k in range(frames):
        writer.write(pictures[k % len(pictures)])
    writer.close()
    return path


def _video(
    request: BenchmarkRequest, scratch: Path, data_dir, given: Optional[Dict[str, Path]] = None
) -> List[Measurement]:
    """Frames/s of `enet predict` on a video, the whole path: decode, resize, infer, argmax
    at the frame's size, overlay, encode (three threads, as predict runs them). `given`:
    variant -> an export to time as it is (instead of exporting request.model anew)."""
    from enet_cli.serving.inputs import PredictOptions
    from enet_cli.serving.predict import VIDEO_PARALLEL, predict_video
    from enet_cli.serving.runtimes import load_predictor
    from enet_cli.serving.video import VideoFile

    results = []
    videos = {
        size: _sample_video(scratch / f"drive-{size[0]}x{size[1]}.mp4", size, request.video_frames)
        for size in request.video_sizes
    }
    out = scratch / "video-out"
    out.mkdir()
    options = PredictOptions(out=out, batch=request.batch)
    for variant in given or request.variants:
        runtime = InferenceRuntime("tflite" if variant.startswith("tflite") else variant)
        exported = (given or {}).get(variant) or _exported(request, variant, scratch, data_dir)
        predictor = load_predictor(exported, runtime, VIDEO_PARALLEL)
        results.append(_video_model(request, variant, predictor, options.batch))
        for size, clip in videos.items():
            ui.info(f"video: {variant} on {size[0]}x{size[1]} frames")
            rates = []
            for k in range(request.warmup + max(2, request.iterations // 5)):
                done = predict_video(predictor, VideoFile(clip), options, ui.StopRequest())
                if k >= request.warmup:
                    rates.append(done.frames / done.seconds)
            model = "x".join(map(str, predictor.meta.image_size))
            results.append(
                Measurement.of(
                    "video",
                    f"{variant} {size[0]}x{size[1]}",
                    "frames/s",
                    rates,
                    f"{request.video_frames} frames; model at {model}",
                )
            )
    return results


def _video_model(request, variant: str, predictor, batch: int) -> Measurement:
    """Frames/s of the model alone as the video path runs it (the same runtime copies,
    batches of `batch` frames at the model's size, as many batches in flight), the
    ceiling of that path."""
    from concurrent.futures import ThreadPoolExecutor

    pixels = np.random.default_rng(0).integers(
        0, 256, (batch, *predictor.meta.image_size, 3), np.uint8
    )
    in_flight = predictor.parallel
    with ThreadPoolExecutor(in_flight) as pool:
        seconds = _times(
            lambda: list(pool.map(lambda _: predictor.run(pixels, False), range(in_flight))),
            request.warmup,
            10,
        )
    return Measurement.of(
        "video",
        f"{variant} model",
        "frames/s",
        [batch * in_flight / s for s in seconds],
        f"batches of {batch}, {in_flight} in flight",
    )


def _pipeline(request: BenchmarkRequest, data_dir: Path) -> Measurement:
    from enet_cli.core.config import DataConfig
    from enet_cli.data.dataset import make_dataset
    from enet_cli.data.manifest import load_manifest

    manifest = load_manifest(data_dir)
    data = DataConfig(data_dir=data_dir, image_size=manifest.image_size)
    batch = min(request.batch, manifest.splits["train"].records)
    ui.info(f"pipeline: {data_dir}, batch {batch}, default augmentation")
    state = {"epoch": 0, "iterator": None}

    def next_batch():
        while True:
            if state["iterator"] is None:
                dataset = make_dataset(
                    data, manifest, "train", batch, training=True, epoch=state["epoch"]
                )
                state["iterator"] = iter(dataset)
            try:
                images, _ = next(state["iterator"])
                return images.numpy()
            except StopIteration:
                state["iterator"], state["epoch"] = None, state["epoch"] + 1

    per_batch = _times(next_batch, request.warmup, request.iterations * 4)
    rates = [batch / s for s in per_batch]
    size = "x".join(map(str, manifest.image_size))
    return Measurement.of("pipeline", "tf.data decode+augment", "images/s", rates, size)


def _sample_data(out: Path, size: Tuple[int, int]) -> Path:
    """The bundled CamVid sample, preprocessed at `size` (pipeline and int8 calibration)."""
    from enet_cli.core.config import PreprocessConfig
    from enet_cli.data.preprocess import preprocess
    from enet_cli.workflows.demo import DEMO_DATA

    ui.info(f"preprocessing the bundled sample at {size[0]}x{size[1]}")
    preprocess(
        PreprocessConfig(
            input_dir=DEMO_DATA, output_dir=out, image_size=f"{size[0]}x{size[1]}", workers=1
        )
    )
    return out
