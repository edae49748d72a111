"""Load a trained ENet for evaluate and predict, from whatever the user points at.

MODEL may be a run directory (its exported SavedModel, else its latest checkpoint), a
SavedModel directory (from `enet train` or `enet export`), a TFLite export (its directory
or its model.tflite), or a checkpoint directory. All carry an `enet.json` that names the
classes and the size the model takes.
"""

import contextlib
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Tuple

import numpy as np

from enet_cli.artifacts import RunMeta, load_model_from_checkpoint
from enet_cli.backend import tf
from enet_cli.checkpoints import find_checkpoint
from enet_cli.errors import DataError
from enet_cli.preprocessor import run_padded, to_pixels

TFLITE_NAME = "model.tflite"  # inside an `enet export --format tflite` directory


class Predictor(NamedTuple):
    """`logits(images float32 NHWC in [0, 1]) -> float32 logits`, plus what the model knows."""

    meta: RunMeta
    logits: Callable
    source: str

    def palette(self) -> np.ndarray:
        """(K+1, 3) uint8 colours, void last."""
        return np.array([*self.meta.class_colors, self.meta.void_color], dtype=np.uint8)


def _from_saved_model(directory: Path, meta: RunMeta) -> Predictor:
    loaded = tf.saved_model.load(str(directory))
    serve = loaded.signatures["serving_default"]

    def logits(images):
        return serve(images=to_pixels(images))["logits"]

    logits.loaded = loaded  # keep the loaded object (and its variables) alive
    return Predictor(meta, logits, f"SavedModel {directory}")


def _from_checkpoint(directory: Path) -> Predictor:
    found = load_model_from_checkpoint(directory)
    if found is None:
        raise DataError(f"no checkpoint with enet.json in {directory}")
    model, meta, checkpoint = found
    fn = tf.function(lambda images: run_padded(model, images), autograph=False)
    return Predictor(meta, fn, f"checkpoint {checkpoint}")


def _from_tflite(model_file: Path, meta: RunMeta) -> Predictor:
    from enet_cli.tflite import TFLiteRunner

    runner = TFLiteRunner(model_file)

    def logits(images):
        size = tuple(int(v) for v in images.shape[1:3])
        if size != runner.size:
            raise DataError(
                f"{model_file} takes {runner.size[0]}x{runner.size[1]} images, got "
                f"{size[0]}x{size[1]}; export it again with --size {size[0]}x{size[1]}"
            )
        return tf.constant(runner(to_pixels(np.asarray(images, np.float32)))[0])

    logits.runner = runner
    return Predictor(meta, logits, f"TFLite {model_file}")


def _find(path: Path) -> Tuple[Path, RunMeta, str]:
    """(directory, its enet.json, kind: saved_model | tflite | checkpoint) of the model at path."""
    if not path.exists():
        raise DataError(
            f"model {path} does not exist; give a run directory, SavedModel, TFLite export or "
            f"checkpoint directory"
        )
    if path.is_file() and path.suffix == ".tflite":
        meta = RunMeta.read(path.parent)
        if meta is None:
            raise DataError(f"{path.parent} has no enet.json beside {path.name}; export it again")
        return path, meta, "tflite"
    for candidate in [path, path / "model", path / "1", path / "checkpoints"]:
        meta = RunMeta.of_checkpoints(candidate) if candidate.is_dir() else None
        if meta is None:
            continue
        if (candidate / "saved_model.pb").is_file():
            return candidate, meta, "saved_model"
        if (candidate / TFLITE_NAME).is_file():
            return candidate / TFLITE_NAME, meta, "tflite"
        if find_checkpoint(candidate):
            return candidate, meta, "checkpoint"
    raise DataError(
        f"no trained ENet in {path}: expected a SavedModel, TFLite export or checkpoints with "
        f"enet.json (the output of enet train or enet export)"
    )


@contextlib.contextmanager
def _loading(path: Path) -> Iterator[None]:
    """A damaged model (missing or truncated variables, checkpoint or graph files) is one
    line naming it, whichever of TensorFlow's loaders noticed."""
    try:
        yield
    except (
        tf.errors.OpError,
        OSError,
        ValueError,
        RuntimeError,
        KeyError,
        IndexError,
        AssertionError,
    ) as err:
        text = str(getattr(err, "message", err)).strip() or type(err).__name__
        raise DataError(
            f"cannot load the model in {path}: it is damaged or incomplete "
            f"({text.splitlines()[0][:160]}); export or train it again"
        ) from None


def load_predictor(path: Path) -> Predictor:
    """Find and load the model at `path` (see module docstring); one-line errors otherwise."""
    found, meta, kind = _find(Path(path))
    with _loading(found):
        if kind == "saved_model":
            return _from_saved_model(found, meta)
        if kind == "tflite":
            return _from_tflite(found, meta)
        return _from_checkpoint(found)


def load_keras_model(path: Path):
    """(float32 Keras ENet, meta) from a run, SavedModel or checkpoint: what export converts.

    A SavedModel of ours tracks the model's weights in order (export.py), so they are put
    into a freshly built ENet; a TFLite file has lost what training needs and is refused.
    """
    from enet_cli.model import build_enet

    found, meta, kind = _find(Path(path))
    if kind == "tflite":
        raise DataError(
            f"{found} is already a TFLite export; give the run directory, SavedModel or "
            f"checkpoints it came from"
        )
    with _loading(found):
        if kind == "checkpoint":
            model, meta, _ = load_model_from_checkpoint(found)
            return model, meta
        loaded = tf.saved_model.load(str(found))
        weights = getattr(loaded, "variables_", None)
        if weights is None:
            raise DataError(f"{found} is not a SavedModel written by enet; export its run instead")
        model = build_enet(meta.model, None)
        model.set_weights([w.numpy() for w in weights])
        return model, meta
