"""`Segmenter`: a trained ENet for notebooks and scripts, as keras-hub's `from_preset` and
MMSegmentation's `inference_model` give one.

    from enet_cli.api import Segmenter
    segmenter = Segmenter.load("camvid")        # a preset, or any MODEL enet predict takes
    classes = segmenter.predict("street.png")   # (H, W) class indices at the photo's size
    segmenter.overlay("street.png").save("overlay.png")

It is `enet predict`'s own path for one image, not a second one: the same loader
(runtimes.load_predictor, the fastest runtime the model has), the same resize, inference
and class map (predict.segment), the same drawing (pixels/drawing.py), so its class map and
overlay are the bytes `enet predict` writes.
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from enet_cli.artifacts.model_ref import ModelRef, RefKind
from enet_cli.artifacts.presets import runnable
from enet_cli.core.formats import InferenceRuntime
from enet_cli.pixels.drawing import class_shares, decode_rgb, overlay
from enet_cli.serving.predict import segment
from enet_cli.serving.runtimes import Predictor, load_predictor

ImageLike = Union[str, Path, Image.Image, np.ndarray]


class Segmenter:
    """A loaded model and what it knows (classes, colours, training size)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    @classmethod
    def load(
        cls, model: Union[str, Path] = "camvid", runtime: Optional[InferenceRuntime] = None
    ) -> "Segmenter":
        """`model`: a preset's name (`enet models`), a run directory, SavedModel,
        checkpoint directory, or TFLite/ONNX export; `runtime` as `enet predict --runtime`."""
        ref = ModelRef.parse(model)
        path = ref.path if ref.on_disk else Path(str(model))  # locate's one line if absent
        if ref.kind is RefKind.preset:
            path = runnable(ref.value)  # its TFLite file where TensorFlow is not installed
        return cls(load_predictor(path, None if runtime is None else InferenceRuntime(runtime)))

    @property
    def class_names(self) -> List[str]:
        return list(self.predictor.meta.class_names)

    @property
    def class_colors(self) -> List[Tuple[int, int, int]]:
        return [tuple(c) for c in self.predictor.meta.class_colors]

    @property
    def image_size(self) -> Tuple[int, int]:
        """(height, width) it was trained at; images of any size are resized to it."""
        return tuple(self.predictor.meta.image_size)

    def predict(self, image: ImageLike) -> np.ndarray:
        """(H, W) int32 class indices of an image (a path, a PIL image or an (H, W, 3) uint8
        array), at the image's own size."""
        return segment(self.predictor, _rgb(image))

    def overlay(self, image: ImageLike) -> Image.Image:
        """The image tinted by class, with class boundaries and a legend of each class's
        share: `enet predict`'s NAME_overlay.png."""
        rgb = _rgb(image)
        classes = segment(self.predictor, rgb)
        return overlay(rgb, classes, self.predictor.palette(), self.class_names)

    def class_shares(self, image: ImageLike) -> Dict[str, float]:
        """Each class's share of the image's pixels."""
        return class_shares(self.predict(image), self.class_names)


def _rgb(image: ImageLike) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return decode_rgb(Path(image).read_bytes())
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {array.shape} {array.dtype}")
    return array
