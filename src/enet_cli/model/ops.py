"""The ops ENet's blocks are made of, kept apart from the paper's blocks (layers.py): each
one is here because it is faster or more exact than the stock Keras layer on some backend.

- `PointwiseConv2D`: 1x1 convolutions as a matmul (and CONV_2D for TFLite export);
- `SyncBatchNorm`: batch norm over every replica's batch, two-pass (Keras' E[x^2]-E[x]^2
  loses float32 digits);
- `BlockPReLU`: PReLU with the fused training kernel (model/fused.py) where it builds;
- `SpatialDropout`: stateless, per-replica-seeded channel dropout (resumable, reproducible);
- `max_pool_mask` / `max_unpool` / `MaxUnpool2D`: SegNet's unpooling without argmax indices;
- `integer_max_pool_mask`, `subpixel_kernel`, `inference_affine`: what export copies compute
  instead, the same numbers from operators TFLite's XNNPACK runs (serving/tflite.py).

Shapes are NHWC; spatial sizes may be unknown (None).
"""

from typing import Optional, Tuple

from enet_cli.core.backend import keras, tf
from enet_cli.model import fused

Shape = Tuple[Optional[int], ...]

# PyTorch's defaults (the reference port is PyTorch): BatchNorm eps 1e-5 and momentum 0.1,
# which is Keras momentum 0.9; conv kernels kaiming_uniform(a=sqrt(5)), which is exactly
# VarianceScaling(1/3, fan_in, uniform), also for transposed kernels (same fan-in axis).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
PRELU_INIT = 0.25


def kernel_init():
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


def conv2d(filters: int, kernel, name: str, strides=1, padding="same", dilation=1):
    layer = PointwiseConv2D if kernel == 1 and strides == 1 and dilation == 1 else None
    return (layer or keras.layers.Conv2D)(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        use_bias=False,
        kernel_initializer=kernel_init(),
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


def batch_norm(name: str, synchronized: bool = False):
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
        if self.frozen_alpha == 0:  # an operator's fused activation, where LeakyReLU is not
            return tf.nn.relu(inputs)
        if self.frozen_alpha is not None:
            return tf.nn.leaky_relu(inputs, alpha=self.frozen_alpha)
        if training and inputs.dtype == tf.float32:
            kernel = fused.prelu()
            if kernel is not None:
                return kernel(inputs, self.alpha)
        return super().call(inputs)


def make_activation(kind: str, name: str):
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


def normalize_activate(bn, act, x: tf.Tensor, training=None, dropout=None) -> tf.Tensor:
    """`act(bn(x, training))`, then `dropout` if given, as one fused kernel where training
    can use it.

    Training in float32 on a CPU, a plain batch norm followed by the block's PReLU or ReLU
    runs model/fused.py's batch_norm_act: statistics, normalisation and activation in two
    passes forward and two backward, where oneDNN's batch norm ran on one core and the
    activation read and wrote the tensor again. A `SpatialDropout` after them is its mask,
    applied in the same pass (same draws, same numbers as the layer). Same variables and the
    same update of the moving statistics as Keras' layer (tests/model/test_fused.py holds
    them equal). Everything else (inference, mixed precision, synchronised or frozen batch
    norm, a frozen slope, an unbuilt layer) calls the layers.
    """
    kernel = _fusable(bn, act, x, training)
    if kernel is None:
        y = act(bn(x, training=training))
        return y if dropout is None else dropout(y, training=training)
    slope = act.alpha if isinstance(act, BlockPReLU) else tf.zeros([], x.dtype)
    mask = None if dropout is None else dropout.mask(x, training)
    y, new_mean, new_variance = kernel(
        x, bn.gamma, bn.beta, slope, bn.moving_mean, bn.moving_variance,
        epsilon=bn.epsilon, momentum=bn.momentum, mask=mask,
    )  # fmt: skip
    bn.moving_mean.assign(new_mean)
    bn.moving_variance.assign(new_variance)
    return y


def _fusable(bn, act, x, training):
    if training is not True or x.dtype != tf.float32:
        return None
    plain_bn = (
        type(bn) is keras.layers.BatchNormalization
        and bn.built
        and bn.trainable
        and bn.center
        and bn.scale
        and bn.axis in ([-1], [len(x.shape) - 1])
        and bn.compute_dtype == "float32"
        and not bn.renorm
        and bn.virtual_batch_size is None
        and bn.adjustment is None
    )
    if not plain_bn:
        return None
    if isinstance(act, BlockPReLU):
        one_slope = act.alpha.shape.num_elements() == 1
        if act.frozen_alpha is not None or act.compute_dtype != "float32" or not one_slope:
            return None
    elif not (
        type(act) is keras.layers.ReLU
        and act.max_value is None
        and float(act.negative_slope) == 0.0
        and float(act.threshold) == 0.0
    ):
        return None
    return fused.batch_norm_act()


def spatial_size(shape: Shape) -> int:
    """Pixels per image, for multiply-add counts; unknown sizes count as 0."""
    h, w = shape[1], shape[2]
    return int(h or 0) * int(w or 0)


def conv_macs(conv, output_pixels: int) -> int:
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


# Gains that turn "this corner is below its window's maximum" into exactly 1 in an int8 graph:
# the difference is a whole number of the pool input's quantization steps s, and two ReLU6
# stages, x100 then x1000, carry one step to 6 whenever 1e-4 < s < 7 (pool inputs ranging
# over 0.03 to 1,900), while each multiply's scale ratio stays inside the [2^-16, 2^8) that
# XNNPACK's int8 multiply accepts (one x1e5 multiply would not).
_STEP_GAINS = (100.0, 1000.0)


def integer_max_pool_mask(pool_input: tf.Tensor) -> tf.Tensor:
    """`max_pool_mask` made of the operators XNNPACK runs in int8 (max pool, space_to_depth,
    subtract, multiply, ReLU6, concat), for int8 TFLite exports.

    EQUAL and CAST have no int8 kernel in XNNPACK: each unpool split the int8 graph and ran
    outside it, between quantize/dequantize pairs. Here `below = relu6(1000 relu6(100 (max -
    corner))) / 6` is 0 on the maximum and 1 below it, and the first maximum wins as in
    `max_pool_mask`: hit_0 = 1 - below_0, hit_k = P_k - P_{k+1} with P_k the product of the
    earlier `below`s. In int8 that is exact (equal corners differ by 0 steps, others by at
    least one); in float a corner within 6e-5 of its maximum would get a fraction, so float
    exports keep `max_pool_mask`.
    """
    pool_input = tf.stop_gradient(pool_input)
    pooled = tf.nn.max_pool2d(pool_input, 2, 2, "VALID")
    corners = tf.split(tf.nn.space_to_depth(pool_input, 2), 4, axis=-1)
    first, second = _STEP_GAINS
    below = [tf.nn.relu6(second * tf.nn.relu6(first * (pooled - c))) / 6.0 for c in corners]
    earlier = below[0]  # P_1: no maximum among corners [0, 1)
    hits = [1.0 - below[0]]
    for corner in below[1:3]:
        product = earlier * corner
        hits.append(earlier - product)
        earlier = product
    hits.append(earlier)  # the last corner is the maximum when no earlier one is
    return tf.concat(hits, axis=-1)


class MaxUnpool2D(keras.layers.Layer):
    """`max_unpool` as a layer: inputs `[values (N,h,w,C), pool_input (N,2h,2w,C)]`.

    `integer_form` (set on int8 TFLite export copies) builds the mask with
    `integer_max_pool_mask`, and repeats the values with concat, not TILE (no XNNPACK kernel).
    """

    integer_form = False

    def call(self, inputs):
        values, pool_input = inputs
        if not self.integer_form:
            return max_unpool(values, pool_input)
        mask = integer_max_pool_mask(pool_input)
        return tf.nn.depth_to_space(tf.concat([values] * 4, axis=-1) * mask, 2)

    def compute_output_shape(self, input_shape):
        return input_shape[1]


# --------------------------------------------------------------------------------------
# Inference forms for exports: the same numbers from operators TFLite runs faster
# --------------------------------------------------------------------------------------
def inference_affine(bn) -> Tuple[tf.Tensor, tf.Tensor]:
    """A built batch norm layer in inference mode as `x * scale + offset` per channel."""
    scale = bn.gamma * tf.math.rsqrt(bn.moving_variance + bn.epsilon)
    return scale, bn.beta - bn.moving_mean * scale


def subpixel_kernel(kernel: tf.Tensor, crop: int) -> Tuple[tf.Tensor, int]:
    """A stride-2 transposed convolution as an ordinary one followed by depth_to_space(2).

    `kernel` is a Keras Conv2DTranspose kernel (k, k, out, in) whose layer writes output
    pixel 2i + t - crop from input pixel i and tap t (`crop` first rows and columns dropped;
    the output is exactly twice the input). Output pixel 2m + p then sums input pixels m + a
    with taps t = p + crop - 2a, so one convolution over an n x n window (input padded by
    n - 1 at the bottom and right) to 4 * out channels, phases in depth_to_space's order,
    computes all four phases. Returns that (n, n, in, 4 * out) kernel and n.

    Same sums as the transposed convolution. TFLite runs it as CONV_2D + DEPTH_TO_SPACE,
    which XNNPACK computes much faster than TRANSPOSE_CONV for ENet's few channels, and a
    batch norm and ReLU after it fold into the CONV_2D.
    """
    size = int(kernel.shape[0])
    phases = [{a: p + crop - 2 * a for a in range(size) if 0 <= p + crop - 2 * a < size}
              for p in (0, 1)]  # fmt: skip
    if sorted(t for taps in phases for t in taps.values()) != list(range(size)):
        raise ValueError(f"a {size}x{size} kernel cropped by {crop} needs taps before pixel 0")
    window = 1 + max(a for taps in phases for a in taps)
    zero = tf.zeros_like(kernel[0, 0])
    stacked = tf.stack(
        [
            tf.stack(
                [
                    tf.stack(
                        [
                            kernel[ty[a], tx[b]] if a in ty and b in tx else zero
                            for b in range(window)
                        ]
                    )
                    for a in range(window)
                ]
            )
            for ty in phases
            for tx in phases
        ],
        axis=2,
    )  # (window, window, 4 phases, out, in)
    out_channels, in_channels = int(kernel.shape[2]), int(kernel.shape[3])
    stacked = tf.transpose(stacked, [0, 1, 4, 2, 3])
    return tf.reshape(stacked, [window, window, in_channels, 4 * out_channels]), window


def subpixel_conv(inputs: tf.Tensor, kernel: tf.Tensor, window: int) -> tf.Tensor:
    """The convolution half of `subpixel_kernel`: (N, h, w, in) -> (N, h, w, 4 * out)."""
    if window > 1:
        inputs = tf.pad(inputs, [[0, 0], [0, window - 1], [0, window - 1], [0, 0]])
    return tf.nn.conv2d(inputs, kernel, 1, "VALID")


# --------------------------------------------------------------------------------------
# Dropout that a resumed run replays exactly
# --------------------------------------------------------------------------------------
def layer_seed(name: str) -> int:
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
        self.seed = layer_seed(self.name) if seed is None else seed

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

    def mask(self, inputs, training=None) -> Optional[tf.Tensor]:
        """This call's (N, C) factors, 0 or 1 / (1 - rate) per image and channel; None when
        nothing is dropped. Advances the stream as a call does."""
        if not training or self.rate == 0:
            return None
        if not self.built:
            self._maybe_build(inputs)
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
        shape = tf.stack([tf.shape(inputs)[0], tf.shape(inputs)[3]])
        keep = tf.random.stateless_uniform(shape, seed) >= self.rate
        return tf.cast(keep, inputs.dtype) / tf.cast(1.0 - self.rate, inputs.dtype)

    def call(self, inputs, training=None):
        factors = self.mask(inputs, training)
        if factors is None:
            return inputs
        # Scale the (N, 1, 1, C) mask, not the activations: one full-size multiply, not two.
        return inputs * factors[:, tf.newaxis, tf.newaxis, :]
