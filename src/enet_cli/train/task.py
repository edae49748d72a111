"""What one replica computes for a batch: the weighted, void-ignoring loss and a confusion matrix.

The loss is the reference recipe's `CrossEntropyLoss(weight=w, ignore_index=void)`: the sum
of w[label] * cross-entropy over non-void pixels divided by the sum of w[label]. With
several replicas the numerator stays per replica and the denominator is the *global* sum,
so that summing the replicas' gradients gives exactly the gradient of the whole batch.
"""

from typing import List, NamedTuple, Sequence

import numpy as np

from enet_cli.core.backend import tf
from enet_cli.core.config import ClassWeighting
from enet_cli.core.errors import DataError
from enet_cli.core.metrics import confusion_matrix
from enet_cli.data.manifest import Manifest
from enet_cli.model import fused


class SegmentationTask(NamedTuple):
    num_classes: int
    ignore_index: int
    class_weights: Sequence[float]

    def _pixel_weights(self, labels):
        """Each pixel's loss weight: its class's weight, 0 for void (and stray labels)."""
        valid = tf.logical_and(tf.not_equal(labels, self.ignore_index), labels < self.num_classes)
        safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
        weights = tf.gather(tf.constant(self.class_weights, tf.float32), safe_labels)
        return safe_labels, weights * tf.cast(valid, tf.float32)

    def loss_terms(self, logits, labels):
        """(sum of w * CE over this replica's non-void pixels, sum of their weights)."""
        kernel = fused.cross_entropy() if logits.dtype == tf.float32 else None
        if kernel is not None and logits.shape[-1] == self.num_classes:
            # One pass over the logits each way (model/fused.py), the same numbers.
            labels = tf.cast(labels, tf.int32)
            return kernel(logits, labels, self.class_weights, self.ignore_index)
        safe_labels, weights = self._pixel_weights(labels)
        logits = tf.cast(logits, tf.float32)
        # log-sum-exp minus the label's logit is the cross-entropy that
        # sparse_softmax_cross_entropy_with_logits computes, in fused multi-threaded ops:
        # fewer passes than that op's kernel over a 4x360x480 batch on two cores.
        label_logits = tf.reduce_sum(tf.one_hot(safe_labels, self.num_classes) * logits, -1)
        ce = tf.reduce_logsumexp(logits, axis=-1) - label_logits
        return tf.reduce_sum(ce * weights), tf.reduce_sum(weights)

    def weight_sum(self, labels):
        """The loss normaliser of a batch, from its labels alone."""
        return tf.reduce_sum(self._pixel_weights(labels)[1])

    def eval_terms(self, logits, labels):
        """What evaluation sums over batches (and replicas): loss, its normaliser, confusion."""
        loss_sum, weight_sum = self.loss_terms(logits, labels)
        return {
            "loss_sum": loss_sum,
            "weight_sum": weight_sum,
            "confusion": self.confusion(logits, labels),
        }

    def confusion(self, logits, labels):
        kernel = fused.confusion() if logits.dtype == tf.float32 else None
        if kernel is not None and logits.shape[-1] == self.num_classes:
            # One parallel pass over the logits (model/fused.py), the same counts.
            return kernel(logits, tf.cast(labels, tf.int32), self.ignore_index)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return confusion_matrix(labels, predictions, self.num_classes, self.ignore_index)


def class_weights(manifest: Manifest, weighting: ClassWeighting) -> List[float]:
    """Per-class loss weights from the manifest (computed at preprocessing from train labels)."""
    if weighting == ClassWeighting.none:
        return [1.0] * manifest.num_classes
    key = weighting.value
    if key not in manifest.class_weights:
        raise DataError(f"the manifest has no {key!r} class weights; re-run enet preprocess")
    weights = np.asarray(manifest.class_weights[key], dtype=np.float64)
    if len(weights) != manifest.num_classes or not np.all(np.isfinite(weights)):
        raise DataError(f"the manifest's {key!r} class weights are invalid; re-run preprocess")
    return [float(w) for w in weights]


def build_task(manifest: Manifest, weighting: ClassWeighting) -> SegmentationTask:
    return SegmentationTask(
        num_classes=manifest.num_classes,
        ignore_index=manifest.ignore_index,
        class_weights=tuple(class_weights(manifest, weighting)),
    )
