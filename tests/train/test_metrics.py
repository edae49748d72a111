"""Metric code shared by training and evaluate; the metrics line and SageMaker's regexes."""

import math
import re

import numpy as np
import pytest

from enet_cli.core.metrics import (
    METRIC_KEYS,
    confusion_matrix,
    format_metrics_line,
    metric_definitions,
    parse_metrics_line,
    segmentation_metrics,
)

pytestmark = pytest.mark.compat


def numpy_confusion(labels, predictions, k, ignore):
    m = np.zeros((k, k), np.int64)
    for t, p in zip(labels.ravel(), predictions.ravel()):
        if t != ignore:
            m[t, p] += 1
    return m


def test_confusion_matrix_ignores_void_and_matches_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(3, 7, 9))  # 5 = void
    predictions = rng.integers(0, 5, size=(3, 7, 9))
    got = confusion_matrix(labels, predictions, 5, 5).numpy()
    np.testing.assert_array_equal(got, numpy_confusion(labels, predictions, 5, 5))
    assert got.sum() == (labels != 5).sum()


def test_metrics_from_a_hand_made_matrix():
    # truth rows, prediction columns
    matrix = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    m = segmentation_metrics(matrix, ["a", "b", "c"])
    assert m["iou"]["a"] == pytest.approx(5 / (5 + 1 + 2))
    assert m["iou"]["b"] == pytest.approx(3 / (3 + 2 + 1))
    assert math.isnan(m["iou"]["c"])  # absent everywhere: no IoU, not counted
    assert m["mean_iou"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert m["pixel_accuracy"] == pytest.approx(8 / 11)
    assert m["class_accuracy"] == pytest.approx((5 / 6 + 3 / 5) / 2)


def test_every_regex_reads_its_value_from_the_line():
    values = {key: (i + 1) * 0.123456 for i, key in enumerate(METRIC_KEYS)}
    values.update(epoch=7, step=1234, val_loss=float("nan"))
    line = format_metrics_line(values)
    assert line.startswith("enet-metrics: epoch=7 step=1234 ")
    definitions = metric_definitions()
    assert {d["Name"] for d in definitions} >= {"train:loss", "validation:mean_iou"}
    for definition, key in zip(definitions, [k for k in METRIC_KEYS if k not in ("epoch", "step")]):
        match = re.search(definition["Regex"], line)
        assert match, definition
        if key == "val_loss":
            assert match.group(1) == "nan"
        else:
            assert float(match.group(1)) == pytest.approx(values[key], rel=1e-5)
    assert parse_metrics_line(line)["step"] == 1234
    # "loss" must not match inside "val_loss", nor mean_iou inside val_mean_iou
    only_val = format_metrics_line({"val_loss": 2.5, "val_mean_iou": 0.25})
    assert "loss" not in parse_metrics_line(only_val)
    assert "mean_iou" not in parse_metrics_line(only_val)
