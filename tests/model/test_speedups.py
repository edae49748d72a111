"""The training-speed changes keep the model's numbers (issue 8).

Each rewrite is compared with the formulation it replaced, outputs and gradients within
float tolerance: the cross-entropy as log-sum-exp (was sparse_softmax_cross_entropy), the
classifier's crop as tf.slice (was a strided slice), and export's frozen PReLU slopes as
LeakyReLU (was the learned PReLU).
"""

import contextlib

import numpy as np
import pytest

from enet_cli.core.backend import tf
from enet_cli.core.config import ModelConfig
from enet_cli.model import build_enet, fused
from enet_cli.model.layers import FullConv
from enet_cli.model.ops import BlockPReLU
from enet_cli.train.optim import seed_everything
from enet_cli.train.task import SegmentationTask

pytestmark = pytest.mark.compat


def _reference_loss_terms(task, logits, labels):
    """The loss as it was, with none of the task's code: TensorFlow's fused sparse softmax
    cross-entropy, each pixel weighted by its class's weight as the reference recipe's
    CrossEntropyLoss(weight=w, ignore_index=void) does (void pixels weigh 0)."""
    labels = np.asarray(labels)
    valid = labels != task.ignore_index
    safe = np.where(valid, labels, 0)
    weights = np.where(valid, np.asarray(task.class_weights, np.float32)[safe], 0.0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.constant(safe), logits=logits)
    weights = tf.constant(weights, tf.float32)
    return tf.reduce_sum(ce * weights), tf.reduce_sum(weights)


@pytest.mark.parametrize("kernel", [True, False])  # model/fused.py's, or the composed ops
def test_log_sum_exp_loss_equals_sparse_softmax_cross_entropy_and_its_gradient(kernel):
    rng = np.random.default_rng(0)
    task = SegmentationTask(11, 11, tuple(rng.uniform(0.5, 8.0, 11)))
    # Large logits too: log-sum-exp must stay stable where exp() alone would overflow.
    logits = tf.constant(rng.normal(0, 1, (2, 24, 32, 11)) * [[[[1.0]]], [[[60.0]]]], tf.float32)
    labels = tf.constant(rng.integers(0, 12, (2, 24, 32)), tf.int32)  # 11 = void
    results = []
    off = () if kernel else ("cross_entropy",)
    with fused.turned_off(*off) if off else contextlib.nullcontext():
        for terms in (task.loss_terms, lambda lg, lb: _reference_loss_terms(task, lg, lb)):
            with tf.GradientTape() as tape:
                tape.watch(logits)
                loss_sum, weight_sum = terms(logits, labels)
            results.append((loss_sum.numpy(), weight_sum.numpy(), tape.gradient(loss_sum, logits)))
    (ours, our_weights, our_grad), (ref, ref_weights, ref_grad) = results
    assert np.isfinite(ours) and ours > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    # The kernel adds the weights in double, the composed ops in float32: one ulp apart.
    np.testing.assert_allclose(our_weights, ref_weights, rtol=1e-6)
    np.testing.assert_allclose(our_grad.numpy(), ref_grad.numpy(), atol=1e-5)


def _outputs_and_gradients(model, images, labels):
    task = SegmentationTask(11, 11, tuple([1.0] * 11))
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss_sum, weight_sum = _reference_loss_terms(task, logits, labels)
        loss = loss_sum / weight_sum
    return logits.numpy(), [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def test_classifier_crop_by_slice_keeps_outputs_and_gradients(monkeypatch):
    seed_everything(4)
    model = build_enet(ModelConfig(num_classes=11, dropout=0.0, stage1_dropout=0.0), (48, 64))
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(0, 1, (2, 48, 64, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, 12, (2, 48, 64)), tf.int32)
    logits, grads = _outputs_and_gradients(model, images, labels)
    monkeypatch.setattr(FullConv, "call", lambda self, x: self.conv(x)[:, 1:, 1:, :])
    ref_logits, ref_grads = _outputs_and_gradients(model, images, labels)
    assert logits.shape == (2, 48, 64, 11)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    assert len(grads) == len(ref_grads) == len(model.trainable_variables)
    for ours, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-4)


def test_frozen_prelu_slopes_give_the_same_inference_outputs():
    seed_everything(5)
    model = build_enet(ModelConfig(num_classes=11), (48, 64))
    prelus = [layer for layer in model.submodules if isinstance(layer, BlockPReLU)]
    assert len(prelus) == 23  # one per encoder block (initial + 22 bottlenecks)
    for k, layer in enumerate(prelus):  # slopes away from the initial 0.25, one above 1
        layer.alpha.assign(tf.fill(layer.alpha.shape, 0.05 + 0.06 * k))
    images = tf.constant(np.random.default_rng(2).uniform(0, 1, (1, 48, 64, 3)), tf.float32)
    before = model(images, training=False).numpy()
    for layer in prelus:
        layer.freeze()
    assert prelus[-1].frozen_alpha == pytest.approx(0.05 + 0.06 * 22)
    after = model(images, training=False).numpy()
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_pointwise_convolution_as_matmul_keeps_outputs_and_gradients():
    from enet_cli.model.ops import PointwiseConv2D

    layer = PointwiseConv2D(24, 1, use_bias=False)
    images = tf.constant(np.random.default_rng(3).normal(0, 1, (2, 12, 16, 8)), tf.float32)
    layer.build(images.shape)
    results = []
    for as_matmul in (True, False):
        layer.as_matmul = as_matmul
        with tf.GradientTape() as tape:
            tape.watch(images)
            out = layer(images, training=True)
            loss = tf.reduce_sum(out * out)
        results.append(
            [out.numpy(), *[g.numpy() for g in tape.gradient(loss, [images, layer.kernel])]]
        )
    assert results[0][0].shape == (2, 12, 16, 24)
    for ours, conv in zip(*results):
        np.testing.assert_allclose(ours, conv, rtol=1e-5, atol=1e-4)


def test_enet_uses_pointwise_matmuls_for_its_1x1_convolutions():
    from enet_cli.model.ops import PointwiseConv2D

    model = build_enet(ModelConfig(num_classes=11), (48, 64))
    convs = [m for m in model.submodules if isinstance(m, tf.keras.layers.Conv2D)]
    pointwise = [m for m in convs if isinstance(m, PointwiseConv2D)]
    assert len(pointwise) == sum(1 for m in convs if tuple(m.kernel_size) == (1, 1))
    # 23 regular bottlenecks: project + expand; 2 downsampling: expand (project is 2x2);
    # 2 upsampling: main branch, project, expand.
    assert len(pointwise) == 23 * 2 + 2 + 2 * 3
    # Training multiplies matrices; inference keeps Conv2D (faster there at batch 1).
    for training, matmuls in ((True, len(pointwise)), (False, 0)):
        graph = (
            tf.function(lambda x, t=training: model(x, training=t))
            .get_concrete_function(tf.TensorSpec([1, 48, 64, 3], tf.float32))
            .graph
        )
        assert sum(op.type == "MatMul" for op in graph.get_operations()) == matmuls, training
