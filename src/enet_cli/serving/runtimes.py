"""Load a trained ENet for evaluate and predict, from whatever the user points at.

MODEL may be a run directory (its exported SavedModel, else its latest checkpoint), a
SavedModel directory (from `enet train` or `enet export`), a TFLite or ONNX export (its
directory or its model.tflite / model.onnx), or a checkpoint directory. All carry an
`enet.json` that names the classes and the size the model takes.

Each kind of model runs in one or more runtimes (core/formats.py, fastest first as measured
by benchmarks/video.py); `--runtime` picks another one the model has.
"""

import contextlib
import os
import queue
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from enet_cli.artifacts.model_ref import FoundModel, locate
from enet_cli.artifacts.run import RunMeta, load_model_from_checkpoint
from enet_cli.core.errors import ConfigError, DataError
from enet_cli.core.formats import FORMATS, InferenceRuntime, ModelFormat
from enet_cli.pixels.drawing import palette
from enet_cli.pixels.preprocessor import run_padded, to_pixels, to_unit

# TensorFlow is imported inside the functions that run a model in it (keras, saved_model):
# a TFLite or ONNX model is loaded and run without it (serving/runners.py).


class Predictor(NamedTuple):
    """`run(uint8 NHWC pixels, logits=True) -> (float32 logits or None, int32 classes)` as
    NumPy arrays, plus what the model knows. Every runtime takes pixels as they are decoded
    (the scaling to 0-1 is in the graph) and computes the classes in the graph too: a video
    frame at the model's size costs no conversion and no argmax outside it."""

    meta: RunMeta
    run: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]
    source: str
    runtime: InferenceRuntime = InferenceRuntime.keras
    fixed_size: Optional[Tuple[int, int]] = None  # the one (H, W) a TFLite/fixed ONNX takes
    parallel: int = 1  # images of a batch it runs at once (copies of the runtime, RuntimeCopies)

    def logits(self, images):
        """float32 logits of float32 NHWC `images` in [0, 1] (as the data pipeline gives
        them), as a tensor."""
        from enet_cli.core.backend import tf

        return tf.constant(self.run(to_pixels(np.asarray(images, np.float32)))[0])

    def palette(self) -> np.ndarray:
        return palette(self.meta.class_colors, self.meta.void_color)


def _from_saved_model(directory: Path, meta: RunMeta) -> Predictor:
    from enet_cli.core.backend import tf

    loaded = tf.saved_model.load(str(directory))
    serve = loaded.signatures["serving_default"]

    def run(pixels, logits=True):
        found = serve(images=tf.constant(pixels, tf.uint8))
        return (found["logits"].numpy() if logits else None), found["classes"].numpy()

    run.loaded = loaded  # keep the loaded object (and its variables) alive
    return Predictor(meta, run, f"SavedModel {directory}", InferenceRuntime.saved_model)


def _keras_predictor(model, meta: RunMeta, source: str) -> Predictor:
    from enet_cli.core.backend import tf

    @tf.function(autograph=False)
    def graph(pixels):
        logits = run_padded(model, to_unit(pixels))
        return logits, tf.argmax(logits, axis=-1, output_type=tf.int32)

    def run(pixels, logits=True):
        scores, classes = graph(tf.constant(pixels, tf.uint8))
        return (scores.numpy() if logits else None), classes.numpy()

    return Predictor(meta, run, source, InferenceRuntime.keras)


def _from_checkpoint(found: FoundModel) -> Predictor:
    loaded = load_model_from_checkpoint(found.path, found.checkpoint)
    if loaded is None:
        raise DataError(f"no checkpoint with enet.json in {found.path}")
    model, meta, checkpoint = loaded
    return _keras_predictor(model, meta, f"checkpoint {checkpoint}")


def _runner_predictor(runner, model_file: Path, meta: RunMeta, name: str, runtime) -> Predictor:
    """A Predictor around a runner `(uint8 NHWC) -> (logits, classes)` whose input size may
    be fixed (`runner.size`, None when dynamic)."""
    fixed = None if runner.size is None else tuple(int(v) for v in runner.size)

    def run(pixels, logits=True):
        size = tuple(int(v) for v in pixels.shape[1:3])
        if fixed is not None and size != fixed:
            raise DataError(
                f"{model_file} takes {fixed[0]}x{fixed[1]} images, got "
                f"{size[0]}x{size[1]}; export it again with --size {size[0]}x{size[1]}"
            )
        return runner(pixels, logits)

    run.runner = runner
    copies = len(runner.runners) if isinstance(runner, RuntimeCopies) else 1
    return Predictor(meta, run, f"{name} {model_file}", runtime, fixed, copies)


class RuntimeCopies:
    """Several copies of one runner, each on its share of the CPU cores, running a batch's
    parts (and concurrent calls) at once, each part on a free copy. On few cores this gives
    more images per second than one runner on every core (no threads waiting on each other
    inside an operator, and the cores left between calls go to decoding and encoding), at
    the cost of one image's latency: what a video wants, not a single photo."""

    def __init__(self, runners: List) -> None:
        self.runners = runners
        self.size = runners[0].size
        self.free: queue.Queue = queue.Queue()
        for runner in runners:
            self.free.put(runner)
        self.pool = ThreadPoolExecutor(len(runners), thread_name_prefix="enet-infer")

    def _on_a_free_copy(self, images: np.ndarray, logits: bool):
        runner = self.free.get()
        try:
            return runner(images, logits)
        finally:
            self.free.put(runner)

    def __call__(self, images: np.ndarray, logits: bool = True):
        parts = np.array_split(images, min(len(images), len(self.runners)))
        done = list(self.pool.map(lambda part: self._on_a_free_copy(part, logits), parts))
        scores = np.concatenate([d[0] for d in done]) if logits else None
        return scores, np.concatenate([d[1] for d in done])


def _runner(make: Callable[[int], object], parallel: int):
    """`make(threads)` once with every core, or `parallel` times with a share of them each."""
    if parallel <= 1:
        return make(0)
    threads = max(1, (os.cpu_count() or 1) // parallel)
    return RuntimeCopies([make(threads) for _ in range(parallel)])


def _from_tflite(model_file: Path, meta: RunMeta, parallel: int) -> Predictor:
    from enet_cli.serving.runners import TFLiteRunner

    runner = _runner(lambda threads: TFLiteRunner(model_file, threads), parallel)
    return _runner_predictor(runner, model_file, meta, "TFLite", InferenceRuntime.tflite)


def _from_onnx(model_file: Path, meta: RunMeta, parallel: int) -> Predictor:
    from enet_cli.serving.runners import OnnxRunner

    runner = _runner(lambda threads: OnnxRunner(model_file, threads), parallel)
    return _runner_predictor(runner, model_file, meta, "ONNX", InferenceRuntime.onnx)


def choose_runtime(found: FoundModel, runtime: Optional[InferenceRuntime]) -> InferenceRuntime:
    """The runtime asked for if the model has it (else a one-line refusal), or its default."""
    available = FORMATS[found.format].runtimes
    if runtime is None:
        return available[0]
    runtime = InferenceRuntime(runtime)
    if runtime not in available:
        names = ", ".join(r.value for r in available)
        fix = (
            f"export it with enet export --format {runtime.value} first"
            if runtime in (InferenceRuntime.tflite, InferenceRuntime.onnx)
            else "give the run directory or SavedModel it came from"
        )
        raise ConfigError(
            f"--runtime {runtime.value}: {found.path} is {found.describe()}, which runs in "
            f"{names}; {fix}"
        )
    return runtime


def _load_errors() -> tuple:
    """What a loader raises for a damaged file: TensorFlow's own errors only where it was
    loaded (a TFLite or ONNX model never loads it)."""
    errors: tuple = (OSError, ValueError, RuntimeError, KeyError, IndexError, AssertionError)
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None and hasattr(tensorflow, "errors"):
        errors += (tensorflow.errors.OpError,)
    return errors


@contextlib.contextmanager
def _loading(path: Path) -> Iterator[None]:
    """A damaged model (missing or truncated variables, checkpoint or graph files) is one
    line naming it, whichever of TensorFlow's loaders noticed."""
    try:
        yield
    except Exception as err:
        if not isinstance(err, _load_errors()):
            raise
        text = str(getattr(err, "message", err)).strip() or type(err).__name__
        raise DataError(
            f"cannot load the model in {path}: it is damaged or incomplete "
            f"({text.splitlines()[0][:160]}); export or train it again"
        ) from None


def load_predictor(
    model: Union[Path, FoundModel],
    runtime: Optional[InferenceRuntime] = None,
    parallel: int = 1,
) -> Predictor:
    """Load `model` (a path, located here, or what the command located already) in
    `runtime` (default: the fastest one it has); one-line errors otherwise. `parallel` > 1
    runs that many images of a batch at once, each on a share of the cores (TFLite and
    ONNX; see RuntimeCopies)."""
    found = model if isinstance(model, FoundModel) else locate(model)
    chosen = choose_runtime(found, runtime)
    with _loading(found.path):
        if found.format is ModelFormat.tflite:
            return _from_tflite(found.path, found.meta, parallel)
        if found.format is ModelFormat.onnx:
            return _from_onnx(found.path, found.meta, parallel)
        if found.format is ModelFormat.checkpoint:
            return _from_checkpoint(found)
        if chosen == InferenceRuntime.saved_model:
            return _from_saved_model(found.path, found.meta)
        keras_model, meta = _keras_from_saved_model(found.path, found.meta)
        return _keras_predictor(keras_model, meta, f"SavedModel {found.path}")


def load_keras_model(model: Union[Path, FoundModel]):
    """(float32 Keras ENet, meta) from a run, SavedModel or checkpoint: what export converts.

    A SavedModel of ours tracks the model's weights in order (export.py), so they are put
    into a freshly built ENet; a TFLite or ONNX file has lost what training needs and is
    refused.
    """
    found = model if isinstance(model, FoundModel) else locate(model)
    if FORMATS[found.format].model_file:
        raise DataError(
            f"{found.path} is already a {FORMATS[found.format].title} export; give "
            f"the run directory, SavedModel or checkpoints it came from"
        )
    with _loading(found.path):
        if found.format is ModelFormat.checkpoint:
            keras_model, meta, _ = load_model_from_checkpoint(found.path, found.checkpoint)
            return keras_model, meta
        return _keras_from_saved_model(found.path, found.meta)


def _keras_from_saved_model(found: Path, meta: RunMeta):
    from enet_cli.core.backend import tf
    from enet_cli.model import build_enet

    loaded = tf.saved_model.load(str(found))
    weights = getattr(loaded, "variables_", None)
    if weights is None:
        raise DataError(f"{found} is not a SavedModel written by enet; export its run instead")
    model = build_enet(meta.model, None)
    model.set_weights([w.numpy() for w in weights])
    return model, meta
