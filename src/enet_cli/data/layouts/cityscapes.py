"""Cityscapes as the official download unpacks it, and its label table.

    leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<name>_gtFine_labelIds.png

`--classes cityscapes` (default) trains the 19 evaluation classes (trainId 0..18); every
other label id, and the ones marked ignoreInEval, is void. `--classes cityscapes-categories`
trains the 7 categories (flat, construction, object, nature, sky, human, vehicle), with the
ignoreInEval labels void as in the official category scores. The test split's public
labels are all 0 (unlabeled): it is kept without labels, for `enet predict` only.
"""

from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

from enet_cli.core.errors import ConfigError, DataError
from enet_cli.data.classes import ClassScheme, Color
from enet_cli.data.layouts.base import SPLITS, Layout, Pair, Split, images_in, match_pairs


class Label(NamedTuple):
    name: str
    id: int
    train_id: int  # 255 (or -1): not one of the 19 evaluation classes
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: Color


# The official table: cityscapesScripts, cityscapesscripts/helpers/labels.py (tests compare
# it with that package's `labels`, field by field).
LABELS: List[Label] = [
    Label("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    Label("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    Label("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    Label("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    Label("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    Label("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    Label("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    Label("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    Label("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
]

# A category's colour in overlays: that of its most common evaluation class.
CATEGORY_COLORS: Dict[str, Color] = {
    "flat": (128, 64, 128),
    "construction": (70, 70, 70),
    "object": (220, 220, 0),
    "nature": (107, 142, 35),
    "sky": (70, 130, 180),
    "human": (220, 20, 60),
    "vehicle": (0, 0, 142),
}
SCHEMES = ("cityscapes", "cityscapes-categories")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def _evaluated(label: Label) -> bool:
    return 0 <= label.train_id < 255


def train_classes() -> Tuple[List[str], List[Color], Dict[int, int]]:
    """The 19 evaluation classes (names, colours) and labelId -> trainId (void = 19)."""
    kept = sorted(filter(_evaluated, LABELS), key=lambda label: label.train_id)
    void = len(kept)
    values = {
        label.id: label.train_id if _evaluated(label) else void for label in LABELS if label.id >= 0
    }
    return [label.name for label in kept], [label.color for label in kept], values


def categories() -> Tuple[List[str], List[Color], Dict[int, int]]:
    """The 7 categories and labelId -> category index (void = 7)."""
    names = list(CATEGORY_COLORS)
    void = len(names)
    values = {
        label.id: label.category_id - 1
        if label.category_id > 0 and not label.ignore_in_eval
        else void
        for label in LABELS
        if label.id >= 0
    }
    return names, list(CATEGORY_COLORS.values()), values


class Cityscapes(Layout):
    name = "cityscapes"
    looks_like = "leftImg8bit/ with gtFine/ (Cityscapes)"

    @classmethod
    def found_in(cls, root: Path) -> bool:
        return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()

    def scheme(self) -> ClassScheme:
        classes = self.cfg.classes or "cityscapes"
        if classes not in SCHEMES:
            raise ConfigError(
                f"invalid value for --classes: {classes!r}; Cityscapes has {' or '.join(SCHEMES)}"
            )
        names, colors, values = train_classes() if classes == "cityscapes" else categories()
        return ClassScheme(classes, names, colors, values, {}, "the Cityscapes label table")

    def splits(self) -> Dict[str, Split]:
        out = {}
        for split in SPLITS:
            image_dir = self.root / "leftImg8bit" / split
            if not image_dir.is_dir():
                continue
            images = [
                p for p in images_in(image_dir, recursive=True) if p.name.endswith(IMAGE_SUFFIX)
            ]
            if split == "test":  # public labels are all "unlabeled": none to read
                if not images:
                    raise DataError(f"split test is empty: no *{IMAGE_SUFFIX} under {image_dir}")
                out[split] = Split([Pair(_name(p), p, None) for p in images], labeled=False)
                continue
            label_dir = self.root / "gtFine" / split
            if not label_dir.is_dir():
                raise DataError(f"{image_dir} has no labels: {label_dir} does not exist")
            labels = [
                p for p in images_in(label_dir, recursive=True) if p.name.endswith(LABEL_SUFFIX)
            ]
            out[split] = Split(
                match_pairs(
                    self.root,
                    split,
                    images,
                    lambda p, s=split: self._swap(p, s, "leftImg8bit", "gtFine", LABEL_SUFFIX),
                    labels,
                    lambda p, s=split: self._swap(p, s, "gtFine", "leftImg8bit", IMAGE_SUFFIX),
                    _name,
                )
            )
        return out

    def _swap(self, path: Path, split: str, source: str, target: str, suffix: str) -> Path:
        """The other side's file: same city folder, the name's suffix replaced."""
        city = path.parent.relative_to(self.root / source / split)
        return self.root / target / split / city / (_name(path) + suffix)


def _name(path: Path) -> str:
    for suffix in (IMAGE_SUFFIX, LABEL_SUFFIX):
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem
