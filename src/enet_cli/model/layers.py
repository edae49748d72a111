"""ENet's building blocks as Keras 2 layers: initial block, bottlenecks, and max-unpooling.

Layer style follows keras-hub: constructor arguments are kept as same-named attributes,
sublayers are created in `build()`, `get_config()` lists exactly the constructor arguments.
Every block also reports its multiply-adds for an input shape, so that `enet model summary`
can show where the compute goes without a profiler (which misses transposed convolutions).

Shapes are NHWC. Spatial sizes may be unknown (None): every op here works on dynamic shapes.
"""

from typing import List

from enet_cli.core.backend import keras, tf
from enet_cli.model.ops import (
    MaxUnpool2D,
    Shape,
    SpatialDropout,
    batch_norm,
    conv2d,
    conv_macs,
    inference_affine,
    kernel_init,
    layer_seed,
    make_activation,
    normalize_activate,
    spatial_size,
    subpixel_conv,
    subpixel_kernel,
)


# --------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------
class InitialBlock(keras.layers.Layer):
    """13 strided 3x3 filters beside a 3x3/stride-2 max pool of the image, concatenated.

    (N, H, W, 3) -> (N, H/2, W/2, 16). Padding is explicit (1 pixel each side, -inf for the
    pool) so the sampling grid is the reference's, not Keras "same" (which pads only after).

    `export_form` (set on export copies, whose input is pixels in [0, 1]) applies the batch
    norm to each branch before the concat and pads the pool with 0 (the same maximum as -inf
    for non-negative pixels). In an int8 graph a concat's inputs share its scale, and that
    scale, set by the convolution's outputs, was forced back through the pool onto the image:
    the image reached the first convolution in about ten grey levels, and a trained model
    lost 16 points of mean IoU. Split, the image keeps its own scale and the convolution's
    share of the batch norm folds into it.
    """

    export_form = False

    def __init__(
        self, filters: int = 16, activation: str = "prelu", sync_batchnorm: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.activation = activation
        self.sync_batchnorm = sync_batchnorm

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.conv = conv2d(self.filters - channels, 3, "conv", strides=2, padding="valid")
        self.bn = batch_norm("bn", self.sync_batchnorm)
        self.act = make_activation(self.activation, "act")
        super().build(input_shape)

    def call(self, inputs, training=None):
        pad = [[0, 0], [1, 1], [1, 1], [0, 0]]
        main = self.conv(tf.pad(inputs, pad))
        lowest = 0 if self.export_form else inputs.dtype.min
        pooled = tf.nn.max_pool2d(tf.pad(inputs, pad, constant_values=lowest), 3, 2, "VALID")
        if self.export_form:
            scale, offset = inference_affine(self.bn)
            k = main.shape[-1]
            main = main * scale[:k] + offset[:k]
            return self.act(tf.concat([main, pooled * scale[k:] + offset[k:]], axis=-1))
        out = tf.concat([main, tf.cast(pooled, main.dtype)], axis=-1)
        return normalize_activate(self.bn, self.act, out, training)

    def multiply_adds(self, input_shape: Shape) -> int:
        return conv_macs(self.conv, spatial_size(input_shape) // 4)

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
        self.project = conv2d(inner, 1, "project")
        self.project_bn = batch_norm("project_bn", self.sync_batchnorm)
        if self.kind == "asymmetric":
            self.main_convs = [conv2d(inner, (5, 1), "conv_5x1"), conv2d(inner, (1, 5), "conv_1x5")]
        else:
            self.main_convs = [conv2d(inner, 3, "conv", dilation=self.dilation)]
        self.main_bns = [
            batch_norm(f"{conv.name}_bn", self.sync_batchnorm) for conv in self.main_convs
        ]
        self.expand = conv2d(self.channels, 1, "expand")
        self.expand_bn = batch_norm("expand_bn", self.sync_batchnorm)
        self.drop = SpatialDropout(self.dropout, seed=layer_seed(self.name), name="dropout")
        self.act = make_activation(self.activation, "act")
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = normalize_activate(self.project_bn, self.act, self.project(inputs), training)
        for conv, bn in zip(self.main_convs, self.main_bns):
            x = normalize_activate(bn, self.act, conv(x), training)
        x = normalize_activate(self.expand_bn, self.act, self.expand(x), training, self.drop)
        return self.act(inputs + x)

    def multiply_adds(self, input_shape: Shape) -> int:
        pixels = spatial_size(input_shape)
        convs = [self.project, *self.main_convs, self.expand]
        return sum(conv_macs(conv, pixels) for conv in convs)

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
        self.project = conv2d(inner, 2, "project", strides=2, padding="valid")
        self.project_bn = batch_norm("project_bn", self.sync_batchnorm)
        self.conv = conv2d(inner, 3, "conv")
        self.conv_bn = batch_norm("conv_bn", self.sync_batchnorm)
        self.expand = conv2d(self.channels, 1, "expand")
        self.expand_bn = batch_norm("expand_bn", self.sync_batchnorm)
        self.drop = SpatialDropout(self.dropout, seed=layer_seed(self.name), name="dropout")
        self.act = make_activation(self.activation, "act")
        super().build(input_shape)

    def call(self, inputs, training=None):
        main = tf.nn.max_pool2d(inputs, 2, 2, "VALID")
        main = tf.pad(main, [[0, 0], [0, 0], [0, 0], [0, self.channels - inputs.shape[-1]]])
        x = normalize_activate(self.project_bn, self.act, self.project(inputs), training)
        x = normalize_activate(self.conv_bn, self.act, self.conv(x), training)
        x = normalize_activate(self.expand_bn, self.act, self.expand(x), training, self.drop)
        return self.act(main + x)

    def multiply_adds(self, input_shape: Shape) -> int:
        pixels = spatial_size(input_shape) // 4
        return sum(conv_macs(c, pixels) for c in (self.project, self.conv, self.expand))

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

    `export_form` (export copies) computes the transposed convolution, its batch norm and
    ReLU as one convolution + depth_to_space (ops.subpixel_kernel): the same numbers.
    """

    export_form = False

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
        self.main_conv = conv2d(self.channels, 1, "main_conv")
        self.main_bn = batch_norm("main_bn", self.sync_batchnorm)
        self.unpool = MaxUnpool2D(name="unpool")
        self.project = conv2d(inner, 1, "project")
        self.project_bn = batch_norm("project_bn", self.sync_batchnorm)
        self.upconv = keras.layers.Conv2DTranspose(
            inner,
            2,
            strides=2,
            padding="valid",
            use_bias=False,
            kernel_initializer=kernel_init(),
            name="upconv",
        )
        self.upconv_bn = batch_norm("upconv_bn", self.sync_batchnorm)
        self.expand = conv2d(self.channels, 1, "expand")
        self.expand_bn = batch_norm("expand_bn", self.sync_batchnorm)
        self.drop = SpatialDropout(self.dropout, seed=layer_seed(self.name), name="dropout")
        self.act = make_activation(self.activation, "act")
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, pool_input = inputs
        main = self.main_bn(self.main_conv(x), training=training)
        main = self.unpool([main, pool_input])
        y = normalize_activate(self.project_bn, self.act, self.project(x), training)
        if self.export_form:
            kernel, window = subpixel_kernel(self.upconv.kernel, crop=0)
            scale, offset = inference_affine(self.upconv_bn)
            y = subpixel_conv(y, kernel, window) * tf.tile(scale, [4]) + tf.tile(offset, [4])
            y = tf.nn.depth_to_space(self.act(y), 2)
        else:
            y = normalize_activate(self.upconv_bn, self.act, self.upconv(y), training)
        y = normalize_activate(self.expand_bn, self.act, self.expand(y), training, self.drop)
        return self.act(main + y)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[1])[:-1].concatenate([self.channels])

    def multiply_adds(self, input_shape: List[Shape]) -> int:
        pixels = spatial_size(input_shape[0])
        return (
            conv_macs(self.main_conv, pixels)
            + conv_macs(self.project, pixels)
            + conv_macs(self.upconv, pixels)  # each input pixel meets the whole 2x2 kernel
            + conv_macs(self.expand, pixels * 4)
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

    `export_form` (export copies) computes it as a 2x2 convolution + depth_to_space
    (ops.subpixel_kernel): the same numbers, without TRANSPOSE_CONV and the crop.
    """

    export_form = False

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
            kernel_initializer=kernel_init(),
            name="conv",
        )
        super().build(input_shape)

    def call(self, inputs):
        if self.export_form:
            kernel, window = subpixel_kernel(self.conv.kernel, crop=1)
            return tf.nn.depth_to_space(subpixel_conv(inputs, kernel, window), 2)
        return tf.slice(self.conv(inputs), [0, 1, 1, 0], [-1, -1, -1, -1])

    def multiply_adds(self, input_shape: Shape) -> int:
        return conv_macs(self.conv, spatial_size(input_shape))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
