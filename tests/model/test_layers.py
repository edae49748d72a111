"""ENet layers: argmax-free unpooling equals argmax + scatter; sampling grids match the port."""

import json
import subprocess
import sys

import numpy as np
import pytest

from enet_cli.core.backend import keras, tf
from enet_cli.model.layers import (
    Bottleneck,
    DownsamplingBottleneck,
    FullConv,
    InitialBlock,
    UpsamplingBottleneck,
)
from enet_cli.model.ops import max_unpool
from enet_testing import enet_env


def unpool_with_argmax(values, pool_input):
    """The textbook unpool: scatter values to the argmax positions of a 2x2/stride-2 max pool."""
    _, argmax = tf.nn.max_pool_with_argmax(pool_input, 2, 2, "VALID", include_batch_in_index=True)
    flat = tf.scatter_nd(
        tf.reshape(argmax, [-1, 1]), tf.reshape(values, [-1]), [int(tf.size(pool_input))]
    )
    return tf.reshape(flat, tf.shape(pool_input))


@pytest.mark.compat
@pytest.mark.parametrize("levels", [2, 3, 1000000])
def test_unpool_matches_argmax_scatter_including_ties(levels):
    # Few distinct levels force many ties inside 2x2 windows (levels=2: most windows tie).
    rng = np.random.default_rng(levels)
    pool_input = rng.integers(0, levels, size=(3, 8, 12, 5)).astype("float32")
    values = rng.normal(size=(3, 4, 6, 5)).astype("float32")
    expected = unpool_with_argmax(values, pool_input).numpy()
    got = max_unpool(tf.constant(values), tf.constant(pool_input)).numpy()
    np.testing.assert_array_equal(got, expected)
    # Exactly one position per window and channel receives its value.
    assert np.count_nonzero(got) == np.count_nonzero(values)
    if levels == 2:
        windows = pool_input.reshape(3, 4, 2, 6, 2, 5)
        ties = (windows == windows.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4)) > 1
        assert ties.mean() > 0.3  # the test really exercised ties


@pytest.mark.compat
def test_unpool_works_on_unknown_spatial_size_and_passes_gradients_to_values():
    fn = tf.function(
        max_unpool,
        input_signature=[
            tf.TensorSpec([None, None, None, 4]),
            tf.TensorSpec([None, None, None, 4]),
        ],
    )
    rng = np.random.default_rng(0)
    pool_input = tf.constant(rng.normal(size=(2, 6, 10, 4)).astype("float32"))
    values = tf.constant(rng.normal(size=(2, 3, 5, 4)).astype("float32"))
    np.testing.assert_array_equal(fn(values, pool_input), unpool_with_argmax(values, pool_input))
    with tf.GradientTape() as tape:
        tape.watch(values)
        out = tf.reduce_sum(max_unpool(values, pool_input) * 3.0)
    np.testing.assert_allclose(tape.gradient(out, values), np.full(values.shape, 3.0))


def test_unpool_compiles_with_xla():
    rng = np.random.default_rng(1)
    pool_input = tf.constant(rng.integers(0, 3, size=(1, 8, 8, 2)).astype("float32"))
    values = tf.constant(rng.normal(size=(1, 4, 4, 2)).astype("float32"))
    xla = tf.function(max_unpool, jit_compile=True)
    np.testing.assert_array_equal(xla(values, pool_input), unpool_with_argmax(values, pool_input))


def _torch_style_transposed_conv(x, kernel, stride, padding):
    """out[s*i + k - padding] += x[i] * kernel[k], cropped to stride*size (PyTorch's grid)."""
    n, h, w, _ = x.shape
    kh, kw, cout, _ = kernel.shape
    out = np.zeros((n, stride * h + kh, stride * w + kw, cout), dtype=np.float64)
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for b in range(kw):
                    out[:, stride * i + a, stride * j + b] += x[:, i, j] @ kernel[a, b].T
    return out[:, padding : padding + stride * h, padding : padding + stride * w]


def test_fullconv_uses_the_reference_sampling_grid():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 4, 16)).astype("float32")
    layer = FullConv(5)
    got = layer(x).numpy()
    kernel = layer.conv.kernel.numpy()  # (kh, kw, out, in)
    expected = _torch_style_transposed_conv(x, kernel, stride=2, padding=1)
    assert got.shape == (2, 6, 8, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_initial_block_pools_3x3_with_padding_one_like_the_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 6, 8, 3)).astype("float32") - 5.0  # negative: padding must be -inf
    block = InitialBlock(16)
    block(x)  # build
    # Make BN and PReLU the identity so the pooled channels show through unchanged.
    block.bn.set_weights([np.ones(16), np.zeros(16), np.zeros(16), np.ones(16) - 1e-5])
    block.act.set_weights([np.ones((1, 1, 1))])
    pooled = block(x, training=False).numpy()[..., 13:]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    expected = np.stack(
        [
            np.stack(
                [
                    padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
                    for j in range(4)
                ],
                axis=1,
            )
            for i in range(3)
        ],
        axis=1,
    )
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.compat
@pytest.mark.parametrize(
    "layer,inputs,out_shape,params",
    [
        # params derived by hand: convs (no bias) + 2 per BN channel + 1 shared PReLU slope
        (InitialBlock(16), [(1, 16, 16, 3)], (1, 8, 8, 16), 3 * 3 * 3 * 13 + 2 * 16 + 1),
        (
            Bottleneck(64),
            [(1, 8, 8, 64)],
            (1, 8, 8, 64),
            64 * 16 + 32 + 9 * 16 * 16 + 32 + 16 * 64 + 128 + 1,
        ),
        (
            Bottleneck(128, kind="asymmetric"),
            [(1, 8, 8, 128)],
            (1, 8, 8, 128),
            128 * 32 + 64 + 2 * (5 * 32 * 32 + 64) + 32 * 128 + 256 + 1,
        ),
        (
            Bottleneck(64, kind="dilated", dilation=4, activation="relu"),
            [(1, 8, 8, 64)],
            (1, 8, 8, 64),
            64 * 16 + 32 + 9 * 16 * 16 + 32 + 16 * 64 + 128,
        ),
        (
            DownsamplingBottleneck(64),
            [(1, 8, 8, 16)],
            (1, 4, 4, 64),
            4 * 16 * 4 + 8 + 9 * 4 * 4 + 8 + 4 * 64 + 128 + 1,
        ),
        (
            UpsamplingBottleneck(16),
            [(1, 4, 4, 64), (1, 8, 8, 16)],
            (1, 8, 8, 16),
            64 * 16 + 32 + 64 * 16 + 32 + 4 * 16 * 16 + 32 + 16 * 16 + 32,
        ),
    ],
)
def test_layer_shapes_weights_and_config_round_trip(layer, inputs, out_shape, params):
    rng = np.random.default_rng(4)
    args = [tf.constant(rng.normal(size=s).astype("float32")) for s in inputs]
    out = layer(args if len(args) > 1 else args[0], training=False)
    assert tuple(out.shape) == out_shape
    assert sum(int(np.prod(v.shape)) for v in layer.trainable_weights) == params
    clone = type(layer).from_config(layer.get_config())
    clone(args if len(args) > 1 else args[0])
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        clone(args if len(args) > 1 else args[0], training=False), out, rtol=1e-5, atol=1e-5
    )


def test_bottleneck_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be"):
        Bottleneck(64, kind="separable")


def test_keras_layers_are_keras2():
    """Keras 2's Layer lives in `<package>.engine.base_layer` (keras 2.x, tf_keras); Keras
    3's in `keras.src.layers.layer`, which tf.keras becomes on TF >= 2.16 unless
    TF_USE_LEGACY_KERAS=1 is set before TensorFlow is first imported (backend.py)."""
    bases = [c.__module__ for c in Bottleneck.__mro__ if c.__name__ == "Layer"]
    assert bases and all(m.endswith("engine.base_layer") for m in bases), bases
    assert not callable(getattr(keras, "version", None)) or not keras.version().startswith("3")


@pytest.mark.compat
def test_spatial_dropout_drops_whole_channels_and_replays_after_restore():
    from enet_cli.model.ops import SpatialDropout

    x = tf.ones((2, 4, 4, 64))
    layer = SpatialDropout(0.5, seed=11)
    first = layer(x, training=True).numpy()
    # whole channels: each (image, channel) plane is all 0 or all 2 (= 1 / (1 - rate))
    planes = first.reshape(2, 16, 64)
    assert set(np.unique(planes)) <= {0.0, 2.0}
    assert (planes.min(axis=1) == planes.max(axis=1)).all()
    assert 0.2 < (planes[:, 0] == 0).mean() < 0.8
    second = layer(x, training=True).numpy()
    assert not np.array_equal(first, second)  # the stream moves on
    np.testing.assert_array_equal(layer(x, training=False), x)  # inference: identity

    # A fresh layer restored to the first layer's state replays its next mask.
    clone = SpatialDropout(0.5, seed=11)
    clone(x, training=False)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x, training=True), layer(x, training=True))


SYNC_BN_PROBE = r"""
import json
import numpy as np
from enet_cli.core.backend import tf
from enet_cli.model.ops import SyncBatchNorm

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
rng = np.random.default_rng(0)
# A channel whose mean is large against its spread: where E[x^2] - E[x]^2 loses its digits.
x = (1000.0 + rng.normal(size=(4, 6, 6, 3))).astype(np.float32)
with strategy.scope():
    layer = SyncBatchNorm(epsilon=1e-3)
    layer.build(x.shape)
parts = strategy.experimental_distribute_values_from_function(
    lambda context: tf.constant(x[2 * context.replica_id_in_sync_group:][:2])
)
out = strategy.run(lambda v: layer(v, training=True), args=(parts,))
ours = np.concatenate([t.numpy() for t in strategy.experimental_local_results(out)])
print(json.dumps({"ours": ours.tolist()}))
"""


def test_sync_batch_norm_keeps_float32_digits_where_one_pass_variance_loses_them():
    """Two replicas (2 logical CPU devices) normalising a 4-image batch together, on data
    whose mean (1000) dwarfs its spread (1): the two-pass statistics match the float64
    normalisation of the whole batch to float32 round-off; E[x^2] - E[x]^2 in float32
    (Keras' synchronised batch norm) is off by whole percents."""
    result = subprocess.run(
        [sys.executable, "-c", SYNC_BN_PROBE], capture_output=True, text=True, timeout=300,
        env=enet_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ours = np.array(json.loads(result.stdout.strip().splitlines()[-1])["ours"])
    x = (1000.0 + np.random.default_rng(0).normal(size=(4, 6, 6, 3))).astype(np.float32)
    exact = x.astype(np.float64)
    mean, var = exact.mean((0, 1, 2)), exact.var((0, 1, 2))
    reference = (exact - mean) / np.sqrt(var + 1e-3)
    x32 = x.astype(np.float32)
    one_pass_var = (x32 * x32).mean((0, 1, 2)) - x32.mean((0, 1, 2)) ** 2
    one_pass = (x32 - x32.mean((0, 1, 2))) / np.sqrt(np.maximum(one_pass_var, 0) + 1e-3)
    ours_error = np.abs(ours - reference).max()
    one_pass_error = np.abs(one_pass - reference).max()
    assert ours_error < 1e-3, ours_error
    assert one_pass_error > 20 * ours_error and one_pass_error > 1e-2, one_pass_error
