"""`enet export`: a trained ENet as a SavedModel, TFLite or ONNX file, measured against itself.

The SavedModel's serving signature takes uint8 images of any batch and any H x W (padded
to ENet's multiple of 8 inside and cropped back; the weights do not depend on the size),
so one SavedModel serves several resolutions; `--xla` compiles it. TFLite files
(tflite.py) have one fixed size; ONNX files (onnx_model.py) are dynamic like the
SavedModel unless `--size` fixes them. `enet.json` beside each names the classes, colours
and size for evaluate and predict. With the data
given, the export is scored against the float model on a split: the share of pixels where
both predict the same class and each one's mean IoU (quantization's cost, in numbers).
"""

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from pydantic import BaseModel

from enet_cli.artifacts.run import RunMeta
from enet_cli.core import outputs
from enet_cli.core.backend import keras, tf
from enet_cli.core.config import DataConfig, check_image_size
from enet_cli.core.errors import DataError
from enet_cli.core.formats import ONNX_NAME, TFLITE_NAME, ModelFormat, Quantize
from enet_cli.core.metrics import confusion_matrix, segmentation_metrics
from enet_cli.data.dataset import make_dataset
from enet_cli.data.manifest import load_manifest
from enet_cli.model import build_enet
from enet_cli.pixels.preprocessor import (
    classes_at,
    resize_classes,
    resize_image,
    run_padded,
    to_pixels,
    to_unit,
)
from enet_cli.serving.export_request import ExportRequest
from enet_cli.serving.runners import TFLiteRunner
from enet_cli.serving.tflite import convert

# Signatures for the SageMaker endpoint's handler (container/handler.py), beside
# serving_default: the model-size pixels the handler resized with Pillow (as predict does)
# and the photo's size -> the class map at that size, as predict computes it (preprocessor.
# classes_at); and the softmax probabilities at the model's size.
SEGMENT, PROBABILITIES = "segment", "probabilities"


def serving_model(model, meta: RunMeta):
    """A float32, size-agnostic copy of `model` (also when it was trained in mixed precision)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_enet(meta.model, None)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def export_saved_model(
    model,
    meta: RunMeta,
    out_dir: Path,
    xla: bool = False,
    force: bool = True,
    inputs: Sequence[Optional[Path]] = (),
    option: str = "--out",
) -> Path:
    """Write the SavedModel to `out_dir` by the rules of outputs.claim (staged, then renamed;
    only an earlier export is ever replaced).

    `xla` saves the serving function with jit_compile: TensorFlow Serving and
    `tf.saved_model.load` then run it XLA-compiled (compiled once per input shape).
    """
    with outputs.claim(Path(out_dir), "export", force, inputs, option) as staged:
        write_saved_model(model, meta, staged.path, xla)
        return staged.publish()


def write_saved_model(
    model, meta: RunMeta, directory: Path, xla: bool = False, for_endpoint: bool = False
) -> None:
    """The SavedModel and its enet.json, written straight into `directory`; `for_endpoint`
    adds the signatures the SageMaker endpoint's handler calls."""
    copy = serving_model(model, meta)

    images = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    # ENet has no tensor-dependent Python control flow: autograph off traces faster.
    graph = dict(jit_compile=xla or None, autograph=False)

    @tf.function(input_signature=[images], **graph)
    def serve(images):
        logits = run_padded(copy, to_unit(images))
        return {"logits": logits, "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    @tf.function(input_signature=[images, tf.TensorSpec([None, 2], tf.int32, "size")], **graph)
    def segment(images, size):
        return {"classes": classes_at(run_padded(copy, to_unit(images)), size[0])}

    @tf.function(input_signature=[images], **graph)
    def probabilities(images):
        return {"probabilities": tf.nn.softmax(run_padded(copy, to_unit(images)))}

    # A plain tf.Module that tracks only the variables: saving the Keras model itself would
    # also trace every layer's call for Keras reloading, which takes 20 s and serves nobody.
    module = tf.Module()
    module.variables_ = list(copy.weights)
    module.serve = serve
    signatures = {"serving_default": serve}
    if for_endpoint:  # tracing each signature costs seconds: only where they serve
        signatures.update({SEGMENT: segment, PROBABILITIES: probabilities})
    tf.saved_model.save(module, str(directory), signatures=signatures)
    meta.write(directory)


# Where an export's difference from the float model stops being rounding: int8 of a
# well-trained ENet keeps ~98% of the pixels' classes and its mean IoU within a point.
AGREEMENT_FLOOR = 0.95
IOU_LOSS_POINTS = 1.0


class Agreement(BaseModel):
    """The exported model against the float Keras model on one split of the data."""

    split: str
    images: int
    pixel_agreement: float  # share of non-void pixels where both predict the same class
    mean_iou_float: float
    mean_iou_export: float

    @property
    def mean_iou_delta(self) -> float:
        return self.mean_iou_export - self.mean_iou_float

    def loss(self) -> Optional[str]:
        """What the export lost that a user must hear about (None: within the bounds): its
        classes differ from the float model's on more than AGREEMENT_FLOOR's share of the
        pixels, or its mean IoU is more than IOU_LOSS_POINTS lower."""
        lost = []
        if self.pixel_agreement < AGREEMENT_FLOOR:
            lost.append(f"agrees with the float model on {100 * self.pixel_agreement:.1f}% of "
                        f"the pixels (below {100 * AGREEMENT_FLOOR:.0f}%)")  # fmt: skip
        if 100 * self.mean_iou_delta < -IOU_LOSS_POINTS:
            lost.append(f"loses {-100 * self.mean_iou_delta:.1f} points of mean IoU")
        return " and ".join(lost) or None


class ExportReport(BaseModel):
    path: Path
    format: ModelFormat
    quantize: Quantize
    image_size: Optional[Tuple[int, int]]
    size_bytes: int
    operators: List[str] = []
    agreement: Optional[Agreement] = None


def export_model(request: ExportRequest) -> ExportReport:
    """Load the trained model, write the export atomically, measure it against the float model."""
    from enet_cli.serving.runtimes import load_keras_model, load_predictor

    request.check()
    fmt, quantize = request.format, request.quantize
    if fmt == ModelFormat.checkpoint:  # a run's training state: train.state.export_checkpoints
        raise ValueError("export_model does not write checkpoints; use export_checkpoints")
    manifest = None
    if request.data_dir is not None:  # refusals before the model loads
        manifest = load_manifest(request.data_dir, splits=[request.split], split_option="--split")
    model, meta = load_keras_model(request.source)
    if manifest is not None:
        _check_classes(request, manifest, meta)
    size = tuple(request.image_size or meta.image_size)
    check_image_size(*size)
    meta = meta.model_copy(update={"image_size": size})
    out = Path(request.out)
    inputs = [request.source, request.data_dir]
    if fmt == ModelFormat.saved_model:
        export_saved_model(model, meta, out, request.xla, request.force, inputs)
        report_path, operators = out, []
    elif fmt == ModelFormat.onnx:
        from enet_cli.serving.onnx_model import convert as to_onnx
        from enet_cli.serving.runners import OnnxRunner

        blob = to_onnx(serving_model(model, meta), request.image_size)
        report_path = _write_one_file(request, ONNX_NAME, blob, meta)
        operators = sorted(set(OnnxRunner(report_path).ops()))
    else:
        copy = serving_model(model, meta)
        calibration = None
        if quantize == Quantize.int8:
            calibration = _calibration(request, manifest, size)
        blob = convert(copy, size, quantize, calibration)
        report_path = _write_one_file(request, TFLITE_NAME, blob, meta)
        operators = sorted(set(TFLiteRunner(report_path).ops()))
    fixed = fmt == ModelFormat.tflite or (fmt == ModelFormat.onnx and request.image_size)
    report = ExportReport(
        path=report_path,
        format=fmt,
        quantize=quantize,
        image_size=size if fixed else None,
        size_bytes=size_on_disk(report_path),
        operators=operators,
    )
    if manifest is not None and request.measure_agreement:
        exported = load_predictor(out)
        report.agreement = agreement(model, exported.logits, manifest, request, size)
    return report


def _write_one_file(request: ExportRequest, name: str, blob: bytes, meta: RunMeta) -> Path:
    """A one-file export (`name` beside its enet.json) into request.out by the rules of
    outputs.claim; the file's path."""
    inputs = [request.source, request.data_dir]
    with outputs.claim(Path(request.out), "export", request.force, inputs, "--out") as staged:
        (staged.path / name).write_bytes(blob)
        meta.write(staged.path)
        staged.publish()
    return Path(request.out) / name


def _check_classes(request: ExportRequest, manifest, meta: RunMeta) -> None:
    if manifest.class_names != meta.class_names:
        raise DataError(
            f"the model was trained on {len(meta.class_names)} classes but {request.data_dir} "
            f"has {manifest.num_classes}; give the data it was trained on"
        )


def _calibration(request: ExportRequest, manifest, size):
    """A generator factory over up to N training images (uint8, resized to `size`)."""
    data = DataConfig(data_dir=request.data_dir, image_size=manifest.image_size)

    def images():
        dataset = make_dataset(data, manifest, "train", 1, training=False)
        for image, _ in dataset.take(request.calibration_images):
            yield resize_image(to_pixels(image[0].numpy()), size, manifest.interpolation)

    return images


def agreement(model, exported_logits, manifest, request: ExportRequest, size) -> Agreement:
    """Both models on the split at the export size: pixel agreement and each one's mean IoU."""
    data = DataConfig(data_dir=request.data_dir, image_size=manifest.image_size)
    k, void = manifest.num_classes, manifest.ignore_index
    float_fn = tf.function(lambda x: run_padded(model, x), autograph=False)
    same = counted = 0
    matrices = {"float": np.zeros((k, k), np.int64), "export": np.zeros((k, k), np.int64)}
    for images, labels in make_dataset(data, manifest, request.split, 4, training=False):
        # The export sees uint8 pixels (resized as predict resizes); the float model too.
        pixels = [resize_image(p, size, manifest.interpolation) for p in to_pixels(images.numpy())]
        images = to_unit(np.stack(pixels))
        labels = tf.constant(np.stack([resize_classes(c, size) for c in labels.numpy()]))
        ours = np.argmax(float_fn(images).numpy(), axis=-1)
        theirs = np.argmax(np.asarray(exported_logits(images)), axis=-1)
        valid = labels.numpy() != void
        same += int(np.sum((ours == theirs) & valid))
        counted += int(np.sum(valid))
        matrices["float"] += confusion_matrix(labels, ours, k, void).numpy()
        matrices["export"] += confusion_matrix(labels, theirs, k, void).numpy()
    return Agreement(
        split=request.split,
        images=manifest.splits[request.split].records,
        pixel_agreement=same / max(counted, 1),
        mean_iou_float=segmentation_metrics(matrices["float"])["mean_iou"],
        mean_iou_export=segmentation_metrics(matrices["export"])["mean_iou"],
    )


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
