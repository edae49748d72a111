"""CamVid in the two layouts found in the wild, its class names and palette, the 32->11 map.

- camvid-kaggle: `train/`, `train_labels/X_L.png` (RGB colour labels), `class_dict.csv`
  (name,r,g,b), 32 classes + Void;
- camvid-segnet: `train/`, `trainannot/` (index labels 0..10, 11 = void), SegNet's 11.
"""

from pathlib import Path
from typing import Dict, List, Tuple

from enet_cli.core.errors import ConfigError, DataError
from enet_cli.data.classes import (
    ClassRow,
    ClassScheme,
    Color,
    pack_rgb,
    read_classes_file,
    scheme_from_rows,
)
from enet_cli.data.layouts.base import SPLITS, Layout, Split, images_in, match_pairs

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


class _CamVid(Layout):
    label_pattern = ""  # the label directory of a split, e.g. "{}_labels"

    @classmethod
    def found_in(cls, root: Path) -> bool:
        return (root / "train").is_dir() and (root / cls.label_pattern.format("train")).is_dir()

    def _classes(self) -> str:
        classes = self.cfg.classes or "camvid11"
        if classes not in SCHEMES:
            raise ConfigError(
                f"invalid value for --classes: {classes!r}; CamVid has camvid11 or camvid32"
            )
        return classes

    def label_path(self, image: Path, split: str) -> Path:
        raise NotImplementedError

    def image_path(self, label: Path, split: str) -> Path:
        raise NotImplementedError

    def splits(self) -> Dict[str, Split]:
        out = {}
        for split in SPLITS:
            if not (self.root / split).is_dir():
                continue
            label_dir = self.root / self.label_pattern.format(split)
            if not label_dir.is_dir():
                raise DataError(
                    f"{self.root / split} has no label directory {label_dir}; every split "
                    f"needs its labels"
                )
            pairs = match_pairs(
                self.root,
                split,
                images_in(self.root / split),
                lambda image, s=split: self.label_path(image, s),
                images_in(label_dir),
                lambda label, s=split: self.image_path(label, s),
            )
            out[split] = Split(pairs)
        return out


class CamVidKaggle(_CamVid):
    name = "camvid-kaggle"
    looks_like = "train/ with train_labels/ (CamVid, Kaggle)"
    label_pattern = "{}_labels"

    def label_path(self, image: Path, split: str) -> Path:
        return self.root / f"{split}_labels" / f"{image.stem}_L{image.suffix}"

    def image_path(self, label: Path, split: str) -> Path:
        stem = label.stem[:-2] if label.stem.endswith("_L") else label.stem
        return self.root / split / f"{stem}{label.suffix}"

    def scheme(self) -> ClassScheme:
        classes = self._classes()
        path = self.root / "class_dict.csv"
        if not path.is_file():
            raise DataError(
                f"Kaggle layout without {path}; it maps label colours to classes (name,r,g,b)"
            )
        rows = read_classes_file(path)
        if any(row.color is None for row in rows):
            raise DataError(f"{path} lacks column 'r'; the header must be name,r,g,b")
        if classes == "camvid32":
            scheme = scheme_from_rows(classes, rows, str(path))
            return scheme._replace(values={})  # Kaggle's labels are colours
        unknown = [
            row.name for row in rows if row.name != VOID_NAME and row.name not in CAMVID32_TO_11
        ]
        if unknown:
            raise DataError(
                f"class {unknown[0]!r} in {path} is not a CamVid class; use --classes "
                f"camvid32 to keep the file's own classes"
            )
        index11 = {name: i for i, (name, _) in enumerate(CAMVID11)}
        void = len(CAMVID11)
        rgb = {
            pack_rgb(row.color): index11[CAMVID32_TO_11[row.name]]
            if row.name != VOID_NAME
            else void
            for row in rows
            if row.color is not None
        }
        return ClassScheme(
            classes, [n for n, _ in CAMVID11], [c for _, c in CAMVID11], {}, rgb, str(path)
        )


class CamVidSegNet(_CamVid):
    name = "camvid-segnet"
    looks_like = "train/ with trainannot/ (CamVid, SegNet)"
    label_pattern = "{}annot"

    def label_path(self, image: Path, split: str) -> Path:
        return self.root / f"{split}annot" / image.name

    def image_path(self, label: Path, split: str) -> Path:
        return self.root / split / label.name

    def scheme(self) -> ClassScheme:
        if self._classes() == "camvid32":
            raise ConfigError(
                f"--classes camvid32 needs the 32-class Kaggle layout, but {self.root} is "
                f"SegNet's (already 11 classes); use --classes camvid11"
            )
        rows = [ClassRow(name, color, i) for i, (name, color) in enumerate(CAMVID11)]
        rows.append(ClassRow(VOID_NAME, None, len(CAMVID11)))  # SegNet's 11 = void
        return scheme_from_rows("camvid11", rows, "SegNet's 11 CamVid classes")._replace(rgb={})
