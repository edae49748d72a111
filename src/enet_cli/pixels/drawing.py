"""Photos in, class maps out, with NumPy and Pillow only: what `enet predict`, `enet invoke`
and the SageMaker endpoint's handler (container/handler.py, shipped into the TensorFlow
Serving container, which has no TensorFlow in Python) share, so a class-map PNG from the
endpoint is byte for byte the one `enet predict` writes for the same photo.
"""

import io
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OVERLAY_ALPHA = 0.55  # weight of the class colour over the photo


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
        raise PictureError(f"not a readable image ({_without_addresses(err)})") from None


def _without_addresses(err: Exception) -> str:
    """Pillow names the stream it read (`<_io.BytesIO object at 0x7f...>`): no use to a
    user, and it differs on every run."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)).strip()
    return text or type(err).__name__


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


def _boundaries(classes: np.ndarray) -> np.ndarray:
    edge = np.zeros(classes.shape, bool)
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    edge[1:, :] |= classes[1:, :] != classes[:-1, :]
    return edge


# The blend in integers, 256ths; enet serve's page (workflows/serve/page.html) uses it too.
COLOUR_WEIGHT = round(OVERLAY_ALPHA * 256)


def tint(rgb: np.ndarray, classes: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The photo tinted with the class colours, white class boundaries (uint8). In 16-bit
    integers (within 1 of the float blend): a video frame's overlay must cost little."""
    colours = palette.astype(np.uint16) * COLOUR_WEIGHT + 128
    blended = rgb.astype(np.uint16) * (256 - COLOUR_WEIGHT)
    blended += np.take(colours, classes, axis=0)
    picture = (blended >> 8).astype(np.uint8)
    picture |= (_boundaries(classes).astype(np.uint8) * 255)[..., None]  # white: all bits
    return picture


LEGEND_ROW, LEGEND_PAD = 16, 6


def legend_height(width: int, present: int) -> int:
    per_row = max(1, width // 170)
    return -(-present // per_row) * LEGEND_ROW + 2 * LEGEND_PAD


def _draw_legend(draw, origin: Tuple[int, int], width: int, shares, palette, names) -> None:
    font = ImageFont.load_default()
    swatch = 12
    per_row = max(1, width // 170)
    for n, (index, share) in enumerate(shares):
        x = origin[0] + LEGEND_PAD + (n % per_row) * (width // per_row)
        y = origin[1] + LEGEND_PAD + (n // per_row) * LEGEND_ROW
        colour = tuple(int(c) for c in palette[index])
        draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=colour)
        label = f"{names[index]} {100 * share:.0f}%"
        draw.text((x + swatch + 5, y + 1), label, fill=(235, 235, 235), font=font)


def present_shares(classes: np.ndarray, k: int) -> List[Tuple[int, float]]:
    counts = np.bincount(classes.ravel(), minlength=k)[:k]
    return [(int(i), counts[i] / classes.size) for i in np.argsort(-counts) if counts[i] > 0]


def overlay(rgb: np.ndarray, classes: np.ndarray, palette: np.ndarray, names: List[str]):
    """The tinted photo with a legend strip of the classes present below it (PIL image)."""
    picture = Image.fromarray(tint(rgb, classes, palette))
    shares = present_shares(classes, len(names))
    legend = Image.new(
        "RGB", (picture.width, legend_height(picture.width, len(shares))), (24, 24, 24)
    )
    _draw_legend(ImageDraw.Draw(legend), (0, 0), picture.width, shares, palette, names)
    canvas = Image.new("RGB", (picture.width, picture.height + legend.height))
    canvas.paste(picture, (0, 0))
    canvas.paste(legend, (0, picture.height))
    return canvas


def video_overlay(rgb, classes, palette, names, note: str = "") -> np.ndarray:
    """A frame at its own size: tinted, the legend on a darkened strip at its bottom, `note`
    (the frames/s counter) in the top-left corner."""
    frame = tint(rgb, classes, palette)
    shares = present_shares(classes, len(names))[:6]  # a video's legend must stay out of the way
    height, width = frame.shape[:2]
    strip = min(legend_height(width, len(shares)), height // 3)
    frame[height - strip :] = (frame[height - strip :] * 0.35).astype(np.uint8)
    if note:
        frame[:20, :78] = (frame[:20, :78] * 0.35).astype(np.uint8)
    picture = Image.fromarray(frame)
    draw = ImageDraw.Draw(picture)
    _draw_legend(draw, (0, height - strip), width, shares, palette, names)
    if note:
        draw.text((5, 4), note, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(picture)
