"""The kinds of model enet writes and reads, in one table: what each is called, which file
is the model and which runtimes run it (the default first). Finding a model
(artifacts/model_ref.py), loading it (serving/runtimes.py) and exporting it
(serving/export.py) read it. What `--force` may replace is not a list of names: each
output's marker records the files its command wrote (core/outputs.py).

The choices here are enums, so Typer validates `--format`, `--runtime` and `--quantize` and
lists their values in `--help`. No TensorFlow: the CLI imports this module to build options.
"""

import enum
from typing import Dict, NamedTuple, Optional, Tuple

META_NAME = "enet.json"  # a model's identity card, beside every kind (artifacts/run.py)
TFLITE_NAME = "model.tflite"
ONNX_NAME = "model.onnx"


class ModelFormat(str, enum.Enum):
    """What a model on disk is, and what `enet export --format` writes."""

    saved_model = "saved_model"
    tflite = "tflite"
    onnx = "onnx"
    checkpoint = "checkpoint"  # whole training checkpoints (e.g. from SMP's partitioned ones)


class InferenceRuntime(str, enum.Enum):
    """What runs a model for predict, evaluate and benchmark (`--runtime`)."""

    keras = "keras"
    saved_model = "saved_model"
    tflite = "tflite"
    onnx = "onnx"

    @property
    def needs_tensorflow(self) -> bool:
        """keras and saved_model run in TensorFlow; tflite (LiteRT) and onnx (onnxruntime)
        run without it, so predicting with them never imports it (the edge install has none)."""
        return self in (InferenceRuntime.keras, InferenceRuntime.saved_model)


class Quantize(str, enum.Enum):
    """TFLite weights and activations (`enet export --format tflite --quantize`)."""

    none = "none"
    float16 = "float16"
    int8 = "int8"

    @property
    def label(self) -> str:
        """What the numbers are, in a report: none keeps them float32."""
        return "float32" if self is Quantize.none else self.value


class FormatSpec(NamedTuple):
    described: str  # in a sentence: "... is a SavedModel"
    title: str  # in a report: "wrote SavedModel to ..."
    model_file: Optional[str]  # the one file that is the model (None: a directory of them)
    runtimes: Tuple[InferenceRuntime, ...]  # default (fastest, benchmarks/video.py) first


FORMATS: Dict[ModelFormat, FormatSpec] = {
    ModelFormat.saved_model: FormatSpec(
        "a SavedModel", "SavedModel", None, (InferenceRuntime.saved_model, InferenceRuntime.keras)
    ),
    ModelFormat.tflite: FormatSpec(
        "a TFLite file", "TFLite", TFLITE_NAME, (InferenceRuntime.tflite,)
    ),
    ModelFormat.onnx: FormatSpec("an ONNX file", "ONNX", ONNX_NAME, (InferenceRuntime.onnx,)),
    ModelFormat.checkpoint: FormatSpec(
        "a checkpoint", "checkpoints", None, (InferenceRuntime.keras,)
    ),
}


def single_file_formats() -> Dict[str, ModelFormat]:
    """File name -> format, for the formats whose model is one file."""
    return {spec.model_file: f for f, spec in FORMATS.items() if spec.model_file}
