"""ONNX: convert a trained ENet with tf2onnx (serving/runners.py runs the result in the stock
onnxruntime, without TensorFlow).

ENet ports in other toolkits fail to export because their max-unpooling needs the pooling
argmax (PyTorch's MaxUnpool2d has no ONNX form that TensorRT or onnxruntime accept
everywhere). Ours is built from standard operators (model/layers.py), so the file holds
only the default ONNX domain's operators. Like the SavedModel's serving signature the
graph takes uint8 images (`images`, NHWC) of any batch and, unless a size is fixed, any
height and width (padded to ENet's multiple of 8 and cropped back inside the graph), and
returns `logits` (float32) and `classes` (int32).

tf2onnx, onnx and onnxruntime are the `[onnx]` extra: only the laptop side needs them.
"""

from typing import Optional, Sequence

from enet_cli.core.backend import tf
from enet_cli.pixels.preprocessor import run_padded, to_unit
from enet_cli.serving.runners import require_onnx

OPSET = 17  # onnxruntime >= 1.14 runs it; 17 is tf2onnx 1.16's and 1.17's tested maximum


def convert(model, size: Optional[Sequence[int]] = None) -> bytes:
    """The .onnx bytes of `model` (a float32 Keras ENet export copy); `size` (H, W) fixes the
    input's height and width, None keeps them dynamic. The batch axis is always dynamic."""
    from enet_cli.serving.tflite import prepare_for_export

    tf2onnx = require_onnx("tf2onnx")
    require_onnx("onnx")
    prepare_for_export(model)  # constant PReLU slopes, 1x1 as Conv (folds with batch norm)
    height, width = (None, None) if size is None else (int(size[0]), int(size[1]))
    spec = tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")

    @tf.function(input_signature=[spec], autograph=False)
    def serve(images):
        logits = run_padded(model, to_unit(images))
        return {"logits": logits, "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=OPSET)
    return proto.SerializeToString()
