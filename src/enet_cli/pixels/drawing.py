"""Photos in, class maps out, with NumPy and Pillow only: what `enet predict`, `enet invoke`
and the SageMaker endpoint's handler (container/handler.py, shipped into the TensorFlow
Serving container, which has no TensorFlow in Python) share, so a class-map PNG from the
endpoint is byte for byte the one `enet predict` writes for the same photo.
"""

import io
from typing import Dict, Sequence

import numpy as np
from PIL import Image


class PictureError(ValueError):
    """Bytes that are not a picture Pillow can decode (the message says why)."""


class PictureTooLarge(PictureError):
    """More pixels than Pillow's decompression-bomb guard allows."""


def decode_rgb(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 of an encoded image (PNG, JPEG, ...), as predict reads files."""
    try:
        with Image.open(io.BytesIO(data)) as handle:
            return np.asarray(handle.convert("RGB"))
    except Image.DecompressionBombError:
        raise PictureTooLarge("too large to decode safely; resize it") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise PictureError(f"not a readable image ({err})") from None


def indexed_png(classes: np.ndarray, palette: np.ndarray) -> Image.Image:
    """The class map as a palette PNG: each pixel's value is its class index, shown in the
    class colours (void, index K, in the void colour)."""
    indexed = Image.fromarray(classes.astype(np.uint8), mode="P")
    indexed.putpalette(palette.reshape(-1).tolist())
    return indexed


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def palette(colors: Sequence[Sequence[int]], void_color: Sequence[int]) -> np.ndarray:
    """(K+1, 3) uint8 colours, void last."""
    return np.array([*colors, void_color], dtype=np.uint8)


def shares(counts: np.ndarray, names: Sequence[str]) -> Dict[str, float]:
    """Each present class's share of the pixels counted (absent classes left out)."""
    total = max(int(counts.sum()), 1)
    return {names[i]: float(counts[i] / total) for i in range(len(names)) if counts[i]}


def class_shares(classes: np.ndarray, names: Sequence[str]) -> Dict[str, float]:
    return shares(np.bincount(classes.ravel(), minlength=len(names)), names)
