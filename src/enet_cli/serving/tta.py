"""Test-time augmentation for `enet evaluate --tta`, as MMSegmentation and PaddleSeg do it.

Each image is also segmented mirrored and/or at other scales; every view's class
probabilities (softmax) are brought back to the image's size and orientation and averaged,
and the argmax of the average is the prediction. Averaging probabilities rather than raw
logits is what both toolkits do (MMSegmentation's `aug_test`, PaddleSeg's
`aug_inference`): a view that is unsure should not outvote a confident one by scale alone.

`--tta flip` mirrors left-right; `--tta flip,scales=0.75,1,1.25` also runs at 0.75x and
1.25x the model's size (resized bilinearly, antialiased when shrinking).
"""

from typing import Callable, Tuple

from pydantic import BaseModel, field_validator

from enet_cli.core.errors import ConfigError


class TTA(BaseModel):
    flip: bool = False
    scales: Tuple[float, ...] = (1.0,)

    @field_validator("scales")
    @classmethod
    def _positive(cls, value):
        if not value or any(s <= 0 or s > 4 for s in value):
            raise ValueError("scales must be in (0, 4]")
        return tuple(value)

    @property
    def views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    @property
    def needs_any_size(self) -> bool:
        return any(s != 1.0 for s in self.scales)

    def describe(self) -> str:
        parts = ["flip"] if self.flip else []
        if self.scales != (1.0,):
            parts.append("scales " + ", ".join(f"{s:g}" for s in self.scales))
        return f"TTA: {'; '.join(parts)} ({self.views} views)"


def parse_tta(text: str) -> TTA:
    """`flip`, `scales=0.75,1,1.25` or both, comma-separated; one-line errors otherwise."""
    flip, scales, in_scales = False, [], False
    for token in [t.strip() for t in text.split(",") if t.strip()]:
        if token == "flip":
            flip, in_scales = True, False
        elif token.startswith("scales="):
            in_scales = True
            token = token[len("scales=") :]
            scales.append(_scale(token, text))
        elif in_scales:
            scales.append(_scale(token, text))
        else:
            raise ConfigError(
                f"--tta {text!r}: {token!r} is not flip or scales=S1,S2,...; e.g. --tta "
                f"flip,scales=0.75,1,1.25"
            )
    if not flip and not scales:
        raise ConfigError(f"--tta {text!r} asks for nothing; e.g. --tta flip")
    try:
        return TTA(flip=flip, scales=tuple(scales) or (1.0,))
    except ValueError:
        raise ConfigError(f"--tta {text!r}: every scale must be above 0 and at most 4") from None


def _scale(token: str, text: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise ConfigError(f"--tta {text!r}: scale {token!r} is not a number") from None


def tta_probabilities(logits_fn: Callable, images, tta: TTA):
    """The averaged class probabilities (N, H, W, K) of float32 NHWC `images` in [0, 1];
    `logits_fn` takes images of any size (or only theirs when every scale is 1). In
    TensorFlow (its antialiased resize): the one part of evaluate that needs it."""
    from enet_cli.core.backend import tf

    size = tf.shape(images)[1:3]
    total = None
    for scale in tta.scales:
        if scale == 1.0:
            scaled = images
        else:
            target = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
            scaled = tf.image.resize(images, target, "bilinear", antialias=scale < 1)
        views = [(scaled, False)] + ([(tf.reverse(scaled, axis=[2]), True)] if tta.flip else [])
        for view, mirrored in views:
            probabilities = tf.nn.softmax(tf.cast(logits_fn(view), tf.float32), axis=-1)
            if mirrored:
                probabilities = tf.reverse(probabilities, axis=[2])
            if scale != 1.0:
                probabilities = tf.image.resize(probabilities, size, "bilinear")
            total = probabilities if total is None else total + probabilities
    return total / float(tta.views)
