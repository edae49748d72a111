"""The one preprocessor: how a photo becomes ENet's input, and the way back, for training and
for serving alike (as keras-hub's ImageSegmenterPreprocessor is shared by fit, predict and
export). A model trained on images shrunk one way and served images shrunk another sees
different pixels: `enet preprocess`, `predict`, `export` (int8 calibration) and `benchmark`
resize here, with the filter the training data was made with, and every graph scales
pixels here.

- `resize_image`: PIL, antialiased. `area` (the default): a box filter (the area average)
  when shrinking, bilinear when enlarging; `bilinear`: PIL's antialiased bilinear.
- `resize_classes`: nearest, always (a class index must not be averaged).
- `to_unit` / `to_pixels`: uint8 0-255 <-> float32 0-1, the model's input range.
- `pad_to_model` / `run_padded`: ENet runs at multiples of 8 (config.model_size); any
  other size is padded at the bottom and right (zeros; void in labels) and the logits are
  cropped back, so every size works and nothing outside the image is scored.
- `Preprocessor(size, interpolation)`: a photo of any size -> the model's input; logits
  back to the photo's size.
- `resize_logits` / `classes_at`: logits to another size, bilinear (TensorFlow's
  half-pixel-centre rule), then the argmax; NumPy arrays stay in NumPy (the TFLite and ONNX
  runtimes need no TensorFlow), tensors in TensorFlow (graphs, and the SavedModel the
  endpoint serves).

No TensorFlow at import: `enet preprocess`'s worker processes import this module.
"""

from typing import Sequence, Tuple

import numpy as np
from PIL import Image

AREA, BILINEAR = "area", "bilinear"


def _filter(interpolation: str, source: Tuple[int, int], target: Tuple[int, int]):
    if interpolation == BILINEAR:
        return Image.BILINEAR
    shrinking = target[0] <= source[0] and target[1] <= source[1]
    return Image.BOX if shrinking else Image.BILINEAR


def resize_image(image, size: Sequence[int], interpolation: str = AREA) -> np.ndarray:
    """An RGB image (PIL or uint8 HxWx3) at `size` (height, width), as uint8."""
    height, width = int(size[0]), int(size[1])
    if isinstance(image, np.ndarray) and image.shape[:2] == (height, width):
        return image
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if picture.size == (width, height):
        return np.asarray(picture)
    resample = _filter(interpolation, picture.size, (width, height))
    return np.asarray(picture.resize((width, height), resample=resample))


def resize_classes(classes: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A class-index map at `size`, nearest neighbour."""
    height, width = int(size[0]), int(size[1])
    if classes.shape[:2] == (height, width):
        return classes
    return np.asarray(Image.fromarray(classes).resize((width, height), Image.NEAREST))


def to_unit(pixels):
    """uint8 0-255 (a tensor or an array) -> float32 0-1, the model's input."""
    from enet_cli.core.backend import tf

    return tf.cast(pixels, tf.float32) / 255.0


def to_pixels(images):
    """float 0-1 -> uint8 0-255, rounded (the inverse of to_unit on its range)."""
    from enet_cli.core.backend import tf

    if isinstance(images, np.ndarray):
        return np.round(np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)


def pad_to_model(tensor, value=0):
    """(N,) H, W, C -> the same padded at the bottom and right to ENet's multiple of 8.
    Nothing is added (no op either) when the static size already is one."""
    from enet_cli.core.backend import tf
    from enet_cli.core.config import SIZE_MULTIPLE

    rows, cols = (1, 2) if tensor.shape.rank == 4 else (0, 1)
    static = (tensor.shape[rows], tensor.shape[cols])
    if all(side is not None and side % SIZE_MULTIPLE == 0 for side in static):
        return tensor
    shape = tf.shape(tensor)
    pads = [[0, 0] for _ in range(tensor.shape.rank)]
    # (m - side % m) % m, not -side % m: both are the same in TensorFlow, but ONNX (tf2onnx)
    # takes the remainder of a negative number with the sign of the dividend.
    pads[rows] = [0, (SIZE_MULTIPLE - shape[rows] % SIZE_MULTIPLE) % SIZE_MULTIPLE]
    pads[cols] = [0, (SIZE_MULTIPLE - shape[cols] % SIZE_MULTIPLE) % SIZE_MULTIPLE]
    return tf.pad(tensor, pads, constant_values=tf.cast(value, tensor.dtype))


def run_padded(model, images, training: bool = False):
    """`model` on NHWC `images` of any size: padded to ENet's multiple of 8, logits cropped
    back to the images' size."""
    logits = model(pad_to_model(images), training=training)
    height, width = images.shape[1], images.shape[2]
    if height is not None and width is not None and tuple(logits.shape[1:3]) == (height, width):
        return logits
    from enet_cli.core.backend import tf

    size = tf.shape(images)[1:3]
    return logits[:, : size[0], : size[1]]


class Preprocessor:
    """A photo -> ENet's input at the model's size, and its logits back to the photo's size."""

    def __init__(self, size: Sequence[int], interpolation: str = AREA):
        self.size = (int(size[0]), int(size[1]))
        self.interpolation = interpolation

    def pixels(self, rgb) -> np.ndarray:
        """uint8 (height, width, 3) at the model's size: what `enet preprocess` stores."""
        return resize_image(rgb, self.size, self.interpolation)

    def __call__(self, rgb):
        """float32 (1, height, width, 3) in 0-1 at the model's size."""
        return to_unit(self.pixels(rgb)[None])

    @staticmethod
    def logits_to_size(logits, size: Sequence[int]):
        """(1, h, w, K) logits -> (1, H, W, K): bilinear on the scores, then argmax, so class
        boundaries fall between pixels, not on the model's coarser grid."""
        if isinstance(logits, np.ndarray):
            return resize_logits(logits, size)
        from enet_cli.core.backend import tf

        if isinstance(size, tf.Tensor):  # in a graph: at the same size, the resize is exact
            return tf.image.resize(logits, size, method="bilinear")
        if tuple(int(v) for v in logits.shape[1:3]) == (int(size[0]), int(size[1])):
            return logits
        return tf.image.resize(logits, [int(size[0]), int(size[1])], method="bilinear")


def _bilinear_taps(source: int, target: int):
    """For each output row (or column): the two input rows it reads and the weight of the
    second, by TensorFlow's rule for `tf.image.resize(..., "bilinear")` (half-pixel centres,
    no antialiasing: kernels/image/resize_bilinear_op.cc, compute_interpolation_weights)."""
    scale = np.float32(source / target)
    position = (np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    below = np.floor(position)
    lower = np.maximum(below, 0).astype(np.int64)
    upper = np.minimum(np.ceil(position), source - 1).astype(np.int64)
    return lower, upper, (position - below).astype(np.float32)


def _mix(top_left, top_right, bottom_left, bottom_right, x_weight, y_weight):
    """Bilinear mix of four score arrays, in TensorFlow's order of operations (each row
    across, then down), so the float32 results are its own."""
    upper = top_left + (top_right - top_left) * x_weight
    lower = bottom_left + (bottom_right - bottom_left) * x_weight
    return upper + (lower - upper) * y_weight


def resize_logits(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(N, h, w, K) float logits -> (N, H, W, K) float32, bilinear, in NumPy: what
    `tf.image.resize(logits, size, "bilinear")` computes (within float rounding: tested)."""
    logits = np.asarray(logits, np.float32)
    height, width = int(size[0]), int(size[1])
    if logits.shape[1:3] == (height, width):
        return logits
    top, bottom, y_weight = _bilinear_taps(logits.shape[1], height)
    left, right, x_weight = _bilinear_taps(logits.shape[2], width)
    upper, lower = logits[:, top], logits[:, bottom]
    return _mix(
        upper[:, :, left], upper[:, :, right], lower[:, :, left], lower[:, :, right],
        x_weight[None, None, :, None], y_weight[None, :, None, None],
    )  # fmt: skip


def _classes_resized(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """argmax(resize_logits(logits, size)) without resizing most of it: an output pixel
    whose four input pixels have one class takes that class (a weighted mean of score
    vectors that all rank class c first ranks it first too, ties included), so only pixels
    between classes are interpolated, exactly as resize_logits does. A few percent of a
    photo's pixels, where resizing every score is four times TensorFlow's time."""
    height, width = int(size[0]), int(size[1])
    top, bottom, y_weight = _bilinear_taps(logits.shape[1], height)
    left, right, x_weight = _bilinear_taps(logits.shape[2], width)
    coarse = np.argmax(logits, axis=-1).astype(np.int32)
    found = np.empty((len(logits), height, width), np.int32)
    for image, classes, out in zip(logits, coarse, found):
        upper_rows, lower_rows = classes[top], classes[bottom]
        out[:] = upper_rows[:, left]
        mixed = (
            (out != upper_rows[:, right])
            | (out != lower_rows[:, left])
            | (out != lower_rows[:, right])
        )
        rows, cols = np.nonzero(mixed)
        if not len(rows):
            continue
        t, b, west, east = top[rows], bottom[rows], left[cols], right[cols]
        scores = _mix(
            image[t, west], image[t, east], image[b, west], image[b, east],
            x_weight[cols][:, None], y_weight[rows][:, None],
        )  # fmt: skip
        out[rows, cols] = np.argmax(scores, axis=-1)
    return found


def classes_at(logits, size):
    """Class per pixel at `size` (int32, N x H x W): the logits resized there, then argmax.
    NumPy logits give a NumPy map without TensorFlow; tensors a tensor."""
    if isinstance(logits, np.ndarray):
        logits = np.asarray(logits, np.float32)
        if logits.shape[1:3] == (int(size[0]), int(size[1])):
            return np.argmax(logits, axis=-1).astype(np.int32)
        return _classes_resized(logits, size)
    from enet_cli.core.backend import tf

    return tf.argmax(Preprocessor.logits_to_size(logits, size), axis=-1, output_type=tf.int32)
