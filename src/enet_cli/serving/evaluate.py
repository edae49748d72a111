"""`enet evaluate`: score a trained model on a split with the training loop's metric code,
optionally with test-time augmentation (tta.py)."""

import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from enet_cli.core import outputs
from enet_cli.core.config import DataConfig
from enet_cli.core.errors import ConfigError, DataError
from enet_cli.core.metrics import confusion_matrix, segmentation_metrics
from enet_cli.data.dataset import make_dataset, reading_shards
from enet_cli.serving.evaluate_request import check_evaluation, evaluation_inputs
from enet_cli.serving.runtimes import load_predictor
from enet_cli.serving.tta import TTA, tta_probabilities


def evaluate(
    model_path: Path,
    data_dir: Path,
    split: str = "test",
    batch_size: int = 4,
    json_path: Optional[Path] = None,
    confusion_csv: Optional[Path] = None,
    tta: Optional[TTA] = None,
) -> Dict[str, object]:
    """Confusion matrix over `split`, then IoU/accuracies; optionally written as JSON and CSV.
    The metrics also say how long the predictions took (`seconds`, `ms_per_image`)."""
    manifest = check_evaluation(model_path, data_dir, split, json_path, confusion_csv)
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
    data = DataConfig(data_dir=data_dir, image_size=manifest.image_size)
    k = manifest.num_classes
    matrix = np.zeros((k, k), np.int64)
    seconds, warm = 0.0, False

    def scores(images):
        if tta is None:
            return predictor.logits(images)
        return tta_probabilities(predictor.logits, images, tta)

    with reading_shards(data_dir):
        for images, labels in make_dataset(data, manifest, split, batch_size, training=False):
            if not warm:  # tracing (once per input shape) is not what an image costs
                np.asarray(scores(images))
                warm = True
            start = time.perf_counter()
            predictions = np.argmax(np.asarray(scores(images)), axis=-1)
            seconds += time.perf_counter() - start
            matrix += confusion_matrix(labels, predictions, k, manifest.ignore_index).numpy()
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
