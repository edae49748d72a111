"""`enet predict`: class maps and colour overlays for images of any size.

Each image is resized to the model's training size, segmented, and the logits are resized
back (bilinear) before the argmax, so boundaries follow the original resolution rather than
blocky upscaled labels. Per image two PNGs: `<name>_classes.png`, an indexed PNG whose pixel
values are class indices and whose palette is the class colours (viewers show colours,
programs read indices), and `<name>_overlay.png`: the photo under the class colours, with
class boundaries drawn and a legend of the classes present, largest first.
"""

import io
from pathlib import Path
from typing import Iterable, List, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from enet_cli import outputs
from enet_cli.backend import tf
from enet_cli.errors import DataError, OutputError
from enet_cli.inference import Predictor
from enet_cli.preprocessor import Preprocessor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_ALPHA = 0.55  # weight of the class colour over the photo


class Prediction(NamedTuple):
    image: Path
    classes_png: Path
    overlay_png: Path
    class_fractions: dict


def collect_images(inputs: Iterable[Path]) -> List[Path]:
    """Files as given, directories expanded to their images (sorted); errors name the path."""
    images: List[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in directory {item}")
            images.extend(found)
        elif item.is_file():
            images.append(item)
        else:
            raise DataError(f"input {item} does not exist")
    seen: dict = {}
    for image in images:  # outputs are named by stem: two inputs must not share one
        other = seen.setdefault(image.stem, image)
        if other != image:
            raise DataError(
                f"inputs {other} and {image} would both be written as {image.stem}_*.png; "
                f"predict them into different --out directories or rename one"
            )
    return images


def check_out_dir(out_dir: Path) -> None:
    """--out must be (or become) a directory we can write into: checked before any work."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file; give a directory")
    outputs.check_file_target(out_dir / "x_classes.png", "--out")


def segment(predictor: Predictor, rgb: np.ndarray) -> np.ndarray:
    """Class index per pixel of an (H, W, 3) uint8 image, at the image's own size."""
    preprocessor = Preprocessor(predictor.meta.image_size, predictor.meta.interpolation)
    logits = preprocessor.logits_to_size(predictor.logits(preprocessor(rgb)), rgb.shape[:2])
    return tf.argmax(logits, axis=-1, output_type=tf.int32)[0].numpy()


def _boundaries(classes: np.ndarray) -> np.ndarray:
    edge = np.zeros(classes.shape, bool)
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    edge[1:, :] |= classes[1:, :] != classes[:-1, :]
    return edge


def overlay(rgb: np.ndarray, classes: np.ndarray, palette: np.ndarray, names: List[str]):
    """The photo tinted with class colours, white class boundaries, and a legend strip."""
    colours = palette[classes].astype(np.float32)
    blended = (1 - OVERLAY_ALPHA) * rgb.astype(np.float32) + OVERLAY_ALPHA * colours
    blended[_boundaries(classes)] = 255.0
    picture = Image.fromarray(blended.round().astype(np.uint8))

    counts = np.bincount(classes.ravel(), minlength=len(names))[: len(names)]
    present = [i for i in np.argsort(-counts) if counts[i] > 0]
    font = ImageFont.load_default()
    row, swatch, pad = 16, 12, 6
    per_row = max(1, picture.width // 170)
    rows = -(-len(present) // per_row)
    legend = Image.new("RGB", (picture.width, rows * row + 2 * pad), (24, 24, 24))
    draw = ImageDraw.Draw(legend)
    for n, index in enumerate(present):
        x = pad + (n % per_row) * (picture.width // per_row)
        y = pad + (n // per_row) * row
        draw.rectangle(
            [x, y + 2, x + swatch, y + 2 + swatch], fill=tuple(int(c) for c in palette[index])
        )
        share = 100.0 * counts[index] / classes.size
        draw.text(
            (x + swatch + 5, y + 1), f"{names[index]} {share:.0f}%", fill=(235, 235, 235), font=font
        )
    canvas = Image.new("RGB", (picture.width, picture.height + legend.height))
    canvas.paste(picture, (0, 0))
    canvas.paste(legend, (0, picture.height))
    return canvas


def _save(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    outputs.write_atomic(path, buffer.getvalue())


def iter_predictions(predictor: Predictor, images: List[Path], out_dir: Path):
    """Segment each image, write its class map and overlay into `out_dir`, yield a Prediction."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create --out {out_dir}: {err.strerror}") from None
    palette = predictor.palette()
    names = predictor.meta.class_names
    for path in images:
        try:
            with Image.open(path) as handle:
                rgb = np.asarray(handle.convert("RGB"))
        except Image.DecompressionBombError:
            raise DataError(f"{path} is too large to decode safely; resize it") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"cannot read image {path}: {err}") from None
        classes = segment(predictor, rgb)
        indexed = Image.fromarray(classes.astype(np.uint8), mode="P")
        indexed.putpalette(palette.reshape(-1).tolist())
        classes_png = out_dir / f"{path.stem}_classes.png"
        overlay_png = out_dir / f"{path.stem}_overlay.png"
        _save(indexed, classes_png)
        _save(overlay(rgb, classes, palette, names), overlay_png)
        counts = np.bincount(classes.ravel(), minlength=len(names))
        fractions = {
            names[i]: float(counts[i] / classes.size) for i in range(len(names)) if counts[i]
        }
        yield Prediction(path, classes_png, overlay_png, fractions)


def predict(predictor: Predictor, inputs: Iterable[Path], out_dir: Path) -> List[Prediction]:
    """Segment every image of `inputs` (files or directories) into `out_dir`."""
    return list(iter_predictions(predictor, collect_images(inputs), out_dir))
