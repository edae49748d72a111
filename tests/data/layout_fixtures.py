"""Small real-image datasets in each layout `enet preprocess` reads, made from the bundled
CamVid SegNet sample (tests/fixtures/camvid-segnet-mini: 24 train, 8 val, 8 test frames,
index labels 0..10, 11 = void) by repainting its labels through a stated class
correspondence. No Cityscapes or VOC image is downloaded; the layouts follow:

- Cityscapes: the official download (cityscapesScripts README, "Dataset Structure"):
  leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png and
  gtFine/{split}/{city}/..._gtFine_labelIds.png, label ids of helpers/labels.py;
- VOC: VOCdevkit/VOC2012 (JPEGImages/, SegmentationClass/ palette PNGs with 255 on
  borders, ImageSets/Segmentation/{train,val}.txt), and CVAT's "Segmentation mask 1.1"
  export of it (CVAT documentation, "Segmentation Mask": RGB masks, labelmap.txt);
- folders: images/ and masks/ with the same stems, optionally per split.
"""

import shutil
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

from enet_cli.data.classes import voc_colormap
from enet_cli.data.layouts.camvid import CAMVID11
from enet_testing import FIXTURES

SEGNET = FIXTURES / "camvid-segnet-mini"
SPLITS = ("train", "val", "test")
VOID = len(CAMVID11)  # SegNet's void index

# CamVid's 11 classes -> a Cityscapes label id of the same thing (void -> 0 "unlabeled").
CAMVID_TO_CITYSCAPES_ID = {
    "Sky": 23, "Building": 11, "Pole": 17, "Road": 7, "Sidewalk": 8, "Tree": 21,
    "SignSymbol": 20, "Fence": 13, "Car": 26, "Pedestrian": 24, "Bicyclist": 33,
}  # fmt: skip
# Ids that are no evaluation class, painted over CamVid's void pixels in turn: all void.
CITYSCAPES_VOID_IDS = (0, 1, 4, 9, 14, 29)
# CamVid's 11 -> VOC's 21 (indices of VOC_CLASSES); what VOC has no class for: background.
CAMVID_TO_VOC = {"Car": 7, "Pedestrian": 15, "Bicyclist": 2}


def segnet_pairs() -> Iterator[Tuple[str, str, Path, np.ndarray]]:
    """(split, stem, image path, label indices) of the SegNet sample."""
    for split in SPLITS:
        for image in sorted((SEGNET / split).glob("*.png")):
            label = np.asarray(Image.open(SEGNET / f"{split}annot" / image.name))
            yield split, image.stem, image, label


def remap(label: np.ndarray, table: Dict[int, int]) -> np.ndarray:
    out = np.zeros_like(label)
    for source, target in table.items():
        out[label == source] = target
    return out


def camvid_index_to(mapping: Dict[str, int], default: int, void: int) -> Dict[int, int]:
    table = {i: mapping.get(name, default) for i, (name, _) in enumerate(CAMVID11)}
    table[VOID] = void
    return table


def make_cityscapes(root: Path) -> Path:
    """Two cities per split; CamVid's void repainted with several non-evaluated ids; the
    test split's labels all 0, as the public download's are."""
    ids = camvid_index_to(CAMVID_TO_CITYSCAPES_ID, 0, 0)
    for n, (split, stem, image, label) in enumerate(segnet_pairs()):
        city = ("aachen", "bochum")[n % 2]
        name = f"{city}_{n:06d}_{stem}"
        image_dir = root / "leftImg8bit" / split / city
        label_dir = root / "gtFine" / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, image_dir / f"{name}_leftImg8bit.png")
        if split == "test":
            ids_image = np.zeros_like(label)
        else:
            ids_image = remap(label, ids)
            void = label == VOID
            ids_image[void] = np.resize(CITYSCAPES_VOID_IDS, int(void.sum()))
        Image.fromarray(ids_image.astype(np.uint8), "L").save(
            label_dir / f"{name}_gtFine_labelIds.png"
        )
        color = np.zeros((*label.shape, 3), np.uint8)  # the other gtFine files: ignored
        Image.fromarray(color).save(label_dir / f"{name}_gtFine_color.png")
    return root


def cityscapes_record_names(root: Path) -> Dict[str, str]:
    """Record name in the Cityscapes copy -> SegNet stem."""
    out = {}
    for path in (root / "leftImg8bit").rglob("*_leftImg8bit.png"):
        name = path.name[: -len("_leftImg8bit.png")]
        out[name] = name.split("_", 2)[2]
    return out


def make_voc(
    root: Path,
    classes: str = "camvid",
    mask_mode: str = "P",
    image_format: str = "PNG",
) -> Path:
    """A VOC-style copy. classes="camvid": CamVid's 11 indices as they are (name them with a
    classes file); "voc": repainted to VOC's 21 by CAMVID_TO_VOC. Void is 255. mask_mode
    "RGB" writes colour masks and a CVAT labelmap.txt instead of palette PNGs."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    if classes == "camvid":
        table = camvid_index_to({n: i for i, (n, _) in enumerate(CAMVID11)}, 0, 255)
        names_colors = list(CAMVID11)
    else:
        table = camvid_index_to(CAMVID_TO_VOC, 0, 255)
        names_colors = []
    palette = voc_colormap(256)
    if classes == "camvid":
        for i, (_, color) in enumerate(CAMVID11):
            palette[i] = color
    palette[255] = (224, 224, 192)
    ids: Dict[str, List[str]] = {split: [] for split in SPLITS}
    for split, stem, image, label in segnet_pairs():
        ids[split].append(stem)
        suffix = ".jpg" if image_format == "JPEG" else ".png"
        Image.open(image).convert("RGB").save(root / "JPEGImages" / f"{stem}{suffix}", image_format)
        indices = remap(label, table).astype(np.uint8)
        if mask_mode == "RGB":
            rgb = np.array(palette, np.uint8)[indices]
            Image.fromarray(rgb, "RGB").save(root / "SegmentationClass" / f"{stem}.png")
        else:
            mask = Image.fromarray(indices, "P")
            mask.putpalette([c for color in palette for c in color])
            mask.save(root / "SegmentationClass" / f"{stem}.png")
    for split in ("train", "val"):
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids[split]))
    if mask_mode == "RGB":
        lines = ["# label:color_rgb:parts:actions"]
        lines += [f"{name}:{r},{g},{b}::" for name, (r, g, b) in names_colors]
        (root / "labelmap.txt").write_text("\n".join(lines) + "\n")
    return root


def write_camvid_classes_csv(path: Path, with_void: bool = False) -> Path:
    rows = ["name,r,g,b"] + [f"{n},{r},{g},{b}" for n, (r, g, b) in CAMVID11]
    if with_void:
        rows.append("Void,0,0,0")
    path.write_text("\n".join(rows) + "\n")
    return path


def make_folders(
    root: Path,
    per_split: bool = True,
    nested: bool = False,
    table: Optional[Dict[int, int]] = None,
    splits: Tuple[str, ...] = SPLITS,
) -> Path:
    """images/ and masks/ (index PNGs: CamVid's indices, void 11 -> 255, or `table`), per
    split (images/train/, or train/images/ when nested) or all in one folder."""
    table = table or camvid_index_to({n: i for i, (n, _) in enumerate(CAMVID11)}, 0, 255)
    for split, _, image, label in segnet_pairs():
        if split not in splits:
            continue
        if not per_split:
            image_dir, mask_dir = root / "images", root / "masks"
        elif nested:
            image_dir, mask_dir = root / split / "images", root / split / "masks"
        else:
            image_dir, mask_dir = root / "images" / split, root / "masks" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, image_dir / image.name)
        Image.fromarray(remap(label, table).astype(np.uint8), "L").save(mask_dir / image.name)
    return root
