"""The fused training kernels (model/fused.py): PReLU (issue 8) and batch norm + activation
(issue 31), built on first use, the same numbers as Keras' layers, used only while training,
and a clean fallback when they cannot be built.

Marked compat: the kernel is compiled against TF 2.6 (C++14) and TF 2.11 in those jobs too.
"""

import os
import stat
import subprocess

import numpy as np
import pytest

from enet_cli.core.backend import keras, tf
from enet_cli.core.config import ModelConfig
from enet_cli.model import build_enet, fused
from enet_cli.model.ops import (
    BlockPReLU,
    SyncBatchNorm,
    batch_norm,
    make_activation,
    normalize_activate,
)
from enet_cli.train.optim import seed_everything

pytestmark = pytest.mark.compat


def _kernel():
    kernel = fused.prelu()
    assert kernel is not None, f"fused kernel unavailable: {fused.unavailable_reason()}"
    return kernel


def _value_and_grads(fn, x, alpha, dy):
    with tf.GradientTape() as tape:
        tape.watch([x, alpha])
        y = fn(x, alpha)
        loss = tf.reduce_sum(y * dy)
    dx, dalpha = tape.gradient(loss, [x, alpha])
    return y.numpy(), dx.numpy(), dalpha.numpy()


def _keras_prelu(x, alpha):  # what keras.layers.PReLU.call computes
    return tf.nn.relu(x) - alpha * tf.nn.relu(-x)


@pytest.mark.parametrize("shape", [(2, 7, 9, 5), (4, 45, 60, 64)])  # a ragged tail; many chunks
@pytest.mark.parametrize("slope", [0.25, -0.3, 1.7])
def test_kernel_equals_keras_prelu_and_its_gradients(shape, slope):
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, shape).astype(np.float32)
    values.flat[::11] = 0.0  # exact zeros: Keras' gradient there is 0, not the slope
    x = tf.constant(values)
    dy = tf.constant(rng.normal(0, 1, shape).astype(np.float32))
    alpha = tf.Variable(tf.fill([1, 1, 1], slope))
    ours = _value_and_grads(_kernel(), x, alpha, dy)
    ref = _value_and_grads(_keras_prelu, x, alpha, dy)
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])
    assert ours[2].shape == (1, 1, 1)
    assert abs(ref[2].item()) > 1.0
    np.testing.assert_allclose(ours[2], ref[2], rtol=1e-5)


def _op_types_by_block(model, training):
    graph = (
        tf.function(lambda x: model(x, training=training))
        .get_concrete_function(tf.TensorSpec([1, 48, 64, 3], tf.float32))
        .graph
    )
    found = {}
    for op in graph.get_operations():
        found.setdefault(op.type, []).append(op.name.split("/")[:2][-1])
    return found


def test_enet_training_uses_the_kernels_and_inference_does_not():
    _kernel()
    model = build_enet(ModelConfig(num_classes=11), (48, 64))
    bns = [m for m in model.submodules if type(m) is keras.layers.BatchNormalization]
    # Every batch norm but the upsampling blocks' main branch (no activation after it) is
    # followed by the block's activation: those are the fused ones.
    followed = [bn for bn in bns if bn.name != "main_bn"]
    training = _op_types_by_block(model, True)
    assert len(training["EnetBatchNormAct"]) == len(followed) == len(bns) - 2
    assert len(training.get("FusedBatchNormV3", [])) == 2
    # PReLU after each residual sum: 22 blocks (the initial block has none).
    assert len(set(training["EnetPrelu"])) == 22
    inference = _op_types_by_block(model, False)
    assert not {"EnetPrelu", "EnetBatchNormAct"} & set(inference)


@pytest.mark.parametrize("dropout", [0.0, 0.3])  # 0.3: the masks fold into batch_norm_act
def test_enet_outputs_and_gradients_are_the_same_with_and_without_the_kernel(dropout):
    _kernel()
    seed_everything(6)
    config = ModelConfig(num_classes=11, dropout=dropout, stage1_dropout=dropout)
    model = build_enet(config, (48, 64))
    for k, layer in enumerate(m for m in model.submodules if isinstance(m, BlockPReLU)):
        layer.alpha.assign(tf.fill(layer.alpha.shape, 0.05 + 0.06 * k))  # one slope above 1
    rng = np.random.default_rng(7)
    images = tf.constant(rng.uniform(0, 1, (2, 48, 64, 3)), tf.float32)
    target = tf.constant(rng.normal(0, 1, (2, 48, 64, 11)), tf.float32)

    def run():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.square(logits - target))
        grads = tape.gradient(loss, model.trainable_variables)
        return logits.numpy(), [g.numpy() for g in grads]

    bns = [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization)]
    averages = [v for bn in bns for v in (bn.moving_mean, bn.moving_variance)]

    def moving():
        return [v.numpy() for v in averages]

    start = moving()
    counters = [v.numpy() for v in model.non_trainable_variables]  # dropout streams too
    logits, grads = run()
    after = moving()
    for var, value in zip(model.non_trainable_variables, counters):
        var.assign(value)
    with fused.turned_off():
        ref_logits, ref_grads = run()
    assert fused.prelu() is not None and fused.batch_norm_act() is not None  # restored
    # Batch norm's float32 round-off, carried through 88 of them with 2 x 6 x 8 pixels per
    # channel in stage 2 (measured here: Keras' own unfused batch norm moves the logits by up
    # to 1.05e-4 from its fused one on TF 2.21; this kernel 99.9% within 4e-5 on TF 2.21 and
    # 2.11, 9.8e-5 on TF 2.6's Eigen kernel). A logit near a kink (PReLU at 0, an unpooling
    # tie) can move more; an error in the kernel moves them by tenths.
    diff = np.abs(logits - ref_logits)
    assert np.quantile(diff, 0.999) < 2e-4 and diff.max() < 1e-3, (diff.max(), diff.mean())
    assert len(after) == 2 * 88  # each batch norm's moving mean and variance
    for var, ours, ref, before in zip(averages, after, moving(), start):
        assert not np.array_equal(ref, before), var.name  # the step moved every average
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=1e-5, err_msg=var.name)
    assert len(grads) == len(ref_grads) == len(model.trainable_variables)
    # Gradients differ where round-off moves an activation across a kink (ReLU or PReLU at
    # 0, an unpooling tie): measured on TF 2.21 up to 9e-4 of the largest gradient with
    # dropout 0.3 (none beyond 1e-4 with dropout 0). Before TF 2.9 (no oneDNN) Keras' batch
    # norm is TensorFlow's Eigen kernel, about 30x further from float64 than this one
    # (test_batch_norm_act_is_closer_to_float64...), and the gradients at the input end
    # carry that: up to 2% apart on TF 2.6. A wrong kernel is off by tens of percent.
    eigen = tuple(int(v) for v in tf.__version__.split(".")[:2]) < (2, 9)
    largest = max(float(np.abs(ref).max()) for ref in ref_grads)
    for var, ours, ref in zip(model.trainable_variables, grads, ref_grads):
        tolerance = (0.02 if eigen else 2e-3) * largest
        np.testing.assert_allclose(ours, ref, atol=tolerance, err_msg=var.name)


def _layers(act_kind, channels, seed):
    rng = np.random.default_rng(seed)
    bn, act = batch_norm("bn"), make_activation(act_kind, "act")
    bn.build((None, None, None, channels))
    bn.gamma.assign(rng.normal(1.0, 0.4, channels).astype(np.float32))
    bn.beta.assign(rng.normal(0.0, 0.5, channels).astype(np.float32))
    bn.moving_mean.assign(rng.normal(0.0, 1.0, channels).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype(np.float32))
    act.build((None, None, None, channels))
    return bn, act


def _bn_act_run(act_kind, x, dy, slope, seed=0):
    """Output, gradients (x, gamma, beta[, slope]) and the new moving statistics."""
    bn, act = _layers(act_kind, x.shape[-1], seed)
    if act_kind == "prelu":
        act.alpha.assign(tf.fill(act.alpha.shape, slope))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = normalize_activate(bn, act, x, True)
            loss = tf.reduce_sum(y * dy)
        return y, tape.gradient(loss, [x, bn.gamma, bn.beta, *act.trainable_variables])

    y, grads = step(x)
    ops = {op.type for op in step.get_concrete_function(x).graph.get_operations()}
    moving = [bn.moving_mean.numpy(), bn.moving_variance.numpy()]
    return ops, [y.numpy(), *[g.numpy() for g in grads]], moving


@pytest.mark.parametrize(
    "act_kind, slope", [("prelu", 0.25), ("prelu", -0.3), ("prelu", 1.7), ("relu", 0.0)]
)
@pytest.mark.parametrize(
    "shape, mean",
    [((2, 7, 9, 5), 0.0), ((4, 45, 60, 64), 0.0), ((3, 11, 13, 19), 40.0), ((1, 1, 1, 3), 0.0)],
)  # ragged rows and channels; many chunks; a mean 40x the spread; one row (no Bessel)
def test_batch_norm_act_equals_keras_layers(act_kind, slope, shape, mean):
    rng = np.random.default_rng(1)
    values = rng.normal(mean, 1.0, shape).astype(np.float32)
    x, dy = tf.constant(values), tf.constant(rng.normal(0, 1, shape).astype(np.float32))
    ops, ours, moving = _bn_act_run(act_kind, x, dy, slope)
    assert "EnetBatchNormAct" in ops and "FusedBatchNormV3" not in ops
    with fused.turned_off("batch_norm_act"):
        ref_ops, ref, ref_moving = _bn_act_run(act_kind, x, dy, slope)
    assert "EnetBatchNormAct" not in ref_ops
    names = ["y", "dx", "dgamma", "dbeta", "dslope"][: len(ref)]
    assert len(ours) == len(ref) == (5 if act_kind == "prelu" else 4)
    for name, a, b in zip(names, ours, ref):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=2e-5 * scale, rtol=0, err_msg=name)
    for name, a, b in zip(("moving mean", "moving variance"), moving, ref_moving):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())), err_msg=name)


@pytest.mark.parametrize("act_kind", ["prelu", "relu"])
def test_batch_norm_act_applies_the_dropout_mask_after_the_activation(act_kind):
    rng = np.random.default_rng(8)
    shape = (3, 20, 28, 16)
    x = tf.constant(rng.normal(0.3, 1, shape).astype(np.float32))
    dy = tf.constant(rng.normal(0, 1, shape).astype(np.float32))
    mask = tf.constant((rng.uniform(size=(3, 16)) > 0.3).astype(np.float32) / 0.7)
    bn, act = _layers(act_kind, 16, 9)
    slope = act.alpha if act_kind == "prelu" else tf.zeros([])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, _, _ = fused.batch_norm_act()(
            x, bn.gamma, bn.beta, slope, bn.moving_mean, bn.moving_variance, 1e-5, 0.9, mask=mask
        )
        ours_loss = tf.reduce_sum(ours * dy)
        ref = act(bn(x, training=True)) * mask[:, None, None, :]
        ref_loss = tf.reduce_sum(ref * dy)
    variables = [x, bn.gamma, bn.beta, *act.trainable_variables]
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-5)
    dropped = np.broadcast_to((mask.numpy() == 0)[:, None, None, :], shape)
    assert dropped.any() and (ours.numpy()[dropped] == 0).all()  # dropped: exact zeros
    for name, a, b in zip(["x", "gamma", "beta", "slope"], tape.gradient(ours_loss, variables),
                          tape.gradient(ref_loss, variables)):  # fmt: skip
        scale = float(np.abs(b.numpy()).max())
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-6 * scale, err_msg=name)


def test_batch_norm_act_is_closer_to_float64_than_keras():
    """Statistics from shifted sums in double, z from the deviation x - mean: on post-ReLU
    activations with a constant and a dead channel, within 1e-6 of float64 (Keras: 1.2e-5
    with oneDNN on TF 2.21, 2.7e-5 with Eigen on TF 2.6)."""
    rng = np.random.default_rng(0)
    v = np.maximum(rng.normal(0, 1, (2, 24, 32, 16)), 0).astype(np.float32)
    v[..., 3], v[..., 5] = 0.0, 0.7
    bn, act = batch_norm("bn"), make_activation("relu", "act")
    bn.build(v.shape)
    ours = normalize_activate(bn, act, tf.constant(v), True).numpy()
    flat = v.astype(np.float64).reshape(-1, 16)
    epsilon = max(bn.epsilon, fused._epsilon_floor())
    exact = np.maximum((flat - flat.mean(0)) / np.sqrt(flat.var(0) + epsilon), 0)
    assert np.abs(ours - exact.reshape(v.shape)).max() < 2e-6
    assert (ours[..., 3] == 0).all() and (ours[..., 5] == 0).all()


def test_batch_norm_act_is_deterministic_and_keeps_the_averages_on_an_empty_batch():
    kernel = fused.batch_norm_act()
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(0, 1, (4, 45, 60, 32)).astype(np.float32))
    gamma, beta = tf.ones([32]), tf.zeros([32])
    mm, mv = tf.fill([32], 0.5), tf.fill([32], 2.0)
    first = [t.numpy() for t in kernel(x, gamma, beta, tf.constant(0.2), mm, mv, 1e-5, 0.9)]
    again = [t.numpy() for t in kernel(x, gamma, beta, tf.constant(0.2), mm, mv, 1e-5, 0.9)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    empty = tf.zeros([0, 45, 60, 32])
    y, new_mean, new_variance = kernel(empty, gamma, beta, tf.constant(0.2), mm, mv, 1e-5, 0.9)
    assert y.shape == (0, 45, 60, 32)
    np.testing.assert_array_equal(new_mean.numpy(), mm.numpy())
    np.testing.assert_array_equal(new_variance.numpy(), mv.numpy())


def test_batch_norm_act_is_not_used_where_keras_behaves_otherwise():
    x = tf.random.normal((2, 6, 6, 8), seed=4)

    def op_types(bn, act, training=True):
        bn.build(x.shape)
        act.build(x.shape)
        fn = tf.function(lambda v: normalize_activate(bn, act, v, training))
        return {op.type for op in fn.get_concrete_function(x).graph.get_operations()}

    assert "EnetBatchNormAct" in op_types(batch_norm("bn"), make_activation("relu", "a"))
    assert "EnetBatchNormAct" not in op_types(
        batch_norm("bn"), make_activation("prelu", "a"), False
    )
    sync = SyncBatchNorm(epsilon=1e-5, momentum=0.9)
    assert "EnetBatchNormAct" not in op_types(sync, make_activation("prelu", "a"))
    frozen = batch_norm("bn")
    frozen.trainable = False  # Keras then normalises with the moving statistics
    assert "EnetBatchNormAct" not in op_types(frozen, make_activation("prelu", "a"))
    capped = keras.layers.ReLU(max_value=6.0)
    assert "EnetBatchNormAct" not in op_types(batch_norm("bn"), capped)


def test_mixed_precision_keeps_keras_ops():
    _kernel()
    layer = BlockPReLU(shared_axes=[1, 2, 3], dtype="mixed_bfloat16")
    bn = keras.layers.BatchNormalization(dtype="mixed_bfloat16")
    x = tf.cast(tf.random.normal((1, 4, 4, 3), seed=1), tf.bfloat16)
    bn.build(x.shape)
    graph = tf.function(lambda v: layer(v, training=True)).get_concrete_function(x).graph
    types = {op.type for op in graph.get_operations()}
    assert "EnetPrelu" not in types and "Relu" in types
    both = tf.function(lambda v: normalize_activate(bn, layer, v, True))
    types = {op.type for op in both.get_concrete_function(x).graph.get_operations()}
    assert "EnetBatchNormAct" not in types and "FusedBatchNormV3" in types


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process state where the kernel was never loaded, with an empty cache."""
    monkeypatch.setattr(fused, "_loaded", {})
    monkeypatch.setattr(fused, "_reason", {})
    monkeypatch.setenv("ENET_KERNEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_build_is_cached_per_tensorflow_and_leaves_only_the_library(fresh, monkeypatch):
    library = fused.build()
    assert library.parent == fresh and library.suffix == ".so"
    assert tf.__version__ in library.name
    assert [p.name for p in fresh.iterdir()] == [library.name]  # no temporary file left
    built_at = library.stat().st_mtime_ns

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again although the cache has the library")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    assert fused.build() == library
    assert library.stat().st_mtime_ns == built_at
    # Not loaded here: a second library registering the same kernels would break this
    # process's ENet (TensorFlow refuses two matching registrations at run time).
    assert library.read_bytes()[:4] == b"\x7fELF"


def test_no_compiler_means_keras_ops_and_a_reason(fresh, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert fused.prelu() is None
    assert "/nonexistent/c++" in fused.unavailable_reason()
    assert "CXX" in fused.unavailable_reason()
    assert not fresh.exists() or not any(fresh.iterdir())
    layer = BlockPReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2, 3])
    x = tf.constant([[[[-2.0, 0.0, 3.0]]]])
    np.testing.assert_allclose(layer(x, training=True).numpy(), [[[[-0.5, 0.0, 3.0]]]])


def test_a_failed_compile_leaves_nothing_in_the_cache(fresh, monkeypatch, tmp_path):
    compiler = tmp_path / "broken-c++"
    # Writes a partial library, then fails as a compiler does on an error.
    compiler.write_text(
        '#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\necho partial > "$2"\n'
        'echo "prelu.cc:1:1: error: something broke" >&2\nexit 1\n'
    )
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(compiler))
    assert fused.prelu() is None
    assert "error: something broke" in fused.unavailable_reason()
    assert list(fresh.iterdir()) == []


def test_turned_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv("ENET_FUSED_KERNELS", "0")
    assert fused.prelu() is None
    assert fused.unavailable_reason() is None  # asked for: nothing to warn about
    assert not fresh.exists()


def test_cache_directory_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("ENET_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fused.cache_dir() == tmp_path / "enet-cli" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fused.cache_dir() == tmp_path / "home" / ".cache" / "enet-cli" / "kernels"
    assert os.fspath(fused.cache_dir()).endswith("kernels")


def _logits_and_labels(shape, classes, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (*shape, classes)).astype(np.float32)
    logits[0, 0, :4] = 1.5  # every class tied: the first wins
    logits[0, 1, :4, 2] = 80.0  # softmax saturated: others below exp(-87)
    labels = rng.integers(0, classes, shape).astype(np.int32)
    labels[0, 2, :5] = classes  # void
    labels[0, 3, :2] = [classes + 7, 2**20]  # stray labels count nowhere
    return tf.constant(logits), tf.constant(labels)


@pytest.mark.parametrize("shape", [(2, 37, 41), (4, 90, 120)])  # ragged blocks; many chunks
def test_confusion_kernel_counts_as_argmax_and_bincount(shape):
    from enet_cli.core.metrics import confusion_matrix

    kernel = fused.confusion()
    logits, labels = _logits_and_labels(shape, 11, 5)
    ours = kernel(logits, labels, 11).numpy()
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    np.testing.assert_array_equal(ours, confusion_matrix(labels, predictions, 11, 11).numpy())
    assert ours.sum() == int(np.sum((labels.numpy() >= 0) & (labels.numpy() < 11)))
    empty = kernel(tf.zeros([0, 4, 4, 11]), tf.zeros([0, 4, 4], tf.int32), 11).numpy()
    np.testing.assert_array_equal(empty, np.zeros((11, 11)))


@pytest.mark.parametrize("shape", [(2, 37, 41), (4, 90, 120)])
def test_cross_entropy_kernel_equals_the_composed_loss_and_gradient(shape):
    from enet_cli.train.task import SegmentationTask

    logits, labels = _logits_and_labels(shape, 11, 6)
    weights = tuple(np.random.default_rng(2).uniform(0.3, 6.0, 11).tolist())
    task = SegmentationTask(11, 11, weights)

    def run():
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss_sum, weight_sum = task.loss_terms(x, labels)
                half = loss_sum * 0.5  # an upstream gradient that is not 1
            return loss_sum, weight_sum, tape.gradient(half, x)

        ops = {op.type for op in step.get_concrete_function(logits).graph.get_operations()}
        return ops, [t.numpy() for t in step(logits)]

    ops, (loss, weight, grad) = run()
    assert "EnetCrossEntropy" in ops and "EnetCrossEntropyGrad" in ops
    with fused.turned_off("cross_entropy"):
        ref_ops, (ref_loss, ref_weight, ref_grad) = run()
    assert "EnetCrossEntropy" not in ref_ops
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(weight, ref_weight, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6 * float(np.abs(ref_grad).max()))
    void = (labels.numpy() < 0) | (labels.numpy() >= 11)
    assert void.sum() == 5 + 2 and (grad[void] == 0).all()  # no gradient from void pixels


def test_the_training_step_uses_the_loss_and_confusion_kernels():
    from enet_cli.core.config import TrainConfig
    from enet_cli.train.engines.single import SingleEngine
    from enet_cli.train.optim import build_update
    from enet_cli.train.task import SegmentationTask

    model = build_enet(ModelConfig(num_classes=11), (48, 64))
    task = SegmentationTask(11, 11, tuple([1.0] * 11))
    update = build_update(TrainConfig(), model.trainable_variables)
    step = SingleEngine().make_train_step(model, update, task)
    images = tf.random.uniform((2, 48, 64, 3), seed=1)
    labels = tf.random.uniform((2, 48, 64), maxval=12, dtype=tf.int32, seed=2)
    out = step((images, labels))
    graph_ops = set()
    for function in (
        step.get_concrete_function((images, labels)).graph.as_graph_def().library.function
    ):
        graph_ops |= {node.op for node in function.node_def}
    graph_ops |= {
        op.type for op in step.get_concrete_function((images, labels)).graph.get_operations()
    }
    assert {"EnetCrossEntropy", "EnetConfusion", "EnetBatchNormAct"} <= graph_ops
    labels_np = labels.numpy()
    assert int(out["confusion"].numpy().sum()) == int((labels_np < 11).sum())
