"""ENet's building blocks as Keras 2 layers: initial block, bottlenecks, and max-unpooling.

Layer style follows keras-hub: constructor arguments are kept as same-named attributes,
sublayers are created in `build()`, `get_config()` lists exactly the constructor arguments.
Every block also reports its multiply-adds for an input shape, so that `enet model summary`
can show where the compute goes without a profiler (which misses transposed convolutions).

Shapes are NHWC. Spatial sizes may be unknown (None): every op here works on dynamic shapes.
"""

from typing import List, Optional, Tuple

from enet_cli.backend import keras, tf
from enet_cli.model import fused

Shape = Tuple[Optional[int], ...]

# PyTorch's defaults (the reference port is PyTorch): BatchNorm eps 1e-5 and momentum 0.1,
# which is Keras momentum 0.9; conv kernels kaiming_uniform(a=sqrt(5)), which is exactly
# VarianceScaling(1/3, fan_in, uniform), also for transposed kernels (same fan-in axis).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
PRELU_INIT = 0.25


def _kernel_init():
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


class PointwiseConv2D(keras.layers.Conv2D):
    """A 1x1 convolution computed as one matrix multiply over all pixels while training.

    Same kernel variable (1, 1, Cin, Cout) and the same numbers as Conv2D, but a MatMul and
    its two gradient MatMuls instead of oneDNN's NHWC convolution kernels, which are slow
    for ENet's few channels: the training step ran 7% faster on two CPU cores (paired,
    in-process A/B; tests/model/test_speedups.py checks outputs and gradients). Export sets
    `as_matmul = False`: TFLite's converter folds batch norm into CONV_2D.
    """

    as_matmul = True

    def call(self, inputs, training=None):
        if not (self.as_matmul and training):  # inference: Conv2D was 10% faster at batch 1
            return super().call(inputs)
        kernel = tf.reshape(self.kernel, self.kernel.shape[2:])
        shape = tf.shape(inputs)
        flat = tf.matmul(tf.reshape(inputs, [-1, kernel.shape[0]]), kernel)
        outputs = tf.reshape(flat, tf.concat([shape[:3], [kernel.shape[1]]], 0))
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return outputs


def _conv(filters: int, kernel, name: str, strides=1, padding="same", dilation=1):
    layer = PointwiseConv2D if kernel == 1 and strides == 1 and dilation == 1 else None
    return (layer or keras.layers.Conv2D)(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        use_bias=False,
        kernel_initializer=_kernel_init(),
        name=name,
    )


class SyncBatchNorm(keras.layers.BatchNormalization):
    """Batch norm whose training statistics cover all replicas of the tf.distribute strategy.

    Keras' own synchronised batch norm computes the variance as E[x^2] - E[x]^2, which loses
    most of its float32 digits when a channel's mean is large against its spread. This
    computes it in two passes - global mean first, then the global mean squared deviation -
    at the price of one more all-reduce per layer, and agrees with the unsplit batch to
    float32 round-off where the one-pass formula is off by whole percents. Same variables as
    BatchNormalization: checkpoints move freely.
    """

    def __init__(self, **kwargs):
        kwargs["fused"] = False  # the fused kernel computes local statistics only
        super().__init__(**kwargs)

    def _calculate_mean_and_var(self, inputs, reduction_axes, keep_dims, *args, **kwargs):
        replica = tf.distribute.get_replica_context()
        if replica is None or replica.num_replicas_in_sync == 1:
            return super()._calculate_mean_and_var(
                inputs, reduction_axes, keep_dims, *args, **kwargs
            )
        total = tf.distribute.ReduceOp.SUM
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), reduction_axes)), inputs.dtype)
        count = replica.all_reduce(total, count)
        local_sum = tf.reduce_sum(inputs, axis=reduction_axes, keepdims=True)
        mean = replica.all_reduce(total, local_sum) / count
        deviations = tf.reduce_sum(tf.square(inputs - mean), axis=reduction_axes, keepdims=True)
        variance = replica.all_reduce(total, deviations) / count
        if not keep_dims:
            mean = tf.squeeze(mean, reduction_axes)
            variance = tf.squeeze(variance, reduction_axes)
        return mean, variance


def _bn(name: str, synchronized: bool = False):
    """Batch norm; `synchronized` computes the statistics over all replicas of a tf.distribute
    strategy (the global batch), so data-parallel training normalises as one process would."""
    layer = SyncBatchNorm if synchronized else keras.layers.BatchNormalization
    return layer(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


class BlockPReLU(keras.layers.PReLU):
    """PReLU with one learned slope; `freeze()` makes it a LeakyReLU with that slope.

    Training in float32 on a CPU runs the fused kernel of `model/fused.py` (one pass forward,
    one backward, instead of Keras' five ops and their gradients: the step 1.20x faster on
    two cores), the same numbers. Inference keeps Keras' ops, so SavedModels and TFLite
    files hold only standard operators. Export freezes the slopes: a constant-slope LeakyReLU
    is an operator XNNPACK runs in int8, where TFLite's PRELU fell back to the reference
    kernel between ~100 delegate partitions (int8 ENet 6x slower than float32). Same
    variable, same checkpoints.
    """

    frozen_alpha: Optional[float] = None

    def freeze(self) -> None:
        self.frozen_alpha = float(tf.reshape(self.alpha, [-1])[0])

    def call(self, inputs, training=None):
        if self.frozen_alpha is not None:
            return tf.nn.leaky_relu(inputs, alpha=self.frozen_alpha)
        if training and inputs.dtype == tf.float32:
            kernel = fused.prelu()
            if kernel is not None:
                return kernel(inputs, self.alpha)
        return super().call(inputs)


def _activation(kind: str, name: str):
    """One activation per block, reused at every place in it (as the reference port does).

    The reference builds one `nn.PReLU()` (a single learnable slope) per block and calls it
    after every convolution of the block and after the residual sum, so the block shares one
    scalar. `shared_axes=[1, 2, 3]` gives that one scalar for inputs of any shape.
    """
    if kind == "prelu":
        return BlockPReLU(
            alpha_initializer=keras.initializers.Constant(PRELU_INIT),
            shared_axes=[1, 2, 3],
            name=name,
        )
    if kind == "relu":
        return keras.layers.ReLU(name=name)
    raise ValueError(f"activation must be 'prelu' or 'relu', got {kind!r}")


def _spatial(shape: Shape) -> int:
    """Pixels per image, for multiply-add counts; unknown sizes count as 0."""
    h, w = shape[1], shape[2]
    return int(h or 0) * int(w or 0)


def _conv_macs(conv, output_pixels: int) -> int:
    """A convolution costs one multiply-add per kernel weight per output pixel."""
    return int(conv.kernel.shape.num_elements()) * output_pixels


# --------------------------------------------------------------------------------------
# Unpooling without argmax
# --------------------------------------------------------------------------------------
def max_pool_mask(pool_input: tf.Tensor) -> tf.Tensor:
    """Where a 2x2/stride-2 max pool took each output from, as a one-hot over the window.

    Returns [N, H/2, W/2, 4C] with, for every window and channel, 1 at the first position
    (row-major: top-left, top-right, bottom-left, bottom-right) that holds the window's
    maximum and 0 elsewhere: the same choice `tf.nn.max_pool_with_argmax` makes, ties
    included. Built from space_to_depth, comparisons and products only, so it lowers to
    XLA and to TFLite builtins, which argmax + scatter does not.
    """
    pool_input = tf.stop_gradient(pool_input)
    blocks = tf.nn.space_to_depth(pool_input, 2)  # depth ordered (dy, dx, channel)
    corners = tf.split(blocks, 4, axis=-1)
    pooled = tf.reduce_max(tf.stack(corners, axis=0), axis=0)
    taken = tf.zeros_like(pooled)
    masks = []
    for corner in corners:
        hit = tf.cast(tf.equal(corner, pooled), pooled.dtype) * (1 - taken)
        masks.append(hit)
        taken = taken + hit
    return tf.concat(masks, axis=-1)


def max_unpool(values: tf.Tensor, pool_input: tf.Tensor) -> tf.Tensor:
    """Place each value at the position its window's maximum had in `pool_input`; zeros elsewhere.

    Equivalent to scattering `values` to the indices of `max_pool_with_argmax(pool_input)`.
    Using the pooled tensor itself instead of stored indices costs one comparison per pixel
    and nothing extra in memory: the pooled layer's input is kept for backprop anyway.
    """
    mask = max_pool_mask(pool_input)
    return tf.nn.depth_to_space(tf.tile(values, [1, 1, 1, 4]) * tf.cast(mask, values.dtype), 2)


class MaxUnpool2D(keras.layers.Layer):
    """`max_unpool` as a layer: inputs `[values (N,h,w,C), pool_input (N,2h,2w,C)]`."""

    def call(self, inputs):
        values, pool_input = inputs
        return max_unpool(values, pool_input)

    def compute_output_shape(self, input_shape):
        return input_shape[1]


# --------------------------------------------------------------------------------------
# Dropout that a resumed run replays exactly
# --------------------------------------------------------------------------------------
def _layer_seed(name: str) -> int:
    """A stable per-layer seed from the layer's name (Python's hash() is salted per process)."""
    import zlib

    return zlib.crc32(name.encode()) & 0x7FFFFFFF


class SpatialDropout(keras.layers.Layer):
    """Spatial dropout (whole channels, like `nn.Dropout2d`) with a checkpointed random stream.

    Keras' SpatialDropout2D draws from stateful RNG kernels whose position is lost when a
    process restarts, so a resumed run would drop other channels than an uninterrupted one.
    Here the mask is a stateless function of (layer seed, call counter, replica); the counter
    is a layer variable saved with the model, so resume replays the same masks.
    `REPLICA_SEED` is set by engines whose replicas are separate processes (SMDDP, SMP).
    """

    REPLICA_SEED = 0

    def __init__(self, rate: float, seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = _layer_seed(self.name) if seed is None else seed

    def build(self, input_shape):
        self.counter = self.add_weight(
            name="counter",
            shape=[],
            dtype=tf.int64,
            trainable=False,
            initializer="zeros",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        super().build(input_shape)

    def call(self, inputs, training=None):
        if not training or self.rate == 0:
            return inputs
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        seed = tf.stack(
            [
                tf.constant(self.seed, tf.int64)
                + 1_000_003 * tf.cast(replica_id, tf.int64)
                + 7_919 * self.REPLICA_SEED,
                self.counter.assign_add(1),
            ]
        )
        shape = tf.stack([tf.shape(inputs)[0], 1, 1, tf.shape(inputs)[3]])
        keep = tf.random.stateless_uniform(shape, seed) >= self.rate
        # Scale the (N, 1, 1, C) mask, not the activations: one full-size multiply, not two.
        return inputs * (tf.cast(keep, inputs.dtype) / tf.cast(1.0 - self.rate, inputs.dtype))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


# --------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------
class InitialBlock(keras.layers.Layer):
    """13 strided 3x3 filters beside a 3x3/stride-2 max pool of the image, concatenated.

    (N, H, W, 3) -> (N, H/2, W/2, 16). Padding is explicit (1 pixel each side, -inf for the
    pool) so the sampling grid is the reference's, not Keras "same" (which pads only after).
    """

    def __init__(
        self, filters: int = 16, activation: str = "prelu", sync_batchnorm: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.activation = activation
        self.sync_batchnorm = sync_batchnorm

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.conv = _conv(self.filters - channels, 3, "conv", strides=2, padding="valid")
        self.bn = _bn("bn", self.sync_batchnorm)
        self.act = _activation(self.activation, "act")
        super().build(input_shape)

    def call(self, inputs, training=None):
        pad = [[0, 0], [1, 1], [1, 1], [0, 0]]
        main = self.conv(tf.pad(inputs, pad))
        pooled = tf.nn.max_pool2d(
            tf.pad(inputs, pad, constant_values=inputs.dtype.min), 3, 2, "VALID"
        )
        out = tf.concat([main, tf.cast(pooled, main.dtype)], axis=-1)
        return self.act(self.bn(out, training=training))

    def multiply_adds(self, input_shape: Shape) -> int:
        return _conv_macs(self.conv, _spatial(input_shape) // 4)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "activation": self.activation,
            "sync_batchnorm": self.sync_batchnorm,
        }


class Bottleneck(keras.layers.Layer):
    """Residual bottleneck: 1x1 projection to C/4, a main conv, 1x1 expansion, spatial dropout.

    `kind` picks the main convolution: "regular" (3x3), "dilated" (3x3 with `dilation`), or
    "asymmetric" (5x1 then 1x5, each with batch norm and activation). Shape-preserving:
    (N, H, W, C) -> (N, H, W, C).
    """

    def __init__(
        self,
        channels: int,
        kind: str = "regular",
        dilation: int = 1,
        dropout: float = 0.1,
        activation: str = "prelu",
        sync_batchnorm: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kind not in ("regular", "dilated", "asymmetric"):
            raise ValueError(f"kind must be regular, dilated or asymmetric, got {kind!r}")
        self.channels = channels
        self.kind = kind
        self.dilation = dilation
        self.dropout = dropout
        self.activation = activation
        self.sync_batchnorm = sync_batchnorm

    def build(self, input_shape):
        inner = self.channels // 4
        self.project = _conv(inner, 1, "project")
        self.project_bn = _bn("project_bn", self.sync_batchnorm)
        if self.kind == "asymmetric":
            self.main_convs = [_conv(inner, (5, 1), "conv_5x1"), _conv(inner, (1, 5), "conv_1x5")]
        else:
            self.main_convs = [_conv(inner, 3, "conv", dilation=self.dilation)]
        self.main_bns = [_bn(f"{conv.name}_bn", self.sync_batchnorm) for conv in self.main_convs]
        self.expand = _conv(self.channels, 1, "expand")
        self.expand_bn = _bn("expand_bn", self.sync_batchnorm)
        self.drop = SpatialDropout(self.dropout, seed=_layer_seed(self.name), name="dropout")
        self.act = _activation(self.activation, "act")
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = self.act(self.project_bn(self.project(inputs), training=training))
        for conv, bn in zip(self.main_convs, self.main_bns):
            x = self.act(bn(conv(x), training=training))
        x = self.act(self.expand_bn(self.expand(x), training=training))
        x = self.drop(x, training=training)
        return self.act(inputs + x)

    def multiply_adds(self, input_shape: Shape) -> int:
        pixels = _spatial(input_shape)
        convs = [self.project, *self.main_convs, self.expand]
        return sum(_conv_macs(conv, pixels) for conv in convs)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "kind": self.kind,
            "dilation": self.dilation,
            "dropout": self.dropout,
            "activation": self.activation,
            "sync_batchnorm": self.sync_batchnorm,
        }


class DownsamplingBottleneck(keras.layers.Layer):
    """Halves H and W: a 2x2/stride-2 projection, 3x3 conv, 1x1 expansion, beside a max pool.

    (N, H, W, Cin) -> (N, H/2, W/2, Cout). The pooled main branch is zero-padded to Cout
    channels. The matching `UpsamplingBottleneck` unpools with this block's *input*.
    """

    def __init__(
        self,
        channels: int,
        dropout: float = 0.1,
        activation: str = "prelu",
        sync_batchnorm: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = channels
        self.dropout = dropout
        self.activation = activation
        self.sync_batchnorm = sync_batchnorm

    def build(self, input_shape):
        inner = int(input_shape[-1]) // 4
        self.project = _conv(inner, 2, "project", strides=2, padding="valid")
        self.project_bn = _bn("project_bn", self.sync_batchnorm)
        self.conv = _conv(inner, 3, "conv")
        self.conv_bn = _bn("conv_bn", self.sync_batchnorm)
        self.expand = _conv(self.channels, 1, "expand")
        self.expand_bn = _bn("expand_bn", self.sync_batchnorm)
        self.drop = SpatialDropout(self.dropout, seed=_layer_seed(self.name), name="dropout")
        self.act = _activation(self.activation, "act")
        super().build(input_shape)

    def call(self, inputs, training=None):
        main = tf.nn.max_pool2d(inputs, 2, 2, "VALID")
        main = tf.pad(main, [[0, 0], [0, 0], [0, 0], [0, self.channels - inputs.shape[-1]]])
        x = self.act(self.project_bn(self.project(inputs), training=training))
        x = self.act(self.conv_bn(self.conv(x), training=training))
        x = self.act(self.expand_bn(self.expand(x), training=training))
        x = self.drop(x, training=training)
        return self.act(main + x)

    def multiply_adds(self, input_shape: Shape) -> int:
        pixels = _spatial(input_shape) // 4
        return sum(_conv_macs(c, pixels) for c in (self.project, self.conv, self.expand))

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "dropout": self.dropout,
            "activation": self.activation,
            "sync_batchnorm": self.sync_batchnorm,
        }


class UpsamplingBottleneck(keras.layers.Layer):
    """Doubles H and W: main branch 1x1 conv + max-unpool, side branch with a 2x2 transposed conv.

    Inputs `[x (N, h, w, Cin), pool_input (N, 2h, 2w, Cout)]`, where `pool_input` is the
    input of the matching `DownsamplingBottleneck`; output (N, 2h, 2w, Cout). As in the
    reference, the main branch has batch norm but no activation before the unpool.
    """

    def __init__(
        self,
        channels: int,
        dropout: float = 0.1,
        activation: str = "relu",
        sync_batchnorm: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = channels
        self.dropout = dropout
        self.activation = activation
        self.sync_batchnorm = sync_batchnorm

    def build(self, input_shape):
        inner = int(input_shape[0][-1]) // 4
        self.main_conv = _conv(self.channels, 1, "main_conv")
        self.main_bn = _bn("main_bn", self.sync_batchnorm)
        self.unpool = MaxUnpool2D(name="unpool")
        self.project = _conv(inner, 1, "project")
        self.project_bn = _bn("project_bn", self.sync_batchnorm)
        self.upconv = keras.layers.Conv2DTranspose(
            inner,
            2,
            strides=2,
            padding="valid",
            use_bias=False,
            kernel_initializer=_kernel_init(),
            name="upconv",
        )
        self.upconv_bn = _bn("upconv_bn", self.sync_batchnorm)
        self.expand = _conv(self.channels, 1, "expand")
        self.expand_bn = _bn("expand_bn", self.sync_batchnorm)
        self.drop = SpatialDropout(self.dropout, seed=_layer_seed(self.name), name="dropout")
        self.act = _activation(self.activation, "act")
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, pool_input = inputs
        main = self.main_bn(self.main_conv(x), training=training)
        main = self.unpool([main, pool_input])
        y = self.act(self.project_bn(self.project(x), training=training))
        y = self.act(self.upconv_bn(self.upconv(y), training=training))
        y = self.act(self.expand_bn(self.expand(y), training=training))
        y = self.drop(y, training=training)
        return self.act(main + y)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[1])[:-1].concatenate([self.channels])

    def multiply_adds(self, input_shape: List[Shape]) -> int:
        pixels = _spatial(input_shape[0])
        return (
            _conv_macs(self.main_conv, pixels)
            + _conv_macs(self.project, pixels)
            + _conv_macs(self.upconv, pixels)  # each input pixel meets the whole 2x2 kernel
            + _conv_macs(self.expand, pixels * 4)
        )

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "dropout": self.dropout,
            "activation": self.activation,
            "sync_batchnorm": self.sync_batchnorm,
        }


class FullConv(keras.layers.Layer):
    """Classifier: 3x3/stride-2 transposed conv to the classes, no bias: (N,h,w,C) -> (N,2h,2w,K).

    The reference's `ConvTranspose2d(padding=1, output_padding=1)` writes output pixel
    2i + k - 1 from input pixel i and tap k. A "valid" transposed conv writes 2i + k into a
    (2h+1)-wide map, so dropping its first row and column gives exactly the reference's grid.
    The crop is `tf.slice`, not `[:, 1:, 1:]`: the gradient of a strided slice is a
    single-threaded kernel that cost 50 ms of a 750 ms training step on two CPU cores; the
    gradient of a slice is a pad (benchmarks/train_step.py).
    """

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def build(self, input_shape):
        self.conv = keras.layers.Conv2DTranspose(
            self.num_classes,
            3,
            strides=2,
            padding="valid",
            use_bias=False,
            kernel_initializer=_kernel_init(),
            name="conv",
        )
        super().build(input_shape)

    def call(self, inputs):
        return tf.slice(self.conv(inputs), [0, 1, 1, 0], [-1, -1, -1, -1])

    def multiply_adds(self, input_shape: Shape) -> int:
        return _conv_macs(self.conv, _spatial(input_shape))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
