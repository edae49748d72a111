"""Pascal VOC-style segmentation datasets: VOC itself, and what labelling tools export in
its layout (CVAT "Segmentation mask", labelme2voc, Roboflow).

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png      palette PNG: index = class, 255 = void (object borders)
    ImageSets/Segmentation/{train,val,test}.txt

Classes: VOC's 21 by default; `--classes FILE` (CSV/JSON/YAML) or CVAT's `labelmap.txt`
beside the folders name them instead. Masks saved as RGB colour PNGs (CVAT does) are read
through the classes' colours.
"""

from pathlib import Path
from typing import Dict, List

from enet_cli.core.errors import DataError
from enet_cli.data.classes import (
    ClassRow,
    ClassScheme,
    pack_rgb,
    read_classes_file,
    scheme_from_rows,
    voc_colormap,
)
from enet_cli.data.layouts.base import IMAGE_SUFFIXES, SPLITS, Layout, Pair, Split

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
VOC_VOID = 255
VOC_VOID_COLOR = (224, 224, 192)  # VOC's colour of index 255
LABELMAP = "labelmap.txt"


def read_labelmap(path: Path) -> List[ClassRow]:
    """CVAT's labelmap.txt: `# label:color_rgb:parts:actions`, then `name:r,g,b::` rows."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        color = rest.split(":")[0]
        try:
            r, g, b = (int(c) for c in color.split(","))
        except ValueError:
            raise DataError(f"{path}:{number}: expected name:r,g,b::, got {line!r}") from None
        rows.append(ClassRow(name.strip(), (r, g, b), None))
    if not rows:
        raise DataError(f"{path} lists no classes")
    return rows


class Voc(Layout):
    name = "voc"
    looks_like = "JPEGImages/ with SegmentationClass/ (Pascal VOC)"

    @classmethod
    def found_in(cls, root: Path) -> bool:
        return (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir()

    def scheme(self) -> ClassScheme:
        given = self.cfg.classes
        labelmap = self.root / LABELMAP
        if given and given != "voc":
            rows = read_classes_file(Path(given))
            source = given
        elif given is None and labelmap.is_file():
            rows, source = read_labelmap(labelmap), str(labelmap)
        else:
            palette = voc_colormap(len(VOC_CLASSES))
            rows = [ClassRow(n, c, None) for n, c in zip(VOC_CLASSES, palette)]
            source = "Pascal VOC's 21 classes"
        name = "voc" if source.startswith("Pascal") else Path(source).name
        scheme = scheme_from_rows(name, rows, source, ignore_index=VOC_VOID)
        rgb = dict(scheme.rgb)
        rgb.setdefault(pack_rgb(VOC_VOID_COLOR), scheme.void_index)
        return scheme._replace(rgb=rgb, void_color=VOC_VOID_COLOR)

    def splits(self) -> Dict[str, Split]:
        lists = self.root / "ImageSets" / "Segmentation"
        if not lists.is_dir():
            raise DataError(
                f"no {lists}; a VOC-style dataset lists its splits in "
                f"ImageSets/Segmentation/train.txt and val.txt"
            )
        out = {}
        for split in SPLITS:
            listing = lists / f"{split}.txt"
            if not listing.is_file():
                continue
            ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
            if not ids:
                raise DataError(f"split {split} is empty: {listing} lists no images")
            pairs = [self._pair(image_id, listing) for image_id in ids]
            labeled = [pair.label is not None for pair in pairs]
            if not any(labeled) and split == "test":
                out[split] = Split(pairs, labeled=False)
                continue
            if not all(labeled):
                missing = pairs[labeled.index(False)]
                raise DataError(
                    f"no label for {missing.image.relative_to(self.root)} (looked for "
                    f"SegmentationClass/{missing.name}.png); every image of {listing.name} "
                    f"needs its label"
                )
            out[split] = Split(pairs)
        return out

    def _pair(self, image_id: str, listing: Path) -> Pair:
        images = [self.root / "JPEGImages" / f"{image_id}{s}" for s in IMAGE_SUFFIXES]
        found = [p for p in images if p.is_file()]
        if not found:
            raise DataError(
                f"{listing} lists {image_id!r}, but there is no JPEGImages/{image_id}.jpg; "
                f"add the image or remove the line"
            )
        label = self.root / "SegmentationClass" / f"{image_id}.png"
        return Pair(image_id, found[0], label if label.is_file() else None)
