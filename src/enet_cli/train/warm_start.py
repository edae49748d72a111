"""`--init-from MODEL`: start training from another model's weights (fine-tuning), as
keras-hub's `from_preset(..., num_classes=K)` and MMSegmentation's `load_from` do.

MODEL is a preset (`enet models`), a run directory, checkpoint directory or SavedModel of
ours. Every block is copied by name. The classifier is copied too when the source was
trained on the same classes (names and order); otherwise it keeps this run's fresh
initialisation, and the run says so in one line. Any other difference (a shallower ENet,
another channel count) is one line refusing the source, before the run directory is
touched. ENet's weights do not depend on the image size, so a source trained at another
size is fine (said in the same line). A run that resumes from its own checkpoint ignores
`--init-from`: the checkpoint already holds what it learned since.
"""

from pathlib import Path
from typing import List, Tuple

from enet_cli.artifacts.model_ref import ModelRef, locate
from enet_cli.artifacts.run import RunMeta
from enet_cli.core.errors import ConfigError, DataError
from enet_cli.core.formats import FORMATS

CLASSIFIER = "fullconv"  # model/enet.py's name for the last block, the one tied to the classes


def source_path(init_from: str) -> Path:
    """The local path `--init-from` names (a preset's directory), checked to hold a model
    training can start from: one line otherwise."""
    ref = ModelRef.parse(init_from)
    if not ref.on_disk:
        raise ConfigError(
            f"--init-from {init_from}: give a preset (enet models), a run directory, "
            f"checkpoint directory or SavedModel on this machine"
        )
    try:
        found = locate(ref.path)
    except DataError as err:
        raise ConfigError(f"--init-from: {err}") from None
    if FORMATS[found.format].model_file:
        raise ConfigError(
            f"--init-from {init_from}: a {FORMATS[found.format].title} export has lost what "
            f"training needs; give the run, checkpoints or SavedModel it came from"
        )
    return ref.path


def warm_start(model, meta: RunMeta, init_from: str) -> str:
    """Copy the weights of `init_from` into `model` (this run's ENet, `meta` its classes);
    returns the line that says what was copied."""
    from enet_cli.serving.runtimes import load_keras_model

    source, source_meta = load_keras_model(source_path(init_from))
    theirs_depth, ours_depth = source_meta.model.bottlenecks, meta.model.bottlenecks
    if theirs_depth != ours_depth:
        raise ConfigError(
            f"--init-from {init_from}: its ENet differs from this run's in depth (bottlenecks "
            f"{','.join(map(str, theirs_depth))}, this run {','.join(map(str, ours_depth))}); "
            f"train with --bottlenecks {','.join(map(str, theirs_depth))} or from scratch"
        )
    same_classes = list(source_meta.class_names) == list(meta.class_names)
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    kept: List[str] = []
    for layer in (layer for layer in model.layers if layer.weights):
        other = theirs.get(layer.name)
        mismatch = _mismatch(layer, other)
        if layer.name == CLASSIFIER and (not same_classes or mismatch):
            continue
        if mismatch:
            raise ConfigError(
                f"--init-from {init_from}: its ENet differs from this run's at {mismatch}; "
                f"give a model of the same depth (--bottlenecks) or train from scratch"
            )
        layer.set_weights(other.get_weights())
        kept.append(layer.name)
    size = tuple(source_meta.image_size)
    trained_at = f"; trained at {size[0]}x{size[1]}" if size != tuple(meta.image_size) else ""
    if CLASSIFIER in kept:
        classes = len(meta.class_names)
        return f"initialised from {init_from}: every layer (the same {classes} classes{trained_at})"
    return (
        f"initialised from {init_from}: every layer but the classifier, re-initialised for "
        f"this run's {len(meta.class_names)} classes ({init_from} has "
        f"{len(source_meta.class_names)}: {_classes(source_meta.class_names)}){trained_at}"
    )


def _mismatch(layer, other) -> str:
    """'' when `other` has `layer`'s weights' shapes; else where they differ."""
    if other is None:
        return f"{layer.name} (not in it)"
    ours: List[Tuple[int, ...]] = [tuple(w.shape) for w in layer.weights]
    theirs: List[Tuple[int, ...]] = [tuple(w.shape) for w in other.weights]
    if ours != theirs:
        return f"{layer.name} ({len(theirs)} weights {theirs[:1]}... vs {len(ours)} {ours[:1]}...)"
    return ""


def _classes(names) -> str:
    names = list(names)
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
