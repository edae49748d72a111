"""The fused PReLU kernel (issue 8): built on first use, the same numbers as Keras' PReLU,
used only while training, and a clean fallback when it cannot be built.

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
from enet_cli.model.ops import BlockPReLU
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


def test_enet_training_uses_the_kernel_and_inference_does_not():
    _kernel()
    model = build_enet(ModelConfig(num_classes=11), (48, 64))
    for training, expected in ((True, 23), (False, 0)):  # 23 blocks with a PReLU
        graph = (
            tf.function(lambda x, t=training: model(x, training=t))
            .get_concrete_function(tf.TensorSpec([1, 48, 64, 3], tf.float32))
            .graph
        )
        blocks = {op.name.split("/")[1] for op in graph.get_operations() if op.type == "EnetPrelu"}
        assert len(blocks) == expected, training


def test_enet_outputs_and_gradients_are_the_same_with_and_without_the_kernel():
    _kernel()
    seed_everything(6)
    model = build_enet(ModelConfig(num_classes=11, dropout=0.0, stage1_dropout=0.0), (48, 64))
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

    logits, grads = run()
    with fused.turned_off():
        ref_logits, ref_grads = run()
    assert fused.prelu() is not None  # restored after the block
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    assert len(grads) == len(ref_grads) == len(model.trainable_variables)
    for var, ours, ref in zip(model.trainable_variables, grads, ref_grads):
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-4, err_msg=var.name)


def test_mixed_precision_keeps_keras_ops():
    _kernel()
    layer = BlockPReLU(shared_axes=[1, 2, 3], dtype="mixed_bfloat16")
    x = tf.cast(tf.random.normal((1, 4, 4, 3), seed=1), tf.bfloat16)
    graph = tf.function(lambda v: layer(v, training=True)).get_concrete_function(x).graph
    types = {op.type for op in graph.get_operations()}
    assert "EnetPrelu" not in types and "Relu" in types


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
