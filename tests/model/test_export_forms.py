"""What export copies compute instead (serving/tflite.py prepare_for_export, issue 31): the same
numbers as the training graph in float, and an int8 graph that XNNPACK runs whole.

- the blocks' export forms (initial block's batch norm per branch, transposed convolutions
  as convolution + depth_to_space) give the training graph's inference outputs;
- the int8 unpooling mask places each value where the float one does, on a real int8 TFLite
  file, inside one XNNPACK partition;
- an int8 ENet keeps the image's own quantization at the first convolution, and a PReLU
  slope too small for XNNPACK's int8 kernel is exported as ReLU, so the whole graph but the
  final ARG_MAX runs in one partition.
"""

import numpy as np
import pytest

from enet_cli.core.backend import keras, tf
from enet_cli.core.config import ModelConfig
from enet_cli.model import build_enet
from enet_cli.model.ops import (
    BlockPReLU,
    MaxUnpool2D,
    integer_max_pool_mask,
    max_pool_mask,
    subpixel_conv,
    subpixel_kernel,
)
from enet_cli.train.optim import seed_everything

SMALL = (1, 2, 1, 1, 1)  # every kind of block, few of each


def _randomised(model) -> None:
    """Batch-norm statistics and PReLU slopes away from their initial values, so an export
    form that dropped or misplaced one of them would show."""
    rng = np.random.default_rng(7)
    for weight in model.weights:
        name = weight.name
        if any(part in name for part in ("moving_variance", "gamma")):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
        elif any(part in name for part in ("moving_mean", "beta")):
            weight.assign(rng.uniform(-0.5, 0.5, weight.shape).astype("float32"))
        elif "alpha" in name:
            weight.assign(np.full(weight.shape, rng.uniform(-0.2, 0.4), "float32"))


@pytest.mark.compat
def test_export_forms_give_the_training_graphs_inference_outputs():
    from enet_cli.serving.tflite import prepare_for_export

    seed_everything(11)
    model = build_enet(ModelConfig(num_classes=11, bottlenecks=SMALL), (48, 64))
    _randomised(model)
    images = tf.constant(np.random.default_rng(3).uniform(0, 1, (2, 48, 64, 3)), tf.float32)
    before = model(images, training=False).numpy()
    prepare_for_export(model)
    forms = [layer for layer in model.layers if getattr(layer, "export_form", False)]
    assert {type(layer).__name__ for layer in forms} == {
        "InitialBlock",
        "UpsamplingBottleneck",
        "FullConv",
    }
    after = model(images, training=False).numpy()
    assert np.abs(before).max() > 0.5  # outputs of some size, or tolerance would hide errors
    np.testing.assert_allclose(after, before, atol=2e-5)


@pytest.mark.compat
@pytest.mark.parametrize("size, crop", [(3, 1), (2, 0)])
def test_subpixel_kernel_is_the_transposed_convolution(size, crop):
    """Both of ENet's: the classifier's 3x3 (crop 1: the reference's padding=1,
    output_padding=1) and the upsampling blocks' 2x2 (no crop)."""
    rng = np.random.default_rng(size)
    kernel = tf.constant(rng.normal(size=(size, size, 5, 6)), tf.float32)
    x = tf.constant(rng.normal(size=(2, 7, 9, 6)), tf.float32)
    shape = [2, 12 + size, 16 + size, 5]  # a "valid" transposed convolution's output
    full = tf.nn.conv2d_transpose(x, kernel, shape, 2, "VALID")
    expected = full[:, crop : crop + 14, crop : crop + 18]
    weights, window = subpixel_kernel(kernel, crop)
    got = tf.nn.depth_to_space(subpixel_conv(x, weights, window), 2)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="taps before pixel 0"):
        subpixel_kernel(tf.zeros([3, 3, 1, 1]), crop=0)


@pytest.mark.compat
@pytest.mark.parametrize("step", [1e-3, 0.05, 4.0])
def test_integer_mask_is_the_float_mask_on_quantized_values(step):
    """On values that are whole quantization steps (what int8 carries), ties included, the
    int8 mask picks the same corner as max_pool_mask; steps over the documented range."""
    rng = np.random.default_rng(int(step * 1000))
    pool_input = (rng.integers(-3, 3, size=(2, 8, 12, 5)) * step).astype("float32")
    expected = max_pool_mask(tf.constant(pool_input)).numpy()
    got = integer_max_pool_mask(tf.constant(pool_input)).numpy()
    np.testing.assert_array_equal(got, expected)
    assert np.mean(expected.sum(-1) > 0) > 0  # every window has its one hit
    windows = pool_input.reshape(2, 4, 2, 6, 2, 5)
    ties = (windows == windows.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4)) > 1
    assert ties.mean() > 0.2  # the test exercised first-maximum-wins


def _interpreter(blob: bytes, delegate: bool = True):
    """LiteRT's interpreter, with its default XNNPACK delegate or without any."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    found = Interpreter(model_content=blob, num_threads=1, experimental_op_resolver_type=kind)
    found.allocate_tensors()
    return found


def _int8(model, calibration):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def test_int8_unpool_places_values_as_the_float_one_in_one_xnnpack_partition():
    """A real int8 TFLite file of unpool(max_pool(x), x): each window's value lands on its
    first maximum of the int8 input, nowhere else, and XNNPACK runs the whole graph."""
    rng = np.random.default_rng(5)
    levels = rng.integers(0, 6, size=(8, 1, 8, 12, 4)).astype("float32")  # many ties
    calibration = list(levels * 0.4 + 0.4)
    pool_input = keras.Input((8, 12, 4), batch_size=1)
    unpool = MaxUnpool2D()
    unpool.integer_form = True
    pooled = tf.nn.max_pool2d(pool_input, 2, 2, "VALID")
    model = keras.Model(pool_input, unpool([pooled, pool_input]))
    interpreter = _interpreter(_int8(model, calibration))
    names = [op["op_name"] for op in interpreter._get_ops_details()]
    assert "EQUAL" not in names and "CAST" not in names, names
    assert names.count("DELEGATE") == 1, names
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for sample in calibration[:3]:
        scale, zero = inp["quantization"]
        q = np.clip(np.round(sample / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q)
        interpreter.invoke()
        out_scale, out_zero = out["quantization"]
        got = (interpreter.get_tensor(out["index"]).astype("float32") - out_zero) * out_scale
        seen = (q.astype("float32") - zero) * scale  # what the int8 graph was given
        mask = max_pool_mask(tf.constant(seen)).numpy()
        pooled = tf.nn.max_pool2d(seen, 2, 2, "VALID").numpy()
        expected = tf.nn.depth_to_space(np.tile(pooled, [1, 1, 1, 4]) * mask, 2).numpy()
        assert np.array_equal(got != 0, expected != 0)  # the same positions
        np.testing.assert_allclose(got, expected, atol=out_scale)  # one output step


@pytest.fixture(scope="module")
def int8_enet():
    """(model, blob): a small ENet whose fourth block's PReLU slope (0.001) is below what
    XNNPACK's int8 LeakyReLU takes, exported int8 at 48x64 as `enet export` converts."""
    from enet_cli.serving.tflite import convert

    seed_everything(13)
    model = build_enet(ModelConfig(num_classes=11, bottlenecks=SMALL), (48, 64))
    _randomised(model)
    prelus = [layer for layer in model.submodules if isinstance(layer, BlockPReLU)]
    prelus[3].alpha.assign(tf.fill(prelus[3].alpha.shape, 0.001))
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    return model, convert(model, (48, 64), "int8", lambda: iter(images))


def test_int8_enet_runs_in_one_xnnpack_partition_with_tiny_slopes_as_relu(int8_enet):
    from enet_cli.serving.tflite import slopes_xnnpack_refuses

    model, blob = int8_enet
    assert slopes_xnnpack_refuses(blob) == []
    prelus = [layer for layer in model.submodules if isinstance(layer, BlockPReLU)]
    assert prelus[3].frozen_alpha == 0.0  # exported as ReLU
    assert all(layer.frozen_alpha != 0 for k, layer in enumerate(prelus) if k != 3)
    names = [op["op_name"] for op in _interpreter(blob)._get_ops_details()]
    assert names.count("DELEGATE") == 1, names
    for kind in ("EQUAL", "CAST", "TILE", "TRANSPOSE_CONV"):
        assert kind not in names, names


def test_int8_enet_gives_the_first_convolution_the_image_at_its_own_scale(int8_enet):
    """Pixels 0-255 enter as uint8 and are divided by 255: the first convolution's input
    must keep those 256 levels (scale 1/255), not the scale of the initial block's concat,
    which would leave about ten."""
    _, blob = int8_enet
    interpreter = _interpreter(blob, delegate=False)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    first = next(op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D")
    scale = details[first["inputs"][0]]["quantization"][0]
    assert scale == pytest.approx(1 / 255, rel=0.01), scale
