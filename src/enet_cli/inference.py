"""Load a trained ENet for evaluate and predict, from whatever the user points at.

MODEL may be a run directory (its exported SavedModel, else its latest checkpoint), a
SavedModel directory (from `enet train` or `enet export`), or a checkpoint directory. All
carry an `enet.json` that names the classes and the training size.
"""

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from enet_cli.backend import tf
from enet_cli.errors import DataError
from enet_cli.train.state import RunMeta, load_model_from_checkpoint


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
        pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)
        return serve(images=pixels)["logits"]

    logits.loaded = loaded  # keep the loaded object (and its variables) alive
    return Predictor(meta, logits, f"SavedModel {directory}")


def _from_checkpoint(directory: Path) -> Predictor:
    found = load_model_from_checkpoint(directory)
    if found is None:
        raise DataError(f"no checkpoint with enet.json in {directory}")
    model, meta = found
    fn = tf.function(lambda images: model(images, training=False))
    return Predictor(meta, fn, f"checkpoint {tf.train.latest_checkpoint(str(directory))}")


def load_predictor(path: Path) -> Predictor:
    """Find and load the model at `path` (see module docstring); one-line errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"model {path} does not exist; give a run directory, SavedModel or checkpoint directory"
        )
    candidates = [path, path / "model", path / "1", path / "checkpoints"]
    for candidate in candidates:
        meta = RunMeta.read(candidate) if candidate.is_dir() else None
        if meta is None:
            continue
        if (candidate / "saved_model.pb").is_file():
            return _from_saved_model(candidate, meta)
        if tf.train.latest_checkpoint(str(candidate)):
            return _from_checkpoint(candidate)
    raise DataError(
        f"no trained ENet in {path}: expected a SavedModel or checkpoints with enet.json "
        f"(the output of enet train)"
    )
