"""What `enet model summary` shows: per block output shape, parameters and multiply-adds.

Multiply-adds come from each block's own `multiply_adds` (kernel size x output pixels per
convolution, batch norm and activations not counted), the usual convention in papers.
"""

from typing import List, NamedTuple, Tuple

import numpy as np

from enet_cli.core.backend import keras


class BlockRow(NamedTuple):
    name: str
    kind: str
    output_shape: Tuple
    params: int
    multiply_adds: int


def _trainable(layer) -> int:
    return int(sum(np.prod(v.shape) for v in layer.trainable_weights))


def _describe(layer) -> str:
    """The block's main operation in a few characters, e.g. `3x3 d4` or `5x1+1x5`."""
    kind = type(layer).__name__
    if kind == "Bottleneck":
        return {"regular": "3x3", "asymmetric": "5x1+1x5"}.get(layer.kind, f"3x3 d{layer.dilation}")
    return {
        "InitialBlock": "conv+pool/2",
        "DownsamplingBottleneck": "2x2/2 down",
        "UpsamplingBottleneck": "unpool up",
        "FullConv": "3x3/2 tconv",
    }.get(kind, kind)


def summarize(model: keras.Model) -> List[BlockRow]:
    """One row per ENet block, in graph order (the input and the float32 cast are left out)."""
    rows = []
    for layer in model.layers:
        if not hasattr(layer, "multiply_adds"):
            continue
        rows.append(
            BlockRow(
                name=layer.name,
                kind=_describe(layer),
                output_shape=tuple(layer.output_shape),
                params=_trainable(layer),
                multiply_adds=layer.multiply_adds(layer.input_shape),
            )
        )
    return rows
