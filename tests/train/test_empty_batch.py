"""Validation on a data-parallel worker whose share of the split ends first: its last batch
is empty. oneDNN's pooling and convolutions mis-shape zero images (the initial block's
concat then fails: `ConcatOp : Dimension 1 in both shapes must be equal`), which stopped
`enet train --mode ddp --local-workers 2` on CamVid's 101 validation images at the first
validation. The eval step skips the model on an empty batch; its terms are zeros."""

import numpy as np

from enet_cli.core.backend import tf
from enet_cli.core.config import ModelConfig
from enet_cli.model import build_enet
from enet_cli.train.engines.single import SingleEngine
from enet_cli.train.task import SegmentationTask


def test_the_eval_step_takes_an_empty_batch_and_counts_nothing():
    model = build_enet(ModelConfig(num_classes=11, bottlenecks=(1, 3, 0, 1, 1)), (48, 64))
    step = SingleEngine().make_eval_step(model, SegmentationTask(11, 11, tuple([1.0] * 11)))
    empty = step((tf.zeros([0, 48, 64, 3]), tf.zeros([0, 48, 64], tf.int32)))
    assert float(empty["weight_sum"]) == 0 and not np.any(empty["confusion"].numpy())
    # The same step still scores a real batch: every labelled pixel counted once.
    labels = tf.constant(np.random.default_rng(0).integers(0, 12, (2, 48, 64)), tf.int32)
    full = step((tf.random.uniform([2, 48, 64, 3]), labels))
    assert int(full["confusion"].numpy().sum()) == int(np.sum(labels.numpy() < 11))
