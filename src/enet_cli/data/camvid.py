"""CamVid as data: the two layouts found in the wild, class names, palettes, the 32->11 map.

No TensorFlow here: preprocessing workers import this module and must start fast.

Label convention everywhere after preprocessing: values 0..K-1 are classes and K (one past
the last class) is void, ignored by the loss and by every metric.
"""

import csv
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

import numpy as np

from enet_cli.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")

Color = Tuple[int, int, int]

# The 11 classes of SegNet's CamVid and of the ENet paper, in SegNet's index order,
# with SegNet's palette (used for colouring predictions).
CAMVID11: List[Tuple[str, Color]] = [
    ("Sky", (128, 128, 128)),
    ("Building", (128, 0, 0)),
    ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)),
    ("Sidewalk", (60, 40, 222)),
    ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Bicyclist", (0, 128, 192)),
]
VOID_NAME = "Void"
VOID_COLOR: Color = (0, 0, 0)

# The standard grouping of CamVid's 32 classes into 11 (SegNet, ENet). Void maps to void.
CAMVID32_TO_11: Dict[str, str] = {
    "Sky": "Sky",
    **dict.fromkeys(["Building", "Wall", "Tunnel", "Archway", "Bridge"], "Building"),
    **dict.fromkeys(["Column_Pole", "TrafficCone"], "Pole"),
    **dict.fromkeys(["Road", "LaneMkgsDriv", "LaneMkgsNonDriv"], "Road"),
    **dict.fromkeys(["Sidewalk", "ParkingBlock", "RoadShoulder"], "Sidewalk"),
    **dict.fromkeys(["Tree", "VegetationMisc"], "Tree"),
    **dict.fromkeys(["SignSymbol", "Misc_Text", "TrafficLight"], "SignSymbol"),
    "Fence": "Fence",
    **dict.fromkeys(["Car", "SUVPickupTruck", "Truck_Bus", "Train", "OtherMoving"], "Car"),
    **dict.fromkeys(["Pedestrian", "Child", "CartLuggagePram", "Animal"], "Pedestrian"),
    **dict.fromkeys(["Bicyclist", "MotorcycleScooter"], "Bicyclist"),
}

SCHEMES = ("camvid11", "camvid32")


class Layout(NamedTuple):
    """Where a CamVid download keeps its images and labels, and how labels are encoded."""

    name: str  # "kaggle" (RGB colour labels X_L.png + class_dict.csv) or "segnet" (index labels)
    root: Path
    label_dirs: Dict[str, str]  # split -> label directory name

    def label_path(self, image: Path, split: str) -> Path:
        label_dir = self.root / self.label_dirs[split]
        if self.name == "kaggle":
            return label_dir / f"{image.stem}_L{image.suffix}"
        return label_dir / image.name

    def image_path(self, label: Path, split: str) -> Path:
        stem = label.stem
        if self.name == "kaggle" and stem.endswith("_L"):
            stem = stem[:-2]
        return self.root / split / f"{stem}{label.suffix}"


def detect_layout(root: Path) -> Layout:
    """Recognise the Kaggle (`train_labels/`) or SegNet (`trainannot/`) layout under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"input directory {root} does not exist; give the CamVid root folder")
    candidates = {"kaggle": "{}_labels", "segnet": "{}annot"}
    for name, pattern in candidates.items():
        if (root / "train").is_dir() and (root / pattern.format("train")).is_dir():
            dirs = {s: pattern.format(s) for s in SPLITS if (root / s).is_dir()}
            for split in dirs:
                if not (root / dirs[split]).is_dir():
                    raise DataError(
                        f"{root / split} has no label directory {root / dirs[split]}; "
                        f"every split needs its labels"
                    )
            missing = [s for s in REQUIRED_SPLITS if s not in dirs]
            if missing:
                raise DataError(
                    f"no {missing[0]}/ split in {root}; CamVid needs train/ and val/ "
                    f"(test/ is optional)"
                )
            if name == "kaggle" and not (root / "class_dict.csv").is_file():
                raise DataError(
                    f"Kaggle layout without {root / 'class_dict.csv'}; it maps label colours "
                    f"to classes (name,r,g,b)"
                )
            return Layout(name, root, dirs)
    raise DataError(
        f"no CamVid layout found in {root}: expected train/ with train_labels/ (Kaggle) "
        f"or trainannot/ (SegNet)"
    )


def read_class_dict(path: Path) -> List[Tuple[str, Color]]:
    """Read Kaggle's class_dict.csv (`name,r,g,b`); refuse missing columns, duplicate colours."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("name", "r", "g", "b") if c not in columns]
            if missing:
                raise DataError(
                    f"{path} lacks column {missing[0]!r}; the header must be name,r,g,b"
                )
            rows = []
            seen: Dict[Color, str] = {}
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                try:
                    color = (int(row["r"]), int(row["g"]), int(row["b"]))
                except ValueError:
                    raise DataError(f"{path}:{line}: r, g, b must be integers 0-255") from None
                if color in seen:
                    raise DataError(
                        f"{path}:{line}: colour {color} of {row['name']!r} is already used by "
                        f"{seen[color]!r}; every class needs its own colour"
                    )
                seen[color] = row["name"]
                rows.append((row["name"], color))
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    if not rows:
        raise DataError(f"{path} lists no classes")
    return rows


class ClassScheme(NamedTuple):
    """The classes a dataset is trained on and how raw labels turn into them."""

    name: str
    classes: List[str]
    colors: List[Color]
    # Kaggle: packed RGB (r<<16 | g<<8 | b) -> class index (void = len(classes)).
    # SegNet: raw index -> class index.
    lookup: Dict[int, int]

    @property
    def void_index(self) -> int:
        return len(self.classes)


def pack_rgb(color: Color) -> int:
    return (color[0] << 16) | (color[1] << 8) | color[2]


def class_scheme(layout: Layout, scheme: str) -> ClassScheme:
    """The target classes for `scheme` on this layout (camvid11: the standard 11 + void)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"invalid value for --classes: {scheme!r}; use camvid11 or camvid32")
    names11 = [name for name, _ in CAMVID11]
    colors11 = [color for _, color in CAMVID11]
    if layout.name == "segnet":
        if scheme == "camvid32":
            raise ConfigError(
                f"--classes camvid32 needs the 32-class Kaggle layout, but {layout.root} is "
                f"SegNet's (already 11 classes); use --classes camvid11"
            )
        lookup = {i: i for i in range(len(names11))}
        lookup[len(names11)] = len(names11)  # SegNet's 11 = void
        return ClassScheme(scheme, names11, colors11, lookup)

    rows = read_class_dict(layout.root / "class_dict.csv")
    if scheme == "camvid32":
        kept = [(n, c) for n, c in rows if n != VOID_NAME]
        index = {n: i for i, (n, _) in enumerate(kept)}
        void = len(kept)
        lookup = {pack_rgb(c): index.get(n, void) for n, c in rows}
        return ClassScheme(scheme, [n for n, _ in kept], [c for _, c in kept], lookup)

    unknown = [n for n, _ in rows if n != VOID_NAME and n not in CAMVID32_TO_11]
    if unknown:
        raise DataError(
            f"class {unknown[0]!r} in {layout.root / 'class_dict.csv'} is not a CamVid class; "
            f"use --classes camvid32 to keep the file's own classes"
        )
    index11 = {n: i for i, n in enumerate(names11)}
    void = len(names11)
    lookup = {pack_rgb(c): index11[CAMVID32_TO_11[n]] if n != VOID_NAME else void for n, c in rows}
    return ClassScheme(scheme, names11, colors11, lookup)


def labels_to_classes(
    label: np.ndarray, scheme: ClassScheme, layout_name: str
) -> Tuple[np.ndarray, int]:
    """Turn a raw label image into class indices in ONE pass; count pixels no class explains.

    Kaggle labels are RGB: colours are packed into one integer and looked up with a sorted
    search (not one full-image comparison per class). SegNet labels are indices already.
    Unexplained pixels become void; the caller decides whether their number is acceptable.
    """
    if layout_name == "kaggle":
        if label.ndim != 3 or label.shape[2] < 3:
            raise ValueError("expected an RGB colour label")
        rgb = label[..., :3].astype(np.uint32)
        keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    else:
        if label.ndim == 3:
            raise ValueError("expected a single-channel index label")
        keys = label.astype(np.uint32)
    table_keys = np.array(sorted(scheme.lookup), dtype=np.uint32)
    table_values = np.array([scheme.lookup[k] for k in table_keys], dtype=np.uint8)
    position = np.clip(np.searchsorted(table_keys, keys), 0, len(table_keys) - 1)
    known = table_keys[position] == keys
    classes = np.where(known, table_values[position], scheme.void_index).astype(np.uint8)
    return classes, int(np.count_nonzero(~known))


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
