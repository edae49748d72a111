"""Plain image and mask folders, the shape most hand-made datasets take.

    images/<name>.png|jpg          masks/<name>.png          (split by --val-fraction)
    images/{train,val,test}/...    masks/{train,val,test}/...  (or {train,val,test}/images, masks)

Masks hold class indices (`--ignore-index`, default 255, is void), or colours named by a
classes file (`--classes FILE`: CSV name,r,g,b like CamVid's class_dict.csv, name,value,
or JSON/YAML), which also names index classes. Without a classes file the classes are the
values the train masks hold, 0 to the largest, named "class 0", "class 1", ...
"""

import concurrent.futures
import random
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from enet_cli.core.errors import DataError
from enet_cli.core.ui import info
from enet_cli.data.classes import ClassRow, ClassScheme, read_classes_file, scheme_from_rows
from enet_cli.data.layouts.base import SPLITS, Layout, Pair, Split, images_in, match_pairs


class Folders(Layout):
    name = "folders"
    looks_like = "images/ with masks/ (plain folders)"

    @classmethod
    def found_in(cls, root: Path) -> bool:
        flat = (root / "images").is_dir() and (root / "masks").is_dir()
        nested = (root / "train" / "images").is_dir() and (root / "train" / "masks").is_dir()
        return flat or nested

    def _dirs(self, split: Optional[str]) -> Tuple[Path, Path]:
        if split is None:
            return self.root / "images", self.root / "masks"
        if (self.root / split / "images").is_dir():
            return self.root / split / "images", self.root / split / "masks"
        return self.root / "images" / split, self.root / "masks" / split

    def _split_names(self) -> List[str]:
        return [s for s in SPLITS if self._dirs(s)[0].is_dir()]

    def _pairs(self, split: Optional[str]) -> List[Pair]:
        image_dir, mask_dir = self._dirs(split)
        if not mask_dir.is_dir():
            raise DataError(f"{image_dir} has no masks: {mask_dir} does not exist")
        images = images_in(image_dir)
        by_stem = {image.stem: image for image in images}
        return match_pairs(
            self.root,
            split or "train",
            images,
            lambda image: mask_dir / f"{image.stem}.png",
            images_in(mask_dir),
            lambda mask: by_stem.get(mask.stem, image_dir / f"{mask.stem}.png"),
        )

    def splits(self) -> Dict[str, Split]:
        if not hasattr(self, "_splits"):
            self._splits = self._find_splits()
        return self._splits

    def _find_splits(self) -> Dict[str, Split]:
        names = self._split_names()
        if names:
            return {split: Split(self._pairs(split)) for split in names}
        pairs = self._pairs(None)
        fraction = self.cfg.val_fraction
        val_count = max(1, round(len(pairs) * fraction))
        if not 0 < fraction < 1 or val_count >= len(pairs):
            raise DataError(
                f"--val-fraction {fraction} of {len(pairs)} images leaves no train or no val "
                f"images; use a fraction between 0 and 1, or train/ and val/ folders"
            )
        shuffled = list(pairs)
        random.Random(self.cfg.split_seed).shuffle(shuffled)
        val = sorted(shuffled[:val_count])
        train = sorted(shuffled[val_count:])
        info(
            f"no split folders: {val_count} of {len(pairs)} images held out for val "
            f"(--val-fraction {fraction}, --split-seed {self.cfg.split_seed})"
        )
        return {"train": Split(train), "val": Split(val)}

    def scheme(self) -> ClassScheme:
        ignore = self.cfg.ignore_index
        if self.cfg.classes:
            path = Path(self.cfg.classes)
            return scheme_from_rows(path.name, read_classes_file(path), str(path), ignore)
        train = self.splits()["train"].pairs
        largest = _largest_value([pair.label for pair in train if pair.label], ignore)
        rows = [ClassRow(f"class {v}", None, v) for v in range(largest + 1)]
        where = f"the masks of {self.root} (values 0..{largest}, {ignore} = void)"
        return scheme_from_rows("mask values", rows, where, ignore)


def _mask_values(path: Path) -> np.ndarray:
    with Image.open(path) as mask:
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise DataError(
                f"{path} is a {mask.mode} image; index masks are single-channel (give "
                f"--classes FILE with colours for colour masks)"
            )
        return np.unique(np.asarray(mask))


def _largest_value(masks: List[Path], ignore: Optional[int]) -> int:
    """The largest class value the masks hold (decoded in threads: PNG decoding releases
    the GIL)."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        seen = set()
        for values in pool.map(_mask_values, masks):
            seen.update(int(v) for v in values)
    seen.discard(ignore)
    return max(seen) if seen else 0
