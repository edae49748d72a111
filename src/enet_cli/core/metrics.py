"""Segmentation metrics from a confusion matrix, and the one metrics-line format.

Every mode computes one confusion matrix per replica and step (void pixels left out), the
engine sums them across replicas, and the host turns the sum into IoU and accuracies. The
same code scores training, validation and `enet evaluate`.

The `enet-metrics:` line is the contract with SageMaker: `metric_definitions()` builds the
regexes CloudWatch applies to the job's stdout from the same key list the line is written
with, and a test checks each against the other.
"""

import math
import re
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

METRICS_PREFIX = "enet-metrics:"
# Keys a metrics line may carry, in the order they are printed.
METRIC_KEYS = (
    "epoch",
    "step",
    "loss",
    "mean_iou",
    "pixel_accuracy",
    "class_accuracy",
    "val_loss",
    "val_mean_iou",
    "val_pixel_accuracy",
    "val_class_accuracy",
    "lr",
    "images_per_sec",
)
_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"


def confusion_matrix(labels, predictions, num_classes: int, ignore_index: int):
    """(K, K) int32 counts, rows = truth, columns = prediction; `ignore_index` pixels skipped.

    One bincount over `label * K + prediction`; ignored pixels are sent past the last bin.
    """
    from enet_cli.core.backend import tf

    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    predictions = tf.cast(tf.reshape(predictions, [-1]), tf.int32)
    size = num_classes * num_classes
    valid = tf.logical_and(tf.not_equal(labels, ignore_index), labels < num_classes)
    index = tf.where(valid, labels * num_classes + predictions, size)
    counts = tf.math.bincount(index, minlength=size, maxlength=size, dtype=tf.int32)
    return tf.reshape(counts, [num_classes, num_classes])


def count_confusion(labels, predictions, num_classes: int, ignore_index: int) -> np.ndarray:
    """`confusion_matrix` in NumPy, as (K, K) int64 counts: for a model run without
    TensorFlow (serving/evaluate.py)."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    predictions = np.asarray(predictions, np.int64).reshape(-1)
    valid = (labels != ignore_index) & (labels < num_classes)
    index = labels[valid] * num_classes + predictions[valid]
    counts = np.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(
    matrix: np.ndarray, class_names: Optional[Sequence[str]] = None
) -> Dict[str, object]:
    """IoU per class, mean IoU, pixel accuracy and class-average accuracy from counts.

    A class that appears neither in the labels nor in the predictions has no IoU (NaN) and
    does not count towards the mean; a class absent from the labels has no accuracy.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    truth = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    union = truth + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        accuracy = np.where(truth > 0, tp / truth, np.nan)
    total = matrix.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    return {
        "mean_iou": _nanmean(iou),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "class_accuracy": _nanmean(accuracy),
        "iou": dict(zip(names, (float(v) for v in iou))),
        "accuracy": dict(zip(names, (float(v) for v in accuracy))),
        "pixels": int(total),
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def format_metrics_line(values: Mapping[str, float]) -> str:
    """`enet-metrics: epoch=3 loss=0.8123 ...`: known keys only, in METRIC_KEYS order."""
    parts = []
    for key in METRIC_KEYS:
        if key not in values or values[key] is None:
            continue
        value = values[key]
        if key in ("epoch", "step"):
            parts.append(f"{key}={int(value)}")
        elif isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            parts.append(f"{key}={str(value).lower()}")
        else:
            parts.append(f"{key}={float(value):.6g}")
    return f"{METRICS_PREFIX} " + " ".join(parts)


def metric_regex(key: str) -> str:
    """The regex SageMaker uses for `key`; group 1 is the value."""
    return rf"{re.escape(METRICS_PREFIX)}.*?\b{re.escape(key)}={_NUMBER}"


def metric_definitions(keys: Sequence[str] = METRIC_KEYS) -> List[Dict[str, str]]:
    """SageMaker `metric_definitions` for the metrics line (epoch and step are not metrics)."""
    names = {"mean_iou": "train:mean_iou", "loss": "train:loss"}
    return [
        {"Name": names.get(key, key.replace("val_", "validation:")), "Regex": metric_regex(key)}
        for key in keys
        if key not in ("epoch", "step")
    ]


def parse_metrics_line(line: str) -> Dict[str, float]:
    """Read a metrics line back (what the regexes would extract)."""
    if METRICS_PREFIX not in line:
        return {}
    out = {}
    for key in METRIC_KEYS:
        match = re.search(metric_regex(key), line)
        if match:
            out[key] = float(match.group(1))
    return out
