"""The exported models' runtimes, without TensorFlow: a .tflite file in LiteRT (TensorFlow
Lite's runtime, `ai_edge_litert`), a .onnx file in onnxruntime. What `enet predict`,
`evaluate` and `benchmark` run an export in, on a laptop or on a board with the `[edge]`
install, which has no TensorFlow. Each runner is `__call__(uint8 NHWC) -> (logits or None,
classes)` in NumPy, and says which size it takes (`size`, None when any).

TensorFlow's own `tf.lite.Interpreter` is used only where LiteRT is missing and TensorFlow
is there (TF before 2.20, the training containers).
"""

import os
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from enet_cli.core.errors import EnvironmentProblem
from enet_cli.core.noise import startup_noise_filtered

EXTRA = "pip install 'enet-cli[onnx]'"
# onnxruntime 1.29 and later report usage to Microsoft from Linux and macOS as well
# (microsoft/onnxruntime PR 27379), after a few seconds of a session's life: a long predict
# or benchmark sends it. ORT_DISABLE_TELEMETRY=1, read once when onnxruntime starts, turns
# that off entirely. A command-line tool should not report its users' work on its own: off
# unless the user set the variable themselves (as the SageMaker SDK's, cloud/aws.py).
ORT_TELEMETRY = "ORT_DISABLE_TELEMETRY"


def require_onnx(module: str):
    """`module` of the ONNX tool chain, imported with telemetry off, or a one-line error
    naming the extra."""
    import importlib

    os.environ.setdefault(ORT_TELEMETRY, "1")  # before any ONNX library can start onnxruntime
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EnvironmentProblem(f"ONNX needs {module}, which is not installed: {EXTRA}") from None


def interpreter(model_path: Path, threads: int = 0):
    """The stock TFLite interpreter (with its default XNNPACK delegate) for a .tflite file.

    `threads` 0 means one per CPU core. Prefers LiteRT (`ai_edge_litert`), TFLite's home
    from TF 2.20 on, and falls back to `tf.lite.Interpreter`.
    """
    threads = threads or os.cpu_count() or 1
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = _tensorflows_interpreter()
    with warnings.catch_warnings(), startup_noise_filtered():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        found = Interpreter(model_path=str(model_path), num_threads=threads)
        found.allocate_tensors()  # the XNNPACK delegate says it was created
    return found


def _tensorflows_interpreter():
    """tf.lite.Interpreter, where LiteRT is not installed but TensorFlow is."""
    import importlib.util

    missing = EnvironmentProblem("TFLite models run in LiteRT: pip install ai-edge-litert")
    if importlib.util.find_spec("tensorflow") is None:
        raise missing
    from enet_cli.core.backend import tf

    found = getattr(getattr(tf, "lite", None), "Interpreter", None)
    if found is None:
        raise missing
    return found


class TFLiteRunner:
    """Runs a converted ENet one image at a time; `__call__(uint8 NHWC) -> (logits, classes)`."""

    def __init__(self, model_path: Path, threads: int = 0):
        self.path = Path(model_path)
        self.interpreter = interpreter(self.path, threads)
        (self.input,) = self.interpreter.get_input_details()
        outputs = {d["name"]: d for d in self.interpreter.get_output_details()}
        self.logits_out = _find(outputs, "logits")
        self.classes_out = _find(outputs, "classes")
        self.size = tuple(int(v) for v in self.input["shape"][1:3])

    def ops(self) -> List[str]:
        """Operator names in the file (the interpreter's own list, delegates excluded)."""
        details = self.interpreter._get_ops_details()  # no public API lists operators
        return [d["op_name"] for d in details if d["op_name"] != "DELEGATE"]

    def __call__(
        self, images: np.ndarray, logits: bool = True
    ) -> Tuple[Optional[np.ndarray], np.ndarray]:
        """(logits, classes) of uint8 NHWC images, one invoke each; logits None when not
        asked for (int8's would be dequantized for nothing)."""
        scores, classes = [], []
        for image in np.asarray(images, np.uint8):
            self.interpreter.set_tensor(self.input["index"], image[None])
            self.interpreter.invoke()
            if logits:
                scores.append(self._output(self.logits_out))
            classes.append(self.interpreter.get_tensor(self.classes_out["index"])[0])
        return (np.stack(scores) if logits else None), np.stack(classes)

    def _output(self, detail) -> np.ndarray:
        value = self.interpreter.get_tensor(detail["index"])[0]
        scale, zero = detail["quantization"]
        if detail["dtype"] != np.float32 and scale:
            value = (value.astype(np.float32) - zero) * scale
        return value.astype(np.float32)


def _find(outputs: dict, name: str) -> dict:
    for key, detail in outputs.items():
        if name in key:
            return detail
    # The converter names outputs after the signature keys; fall back on shapes.
    by_rank = sorted(outputs.values(), key=lambda d: len(d["shape"]))
    return by_rank[-1] if name == "logits" else by_rank[0]


class OnnxRunner:
    """An ONNX ENet in onnxruntime on the CPU; `__call__(uint8 NHWC) -> (logits, classes)`."""

    def __init__(self, model_path: Path, threads: int = 0):
        ort = require_onnx("onnxruntime")
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
        onnx = require_onnx("onnx")
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
