"""What every dataset layout provides to `enet preprocess`: its classes and, per split, the
image/mask pairs, matched and checked before any work starts.

No TensorFlow here: preprocessing workers import these modules and must start fast.
"""

from pathlib import Path
from typing import Callable, ClassVar, Dict, List, NamedTuple, Optional

from enet_cli.core.config import PreprocessConfig
from enet_cli.core.errors import DataError
from enet_cli.data.classes import ClassScheme

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class Pair(NamedTuple):
    name: str  # the record's name: unique within its split
    image: Path
    label: Optional[Path]  # None: the split has no labels (predict only)


class Split(NamedTuple):
    pairs: List[Pair]
    labeled: bool = True


class Layout:
    """A dataset on disk. Subclasses say how to recognise it (`found_in`), its classes
    (`scheme`) and its splits (`splits`: train and val required, labeled)."""

    name: ClassVar[str]
    looks_like: ClassVar[str]  # what `found_in` looks for, for the "no layout found" line

    def __init__(self, root: Path, cfg: PreprocessConfig):
        self.root = Path(root)
        self.cfg = cfg

    @classmethod
    def found_in(cls, root: Path) -> bool:
        raise NotImplementedError

    def scheme(self) -> ClassScheme:
        raise NotImplementedError

    def splits(self) -> Dict[str, Split]:
        raise NotImplementedError

    def checked_splits(self) -> Dict[str, Split]:
        splits = self.splits()
        for split in REQUIRED_SPLITS:
            if split not in splits:
                raise DataError(
                    f"no {split} split in {self.root} ({self.name} layout); training needs "
                    f"train and val (test is optional)"
                )
            if not splits[split].labeled:
                raise DataError(f"the {split} split of {self.root} has no labels; it needs them")
        return splits


def images_in(directory: Path, recursive: bool = False) -> List[Path]:
    found = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())


def match_pairs(
    root: Path,
    split: str,
    images: List[Path],
    label_for: Callable[[Path], Path],
    labels: List[Path],
    image_for: Callable[[Path], Path],
    name_for: Callable[[Path], str] = lambda image: image.stem,
) -> List[Pair]:
    """Every image of a split with its label, refusing orphans on either side (a label
    without its image is a sign of a broken copy, not something to skip silently)."""
    if not images:
        raise DataError(f"split {split} is empty: no images under {root}")
    pairs = []
    for image in images:
        label = label_for(image)
        if not label.is_file():
            raise DataError(
                f"no label for {image.relative_to(root)} (looked for "
                f"{label.relative_to(root)}); every image needs its label"
            )
        pairs.append(Pair(name_for(image), image, label))
    for label in labels:
        image = image_for(label)
        if not image.exists():
            raise DataError(
                f"label {label.relative_to(root)} has no image (looked for "
                f"{image.relative_to(root)}); remove it or add the image"
            )
    names: Dict[str, Path] = {}
    for pair in pairs:
        if pair.name in names:
            raise DataError(
                f"{pair.image.relative_to(root)} and {names[pair.name].relative_to(root)} "
                f"have the same name {pair.name!r} in split {split}; rename one"
            )
        names[pair.name] = pair.image
    return pairs
