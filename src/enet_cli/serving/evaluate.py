"""`enet evaluate`: score a trained model on a split with the training loop's metric code,
optionally with test-time augmentation (tta.py).

The shards are read without TensorFlow (data/records.py) and the model runs in its
runtime, so a TFLite or ONNX model is scored on a machine without TensorFlow; test-time
augmentation resamples in TensorFlow."""

import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from enet_cli.core import outputs
from enet_cli.core.errors import ConfigError, DataError
from enet_cli.core.metrics import count_confusion, segmentation_metrics
from enet_cli.core.threads import put_unless_stopped
from enet_cli.data.records import named_batches
from enet_cli.serving.evaluate_request import check_evaluation, evaluation_inputs
from enet_cli.serving.runtimes import load_predictor

if TYPE_CHECKING:
    from enet_cli.serving.tta import TTA


def evaluate(
    model_path: Path,
    data_dir: Path,
    split: str = "test",
    batch_size: int = 4,
    json_path: Optional[Path] = None,
    confusion_csv: Optional[Path] = None,
    tta: "Optional[TTA]" = None,
    observe: Optional[Callable[[List[str], np.ndarray, np.ndarray, np.ndarray], None]] = None,
) -> Dict[str, object]:
    """Confusion matrix over `split`, then IoU/accuracies; optionally written as JSON and CSV.
    The metrics also say how long the predictions took (`seconds`, `ms_per_image`).
    `observe(names, pixels, labels, predictions)` sees each batch (enet report keeps the images
    it gets most and least right from it)."""
    manifest = check_evaluation(model_path, data_dir, split, json_path, confusion_csv)
    if tta is not None:  # it resamples in TensorFlow: say so before any model is loaded
        from enet_cli.core import backend  # noqa: F401
    kept = evaluation_inputs(model_path, data_dir)
    predictor = load_predictor(model_path)
    if manifest.class_names != predictor.meta.class_names:
        raise DataError(
            f"the model was trained on {len(predictor.meta.class_names)} classes "
            f"({predictor.meta.class_names[:3]}...) but {data_dir} has "
            f"{manifest.num_classes}; preprocess the data with the same --classes"
        )
    if tta is not None and tta.needs_any_size and predictor.fixed_size is not None:
        height, width = predictor.fixed_size
        raise ConfigError(
            f"--tta scales need a model that takes any size, and {predictor.source} takes "
            f"only {height}x{width}; use --tta flip, or the SavedModel or checkpoints"
        )
    k = manifest.num_classes
    matrix = np.zeros((k, k), np.int64)
    seconds, warm = 0.0, False

    def classes(pixels: np.ndarray) -> np.ndarray:
        if tta is None:
            return predictor.run(pixels, logits=False)[1]
        from enet_cli.serving.tta import tta_probabilities

        images = pixels.astype(np.float32) / np.float32(255)  # as to_unit: exact
        return np.argmax(np.asarray(tta_probabilities(predictor.logits, images, tta)), -1)

    for names, pixels, labels in _read_ahead(named_batches(data_dir, manifest, split, batch_size)):
        if not warm:  # tracing (once per input shape) is not what an image costs
            classes(pixels)
            warm = True
        start = time.perf_counter()
        predictions = classes(pixels)
        seconds += time.perf_counter() - start
        matrix += count_confusion(labels, predictions, k, manifest.ignore_index)
        if observe is not None:
            observe(names, pixels, labels, np.asarray(predictions))
    metrics = segmentation_metrics(matrix, manifest.class_names)
    images_scored = manifest.splits[split].records
    metrics.update(
        split=split,
        images=images_scored,
        model=predictor.source,
        tta=None if tta is None else tta.model_dump(),
        seconds=round(seconds, 3),
        ms_per_image=round(1000 * seconds / max(images_scored, 1), 2),
        confusion=matrix.tolist(),
    )
    if json_path is not None:
        outputs.write_file(Path(json_path), outputs.json_text(metrics), "--json", kept)
    if confusion_csv is not None:
        rows = [["truth \\ predicted", *manifest.class_names]]
        rows += [[name, *map(str, row)] for name, row in zip(manifest.class_names, matrix)]
        text = "".join(",".join(r) + "\n" for r in rows)
        outputs.write_file(Path(confusion_csv), text, "--confusion-csv", kept)
    return metrics


def _read_ahead(items: Iterator[Tuple[np.ndarray, np.ndarray]], depth: int = 2):
    """`items`, produced by a thread `depth` ahead: the PNGs of the next batch decode while
    the model runs on this one (Pillow lets go of the GIL while it decodes)."""
    done, stop = object(), threading.Event()
    ready: queue.Queue = queue.Queue(maxsize=depth)

    def put(item) -> bool:
        return put_unless_stopped(ready, item, stop)

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as err:  # a DataError for the consumer to raise
            put(err)
        put(done)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped (done, an error, Ctrl-C): so does the reader
        stop.set()
