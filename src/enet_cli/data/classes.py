"""Classes of a dataset: names, colours, how raw mask values or colours become class indices,
classes files, a default palette, and the class weights training may use.

No TensorFlow here: preprocessing workers import this module and must start fast.

Label convention everywhere after preprocessing: values 0..K-1 are classes and K (one past
the last class) is void, ignored by the loss and by every metric.
"""

import csv
import json
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from enet_cli.core.errors import DataError

Color = Tuple[int, int, int]
MIN_CLASSES = 2
MAX_CLASSES = 255  # labels are stored as 8-bit PNGs, and void is K
VOID_NAMES = ("void",)  # a class file row of this name is void, not a class (CamVid's "Void")


class ClassScheme(NamedTuple):
    """The classes a dataset is trained on and how raw masks turn into them. A mask is
    read through `values` when it holds indices (single channel, or a palette PNG's
    indices) and through `rgb` when it holds colours; a scheme may have both."""

    name: str
    classes: List[str]
    colors: List[Color]
    values: Dict[int, int]  # raw mask value -> class index (void = len(classes))
    rgb: Dict[int, int]  # packed colour (r<<16 | g<<8 | b) -> class index
    source: str  # where the classes come from, for messages ("class_dict.csv", a path)
    void_color: Color = (0, 0, 0)

    @property
    def void_index(self) -> int:
        return len(self.classes)


def pack_rgb(color: Color) -> int:
    return (int(color[0]) << 16) | (int(color[1]) << 8) | int(color[2])


def check_class_count(count: int, where: str) -> None:
    if not MIN_CLASSES <= count <= MAX_CLASSES:
        raise DataError(
            f"{where} gives {count} class{'es' if count != 1 else ''}; a segmentation needs "
            f"{MIN_CLASSES} to {MAX_CLASSES} classes (void not counted)"
        )


def voc_colormap(count: int = 256) -> List[Color]:
    """PASCAL VOC's palette (VOCdevkit's VOClabelcolormap.m: the index's bits spread over
    the three channels, most significant first). Index 0 is black."""
    colors = []
    for index in range(count):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors.append((r, g, b))
    return colors


def default_palette(count: int) -> List[Color]:
    """Colours for classes a dataset gives none for: VOC's palette without its black (black
    is void's colour), so two classes never share a colour with void or each other."""
    return voc_colormap(count + 1)[1:]


# ---------------------------------------------------------------------------------------
# Classes files: CSV (name,r,g,b like CamVid's class_dict.csv, or name,value), JSON, YAML
# ---------------------------------------------------------------------------------------
class ClassRow(NamedTuple):
    name: str
    color: Optional[Color]
    value: Optional[int]


def _color(raw, where: str) -> Color:
    try:
        color = tuple(int(c) for c in raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}: a colour is three integers 0-255, got {raw!r}") from None
    if len(color) != 3 or not all(0 <= c <= 255 for c in color):
        raise DataError(f"{where}: a colour is three integers 0-255, got {raw!r}")
    return color  # type: ignore[return-value]


def _value(raw, where: str) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}: value must be an integer 0-255, got {raw!r}") from None
    if not 0 <= value <= 255:
        raise DataError(f"{where}: value must be an integer 0-255, got {raw!r}")
    return value


def _csv_rows(path: Path) -> List[ClassRow]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "name" not in columns:
            raise DataError(f"{path} lacks column 'name'; the header must be name,r,g,b")
        colored = any(c in columns for c in ("r", "g", "b"))
        if colored:
            missing = [c for c in ("r", "g", "b") if c not in columns]
            if missing:
                raise DataError(
                    f"{path} lacks column {missing[0]!r}; the header must be name,r,g,b"
                )
        elif "value" not in columns:
            raise DataError(f"{path} needs columns r,g,b (colour masks) or value (index masks)")
        rows = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            where = f"{path}:{line}"
            try:
                color = (int(row["r"]), int(row["g"]), int(row["b"])) if colored else None
            except ValueError:
                raise DataError(f"{where}: r, g, b must be integers 0-255") from None
            value = _value(row["value"], where) if row.get("value") else None
            rows.append(ClassRow(row["name"], color and _color(color, where), value))
    return rows


def _structured_rows(path: Path, data) -> List[ClassRow]:
    """JSON/YAML: a list of {name, color?, value?}, or a mapping name -> [r, g, b]."""
    if isinstance(data, dict):
        data = [{"name": name, "color": color} for name, color in data.items()]
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a list of classes ({{name, color, value}})")
    rows = []
    for index, item in enumerate(data):
        where = f"{path}: class {index}"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise DataError(f"{where} needs a name")
        color = item.get("color")
        value = item.get("value")
        rows.append(
            ClassRow(
                item["name"],
                None if color is None else _color(color, where),
                None if value is None else _value(value, where),
            )
        )
    return rows


def read_classes_file(path: Path) -> List[ClassRow]:
    """The classes a file lists, in order; refuses duplicate names, colours and values."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".yaml", ".yml"):
        raise DataError(f"classes file {path} must be .csv, .json or .yaml")
    try:
        if suffix == ".csv":
            rows = _csv_rows(path)
        else:
            text = path.read_text()
            import yaml

            try:
                data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
            except (ValueError, yaml.YAMLError) as err:
                reason = str(err).splitlines()[0]
                raise DataError(f"{path} is not valid {suffix[1:].upper()}: {reason}") from None
            rows = _structured_rows(path, data)
    except OSError as err:
        raise DataError(f"cannot read classes file {path}: {err.strerror}") from None
    if not rows:
        raise DataError(f"{path} lists no classes")
    for field in ("name", "color", "value"):
        seen: Dict[object, str] = {}
        for row in rows:
            key = getattr(row, field)
            if key is None:
                continue
            if key in seen:
                raise DataError(
                    f"{path}: {field} {key!r} of {row.name!r} is already used by "
                    f"{seen[key]!r}; every class needs its own {field}"
                )
            seen[key] = row.name
    return rows


def scheme_from_rows(
    name: str, rows: List[ClassRow], source: str, ignore_index: Optional[int] = None
) -> ClassScheme:
    """A scheme from a classes file: rows named void become void; index masks use each
    row's value (default: its position among all rows), colour masks its colour."""
    kept = [row for row in rows if row.name.lower() not in VOID_NAMES]
    check_class_count(len(kept), source)
    void = len(kept)
    index = {row.name: i for i, row in enumerate(kept)}
    values: Dict[int, int] = {}
    rgb: Dict[int, int] = {}
    for position, row in enumerate(rows):
        target = index.get(row.name, void)
        values[row.value if row.value is not None else position] = target
        if row.color is not None:
            rgb[pack_rgb(row.color)] = target
    if ignore_index is not None:
        if values.get(ignore_index, void) != void:
            raise DataError(
                f"--ignore-index {ignore_index} is also the value of class "
                f"{kept[values[ignore_index]].name!r} in {source}; choose another"
            )
        values[ignore_index] = void
    palette = default_palette(len(kept))
    colors = [row.color or palette[i] for i, row in enumerate(kept)]
    void_colors = [row.color for row in rows if row.name.lower() in VOID_NAMES and row.color]
    return ClassScheme(
        name, [row.name for row in kept], colors, values, rgb, source,
        void_colors[0] if void_colors else (0, 0, 0),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# Masks -> classes
# ---------------------------------------------------------------------------------------
def labels_to_classes(label: np.ndarray, scheme: ClassScheme) -> Tuple[np.ndarray, int]:
    """Turn a raw mask into class indices in ONE pass; count pixels no class explains.

    Colour masks (H x W x 3) are packed into one integer per pixel and looked up with a
    sorted search (not one full-image comparison per class); index masks (H x W) are
    looked up the same way. Unexplained pixels become void; the caller decides whether
    their number is acceptable.
    """
    if label.ndim == 3:
        if label.shape[2] < 3 or not scheme.rgb:
            raise ValueError("expected a single-channel index mask")
        rgb = label[..., :3].astype(np.uint32)
        keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        table = scheme.rgb
    else:
        if not scheme.values:
            raise ValueError("expected an RGB colour mask")
        keys = label.astype(np.uint32)
        table = scheme.values
    table_keys = np.array(sorted(table), dtype=np.uint32)
    table_values = np.array([table[k] for k in table_keys], dtype=np.uint8)
    position = np.clip(np.searchsorted(table_keys, keys), 0, len(table_keys) - 1)
    known = table_keys[position] == keys
    classes = np.where(known, table_values[position], scheme.void_index).astype(np.uint8)
    return classes, int(np.count_nonzero(~known))


# ---------------------------------------------------------------------------------------
# Class weights (computed on the train split's histogram by `enet preprocess`)
# ---------------------------------------------------------------------------------------
def enet_class_weights(histogram: np.ndarray, c: float = 1.02) -> np.ndarray:
    """ENet's weighting: w = 1 / ln(c + p), p = class pixel frequency (void excluded)."""
    total = histogram.sum()
    p = histogram / total if total else np.zeros_like(histogram, dtype=np.float64)
    return 1.0 / np.log(c + p)


def median_frequency_weights(histogram: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """SegNet's weighting: w = median(f) / f, f = pixels of c / pixels of images containing c.

    Classes absent from the train split get weight 0 (nothing to learn from them).
    """
    present = image_pixels > 0
    freq = np.zeros_like(histogram, dtype=np.float64)
    freq[present] = histogram[present] / image_pixels[present]
    weights = np.zeros_like(freq)
    positive = freq > 0
    if positive.any():
        weights[positive] = np.median(freq[positive]) / freq[positive]
    return weights
