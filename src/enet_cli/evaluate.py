"""`enet evaluate`: score a trained model on a split with the training loop's metric code."""

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from enet_cli import outputs
from enet_cli.config import DataConfig
from enet_cli.data.manifest import load_manifest
from enet_cli.data.pipeline import make_dataset, reading_shards
from enet_cli.errors import DataError
from enet_cli.inference import load_predictor
from enet_cli.metrics import confusion_matrix, segmentation_metrics


def evaluate(
    model_path: Path,
    data_dir: Path,
    split: str = "test",
    batch_size: int = 4,
    json_path: Optional[Path] = None,
    confusion_csv: Optional[Path] = None,
) -> Dict[str, object]:
    """Confusion matrix over `split`, then IoU/accuracies; optionally written as JSON and CSV."""
    for path, option in ((json_path, "--json"), (confusion_csv, "--confusion-csv")):
        if path is not None:
            outputs.check_file_target(Path(path), option)
    manifest = load_manifest(data_dir, True, [split], "--split")  # refusals before loading
    predictor = load_predictor(model_path)
    if manifest.class_names != predictor.meta.class_names:
        raise DataError(
            f"the model was trained on {len(predictor.meta.class_names)} classes "
            f"({predictor.meta.class_names[:3]}...) but {data_dir} has "
            f"{manifest.num_classes}; preprocess the data with the same --classes"
        )
    data = DataConfig(data_dir=data_dir, image_size=manifest.image_size)
    k = manifest.num_classes
    matrix = np.zeros((k, k), np.int64)
    with reading_shards(data_dir):
        for images, labels in make_dataset(data, manifest, split, batch_size, training=False):
            predictions = np.argmax(predictor.logits(images).numpy(), axis=-1)
            matrix += confusion_matrix(labels, predictions, k, manifest.ignore_index).numpy()
    metrics = segmentation_metrics(matrix, manifest.class_names)
    metrics.update(
        split=split,
        images=manifest.splits[split].records,
        model=predictor.source,
        confusion=matrix.tolist(),
    )
    if json_path is not None:
        outputs.write_file(Path(json_path), outputs.json_text(metrics), "--json")
    if confusion_csv is not None:
        rows = [["truth \\ predicted", *manifest.class_names]]
        rows += [[name, *map(str, row)] for name, row in zip(manifest.class_names, matrix)]
        text = "".join(",".join(r) + "\n" for r in rows)
        outputs.write_file(Path(confusion_csv), text, "--confusion-csv")
    return metrics
