"""TensorFlow Lite: convert a trained ENet (float32, float16 or int8); serving/runners.py
runs the result, without TensorFlow.

Every variant takes one uint8 RGB image of the export size and returns `logits` (float32)
and `classes` (int32), like the SavedModel's serving signature. The converter folds each
batch norm into the convolution before it (inference-mode batch norm is an affine map),
and ENet's unpooling is built from builtins (see model/layers.py), so the file holds only
builtin operators: it runs in the stock interpreter, with XNNPACK on CPUs. int8 is full
integer post-training quantization calibrated on training images from the manifest; its
input quantization is scale 1, zero point 0, so raw uint8 pixels go in unchanged.
"""

import warnings
from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np

from enet_cli.core.backend import startup_noise_filtered, tf
from enet_cli.core.formats import Quantize
from enet_cli.model.layers import FullConv, InitialBlock, UpsamplingBottleneck
from enet_cli.model.ops import BlockPReLU, MaxUnpool2D, PointwiseConv2D
from enet_cli.pixels.preprocessor import run_padded, to_unit


def _fixed_size_function(model, size: Tuple[int, int], dtype):
    """One image of `size` (pixel values 0-255 as `dtype`) -> logits and classes.

    The model's input is float32 in [0, 1]. int8 takes float32 pixels here and divides in
    the graph, so it calibrates its input on 0-255 and its uint8 input quantization is the
    identity; the float variants take uint8 and cast in the graph.
    """

    @tf.function(
        input_signature=[tf.TensorSpec([1, *size, 3], dtype, name="image")], autograph=False
    )
    def serve(image):
        logits = run_padded(model, to_unit(image))
        return {"logits": logits, "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    return serve


def prepare_for_export(model, integer: bool = False) -> None:
    """Make `model` (an export copy) compute its inference outputs from what converters
    handle best: constant PReLU slopes (it stops learning them), 1x1 convolutions as
    CONV_2D (into which batch norm folds), the blocks' export forms (model/layers.py: the same
    numbers), and with `integer` the unpooling masks int8 can build (ops.MaxUnpool2D)."""
    for layer in model.submodules:
        if isinstance(layer, BlockPReLU):
            layer.freeze()
        elif isinstance(layer, PointwiseConv2D):
            layer.as_matmul = False
        elif isinstance(layer, (InitialBlock, UpsamplingBottleneck, FullConv)):
            layer.export_form = True
        elif isinstance(layer, MaxUnpool2D):
            layer.integer_form = integer


# XNNPACK's int8 LEAKY_RELU refuses a negative slope under 2^-8 output steps per input step
# (xnn_create_leaky_relu_nc_qs8, "negative-input-to-output scale ratio"): such a node ran
# outside the delegate and split the graph in three. Its negative outputs are then below one
# step for every int8 input, so ReLU computes them to within that step.
XNNPACK_LEAST_SLOPE = 2.0**-8


def slopes_xnnpack_refuses(blob: bytes) -> List[str]:
    """Output tensor names of the int8 LEAKY_RELU operators in `blob` that XNNPACK refuses."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(blob, 0)
    graph = model.Subgraphs(0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]

    def scale(index: int) -> float:
        quantization = graph.Tensors(index).Quantization()
        return float(quantization.Scale(0)) if quantization and quantization.ScaleLength() else 0

    refused = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = codes[op.OpcodeIndex()]
        if (
            max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            != schema.BuiltinOperator.LEAKY_RELU
        ):
            continue
        options = schema.LeakyReluOptions()
        table = op.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        scale_in, scale_out = scale(op.Inputs(0)), scale(op.Outputs(0))
        if (
            scale_in
            and scale_out
            and abs(options.Alpha() * scale_in / scale_out) < XNNPACK_LEAST_SLOPE
        ):
            refused.append(graph.Tensors(op.Outputs(0)).Name().decode())
    return refused


def _relu_for_refused_slopes(model, refused: List[str]) -> int:
    """Freeze to 0 (ReLU, which folds into the operator before it) the slope of every block
    whose activation produced a tensor in `refused`; how many blocks changed."""
    changed = 0
    for block in model.layers:
        act = getattr(block, "act", None)
        ours = isinstance(act, BlockPReLU) and act.frozen_alpha
        if ours and any(f"{block.name}/{act.name}/" in name for name in refused):
            act.frozen_alpha = 0.0
            changed += 1
    return changed


def convert(
    model,
    size: Tuple[int, int],
    quantize: Quantize,
    calibration: Optional[Callable[[], Iterable[np.ndarray]]] = None,
) -> bytes:
    """The .tflite bytes of `model` (a float32 Keras ENet export copy) at `size` (H, W).

    `calibration` yields uint8 (H, W, 3) training images; int8 needs it.
    """
    quantize = Quantize(quantize)
    prepare_for_export(model, integer=quantize == Quantize.int8)
    blob = _convert(model, size, quantize, calibration)
    # int8 scales come from calibration, so which slopes XNNPACK refuses shows only after a
    # conversion; a second one (rarely a third) makes those ReLU.
    for _ in range(2 if quantize == Quantize.int8 else 0):
        if not _relu_for_refused_slopes(model, slopes_xnnpack_refuses(blob)):
            break
        blob = _convert(model, size, quantize, calibration)
    return blob


def _convert(model, size, quantize: Quantize, calibration) -> bytes:
    dtype = tf.float32 if quantize == Quantize.int8 else tf.uint8
    function = _fixed_size_function(model, size, dtype).get_concrete_function()
    # The converter saves what it is given to a SavedModel first: given the Keras model, it
    # would trace every layer's call for Keras reloading (most of the conversion's time); a
    # module holding only the variables is what the function needs.
    variables = tf.Module()
    variables.variables_ = list(model.weights)
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], variables)
    except TypeError:  # TF < 2.7 takes the functions alone (and saves no SavedModel first)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == Quantize.float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == Quantize.int8:
        if calibration is None:
            raise ValueError("int8 quantization needs calibration images")

        def representative():
            for image in calibration():
                yield {"image": np.asarray(image, np.float32)[None]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    with warnings.catch_warnings(), startup_noise_filtered():
        warnings.simplefilter("ignore")
        return converter.convert()
