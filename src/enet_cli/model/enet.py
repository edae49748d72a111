"""The ENet graph (Paszke, Chaurasia, Kim, Culurciello 2016, arXiv:1606.02147).

Reference followed: davidtvs/PyTorch-ENet (models/enet.py), the best-known port, whose CamVid
recipe reaches 52.1 mIoU at 480x360 with 11 classes. Everything below mirrors it layer for
layer: the same blocks, channels, kernels, dilations, dropout rates, sampling grids, bias-free
convolutions, batch-norm epsilon/momentum and initialisers. In particular, as in that port:

- Encoder activations are PReLU with ONE learnable slope per block, shared by every
  activation of the block (the port builds one `nn.PReLU()` per block and reuses it); the
  decoder (stages 4-5) uses ReLU. The authors' Lua code uses per-channel PReLU and no
  activation after the expansion conv; the port (and we) activate after every conv.
- The initial block pools with a 3x3/stride-2 window, padding 1 (the paper says 2x2).
- Asymmetric bottlenecks have batch norm + activation between the 5x1 and the 1x5 conv.
- Upsampling bottlenecks: main branch 1x1 conv + BN then max-unpool; side branch 1x1
  projection, 2x2/stride-2 transposed conv, 1x1 expansion.
- The classifier is a 3x3/stride-2 transposed conv without bias.

Where we differ, and why:
- Unpooling does not store argmax indices: the upsampling block recomputes, from the input
  of the matching downsampling block, which position of each 2x2 window was the maximum
  (first one on ties, as `max_pool_with_argmax` does). Same result, proven by a test; it
  compiles with XLA and converts to TFLite builtins, which argmax + scatter does not.
- Parameter count: 350,582 trainable parameters for 12 classes (350,438 for 11), counting
  each shared PReLU slope once. The port's 350,652 counts its shared `nn.PReLU` once per
  place it is used (70 extra registrations); the weights are the same.
- Output is logits in float32 (also under mixed precision), NHWC; input is an RGB float
  image in [0, 1] (the port's `ToTensor` scaling), H and W multiples of 8 (other sizes are
  padded up to them and the logits cropped back: preprocessor.py `run_padded`).
"""

import contextlib
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from enet_cli.core.backend import keras, tf
from enet_cli.core.config import SIZE_MULTIPLE, ModelConfig, model_size
from enet_cli.core.errors import ConfigError
from enet_cli.model.layers import (
    Bottleneck,
    DownsamplingBottleneck,
    FullConv,
    InitialBlock,
    UpsamplingBottleneck,
)

# Stage 2's eight bottlenecks; stage 3 repeats them without the downsampling block.
STAGE2_PLAN = (
    ("regular", 1),
    ("dilated", 2),
    ("asymmetric", 1),
    ("dilated", 4),
    ("regular", 1),
    ("dilated", 8),
    ("asymmetric", 1),
    ("dilated", 16),
)


def _bottleneck_name(stage: int, index: int, kind: str, dilation: int) -> str:
    suffix = {"regular": "regular", "asymmetric": "asymmetric5"}.get(kind, f"dilated{dilation}")
    return f"stage{stage}_{index}_{suffix}"


INPUT = "images"


class Block(NamedTuple):
    """One ENet block and the names of the outputs it consumes (in graph order)."""

    layer: keras.layers.Layer
    inputs: Tuple[str, ...]


def enet_blocks(cfg: ModelConfig, sync_batchnorm: bool = False) -> List[Block]:
    """ENet as an ordered list of blocks: what `build_enet` wires into a Keras model and what
    the model-parallel engine splits into pipeline stages. A shallower ENet
    (`cfg.bottlenecks` below the paper's) leaves out bottlenecks from the end of each stage;
    the blocks it keeps have the paper's names."""
    stage1, stage2, stage3, stage4, stage5 = cfg.bottlenecks
    bn = {"sync_batchnorm": sync_batchnorm}
    layers = [InitialBlock(16, activation="prelu", name="initial", **bn)]
    layers.append(
        DownsamplingBottleneck(64, dropout=cfg.stage1_dropout, name="stage1_0_down", **bn)
    )
    for i in range(1, stage1 + 1):
        layers.append(Bottleneck(64, dropout=cfg.stage1_dropout, name=f"stage1_{i}_regular", **bn))
    layers.append(DownsamplingBottleneck(128, dropout=cfg.dropout, name="stage2_0_down", **bn))
    for stage, count in ((2, stage2), (3, stage3)):
        for i, (kind, dilation) in enumerate(STAGE2_PLAN[:count], start=1):
            layers.append(
                Bottleneck(
                    128,
                    kind=kind,
                    dilation=dilation,
                    dropout=cfg.dropout,
                    name=_bottleneck_name(stage, i, kind, dilation),
                    **bn,
                )
            )
    decoder = {"dropout": cfg.dropout, "activation": "relu", **bn}
    layers.append(UpsamplingBottleneck(64, name="stage4_0_up", **decoder))
    layers += [Bottleneck(64, name=f"stage4_{i}_regular", **decoder) for i in range(1, stage4 + 1)]
    layers.append(UpsamplingBottleneck(16, name="stage5_0_up", **decoder))
    layers += [Bottleneck(16, name=f"stage5_{i}_regular", **decoder) for i in range(1, stage5 + 1)]
    layers.append(FullConv(cfg.num_classes, name="fullconv"))
    layers.append(keras.layers.Activation("linear", dtype="float32", name="logits"))
    return _wire(layers)


def _wire(layers: Sequence[keras.layers.Layer]) -> List[Block]:
    """Each block consumes the previous block's output; an upsampling block also the input
    of its downsampling block (the last one not yet matched), which it unpools with: the
    graph's two skip connections (stage 4 <- stage 2's input, stage 5 <- stage 1's)."""
    blocks, previous, downsampled = [], INPUT, []
    for layer in layers:
        inputs: Tuple[str, ...] = (previous,)
        if isinstance(layer, DownsamplingBottleneck):
            downsampled.append(previous)
        elif isinstance(layer, UpsamplingBottleneck):
            inputs = (previous, downsampled.pop())
        blocks.append(Block(layer, inputs))
        previous = layer.name
    return blocks


def run_blocks(
    blocks: Sequence[Block],
    tensors: Dict[str, object],
    training=None,
    placement: Optional[Callable[[str], Optional[str]]] = None,
) -> Dict[str, object]:
    """Apply `blocks` in order to the named tensors (symbolic or eager); returns all outputs.

    A caller that runs the blocks in pieces (pipeline stages) passes the outputs of the
    earlier pieces that the later ones consume (the skip connections). `placement` maps a
    block name to the device its ops (and, on first call, its variables) go to.
    """
    tensors = dict(tensors)
    for block in blocks:
        args = [tensors[name] for name in block.inputs]
        kwargs = {} if isinstance(block.layer, keras.layers.Activation) else {"training": training}
        device = placement(block.layer.name) if placement else None
        with tf.device(device) if device else contextlib.nullcontext():
            out = block.layer(args[0] if len(args) == 1 else args, **kwargs)
        tensors[block.layer.name] = out
    return tensors


def model_blocks(model: keras.Model) -> List[Block]:
    """The blocks of a model from `build_enet`, in graph order, with their inputs."""
    return _wire(
        [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    )


def build_enet(
    cfg: Optional[ModelConfig] = None,
    image_size: Optional[Tuple[Optional[int], Optional[int]]] = None,
    name: str = "enet",
    sync_batchnorm: bool = False,
    placement: Optional[Callable[[str], Optional[str]]] = None,
) -> keras.Model:
    """Build ENet as a functional Keras 2 model: images (N,H,W,3) -> logits (N,H,W,classes).

    Args:
        cfg: class count and dropout rates; defaults to `ModelConfig()`.
        image_size: (H, W) fixed at build time, or None / (None, None) for any size that is
            a multiple of 8 (a SavedModel that serves several resolutions).
        sync_batchnorm: batch-norm statistics over all replicas of the current
            tf.distribute strategy (same variables, so checkpoints are interchangeable).
        placement: block name -> device for its variables (model-parallel stages).

    Raises:
        ConfigError: H or W is not a multiple of 8 (callers build at config.model_size).
    """
    cfg = cfg or ModelConfig()
    height, width = image_size or (None, None)
    if height is not None and width is not None and model_size(height, width) != (height, width):
        raise ConfigError(
            f"ENet runs at multiples of {SIZE_MULTIPLE}, not {height}x{width}; build it at "
            f"{'x'.join(map(str, model_size(height, width)))} and pad the images"
        )
    blocks = enet_blocks(cfg, sync_batchnorm)
    images = keras.Input(shape=(height, width, 3), name=INPUT)
    # Keras runs a custom layer's call through autograph while it builds the model unless
    # the caller has autograph off. ENet's blocks have no tensor-dependent Python control
    # flow (the train steps trace them with autograph off too), and converting their code
    # is a third of the build: every process that trains, serves or exports pays it.
    run = tf.autograph.experimental.do_not_convert(run_blocks)
    outputs = run(blocks, {INPUT: images}, placement=placement)
    return keras.Model(images, outputs[blocks[-1].layer.name], name=name)
