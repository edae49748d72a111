"""ONNX: convert a trained ENet with tf2onnx and run the result in the stock onnxruntime.

ENet ports in other toolkits fail to export because their max-unpooling needs the pooling
argmax (PyTorch's MaxUnpool2d has no ONNX form that TensorRT or onnxruntime accept
everywhere). Ours is built from standard operators (model/layers.py), so the file holds
only the default ONNX domain's operators. Like the SavedModel's serving signature the
graph takes uint8 images (`images`, NHWC) of any batch and, unless a size is fixed, any
height and width (padded to ENet's multiple of 8 and cropped back inside the graph), and
returns `logits` (float32) and `classes` (int32).

tf2onnx and onnxruntime are the `[onnx]` extra: only the laptop side needs them.
"""

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from enet_cli.core.backend import tf
from enet_cli.core.errors import EnvironmentProblem
from enet_cli.pixels.preprocessor import run_padded, to_unit

OPSET = 17  # onnxruntime >= 1.14 runs it; 17 is tf2onnx 1.16's and 1.17's tested maximum
EXTRA = "pip install 'enet-cli[onnx]'"
# onnxruntime 1.29 and later report usage to Microsoft from Linux and macOS as well
# (microsoft/onnxruntime PR 27379), after a few seconds of a session's life: a long predict
# or benchmark sends it. ORT_DISABLE_TELEMETRY=1, read once when onnxruntime starts, turns
# that off entirely. A command-line tool should not report its users' work on its own: off
# unless the user set the variable themselves (as the SageMaker SDK's, cloud/aws.py).
ORT_TELEMETRY = "ORT_DISABLE_TELEMETRY"


def _require(module: str):
    import importlib

    os.environ.setdefault(ORT_TELEMETRY, "1")  # before any ONNX library can start onnxruntime
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EnvironmentProblem(f"ONNX needs {module}, which is not installed: {EXTRA}") from None


def convert(model, size: Optional[Sequence[int]] = None) -> bytes:
    """The .onnx bytes of `model` (a float32 Keras ENet export copy); `size` (H, W) fixes the
    input's height and width, None keeps them dynamic. The batch axis is always dynamic."""
    from enet_cli.serving.tflite import prepare_for_export

    tf2onnx = _require("tf2onnx")
    _require("onnx")
    prepare_for_export(model)  # constant PReLU slopes, 1x1 as Conv (folds with batch norm)
    height, width = (None, None) if size is None else (int(size[0]), int(size[1]))
    spec = tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")

    @tf.function(input_signature=[spec], autograph=False)
    def serve(images):
        logits = run_padded(model, to_unit(images))
        return {"logits": logits, "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=OPSET)
    return proto.SerializeToString()


class OnnxRunner:
    """An ONNX ENet in onnxruntime on the CPU; `__call__(uint8 NHWC) -> (logits, classes)`."""

    def __init__(self, model_path: Path, threads: int = 0):
        ort = _require("onnxruntime")
        self.path = Path(model_path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no graph-optimizer notices on stderr
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        (self.input,) = self.session.get_inputs()
        self.outputs = [o.name for o in self.session.get_outputs()]
        height, width = self.input.shape[1:3]
        fixed = isinstance(height, int) and isinstance(width, int)
        self.size: Optional[Tuple[int, int]] = (height, width) if fixed else None

    def ops(self) -> List[str]:
        """Operator types in the graph, each as `domain:type` when not the default domain."""
        onnx = _require("onnx")
        graph = onnx.load(str(self.path)).graph
        return [f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in graph.node]

    def __call__(
        self, images: np.ndarray, logits: bool = True
    ) -> Tuple[Optional[np.ndarray], np.ndarray]:
        """(logits, classes) of uint8 NHWC images; logits None when not asked for (the
        runtime then does not copy them out)."""
        names = ["logits", "classes"] if logits else ["classes"]
        found = self.session.run(names, {self.input.name: np.asarray(images, np.uint8)})
        return (found[0], found[1]) if logits else (None, found[0])
