"""manifest.json: what `enet preprocess` wrote, and everything train/evaluate/predict need to know.

One pydantic model is both the writer's schema and the reader's validation, so the two
cannot drift. Readers refuse a manifest from a newer format with an upgrade hint.
"""

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enet_cli.core.config import DataConfig, global_batch
from enet_cli.core.errors import DataError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ShardInfo(BaseModel):
    """One TFRecord file of a split."""

    file: str = Field(description="The shard's file name, beside manifest.json.")
    records: int = Field(description="Examples (image + label) it holds.")
    sha256: str = Field(description="SHA-256 of the file: a damaged shard is named.")


class SplitInfo(BaseModel):
    """One split (train, val, test) of the dataset."""

    records: int = Field(description="Examples in the split.")
    shards: List[ShardInfo] = Field(description="Its TFRecord files, in reading order.")
    unknown_label_pixels: int = Field(
        0, description="Label pixels of no known class, written as void."
    )
    labeled: bool = Field(
        True, description="False when every label is void (Cityscapes test): predict only."
    )


class ClassInfo(BaseModel):
    """One class, in label order."""

    name: str = Field(description="The class's name, as tables and legends show it.")
    color: Tuple[int, int, int] = Field(description="Its RGB colour in overlays and masks.")


class Manifest(BaseModel):
    """The contents of manifest.json (labels: 0..K-1 classes, `ignore_index` = K = void)."""

    model_config = ConfigDict(extra="ignore")

    format_version: int = Field(description="Version of this format; readers refuse newer.")
    created_by: str = Field(description="The enet-cli version that wrote it.")
    source_layout: str = Field(description="The layout `enet preprocess` detected.")
    source_dir: str = Field(description="The dataset directory it read.")
    scheme: str = Field(description="The class table (label scheme) the labels follow.")
    image_size: Tuple[int, int] = Field(description="[height, width] of every image stored.")
    classes: List[ClassInfo] = Field(description="The classes, label 0 first.")
    ignore_index: int = Field(description="The void label: the number of classes.")
    void_color: Tuple[int, int, int] = Field((0, 0, 0), description="RGB of void in masks.")
    interpolation: str = Field(
        "area", description="The filter images were resized with (serving uses it too)."
    )
    splits: Dict[str, SplitInfo] = Field(description="Each split, by name.")
    train_pixel_histogram: List[int] = Field(description="Train pixels per class.")
    train_void_pixels: int = Field(description="Train pixels labelled void.")
    class_weights: Dict[str, List[float]] = Field(
        description="Loss weights per class for each --class-weighting scheme."
    )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> List[str]:
        return [c.name for c in self.classes]

    def shard_paths(self, data_dir: Path, split: str) -> List[Path]:
        if split not in self.splits:
            known = ", ".join(self.splits)
            raise DataError(f"{Path(data_dir) / MANIFEST_NAME} has no split {split!r} ({known})")
        return [Path(data_dir) / shard.file for shard in self.splits[split].shards]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(manifest: Manifest, directory: Path) -> Path:
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


def load_manifest(
    data_dir: Path,
    verify_checksums: bool = False,
    splits: Optional[List[str]] = None,
    split_option: Optional[str] = None,
) -> Manifest:
    """Read and check `data_dir/manifest.json`: format version, shard files, optionally checksums.

    Raises:
        DataError: naming the file and what to do (run `enet preprocess`, upgrade, re-run).
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(
            f"data directory {data_dir} is a file; give the directory enet preprocess wrote"
        )
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; create it with enet preprocess")
    if not path.is_file():
        raise DataError(f"no {MANIFEST_NAME} in {data_dir}; is it the output of enet preprocess?")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise DataError(f"{path} is not readable JSON ({err}); re-run enet preprocess") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if not isinstance(version, int):
        raise DataError(f"{path} has no format_version; re-run enet preprocess")
    if version > FORMAT_VERSION:
        raise DataError(
            f"{path} has format {version}, newer than this enet-cli reads ({FORMAT_VERSION}); "
            f"upgrade enet-cli"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(
            f"{path} is invalid at {where}: {first['msg']}; re-run enet preprocess"
        ) from None
    for split in splits or list(manifest.splits):
        if split not in manifest.splits:
            known = ", ".join(manifest.splits)
            hint = (
                f"choose one of those with {split_option}"
                if split_option
                else f"preprocess a dataset that has a {split} split"
            )
            raise DataError(f"{data_dir} has no {split!r} split (it has {known}); {hint}")
        if splits and not manifest.splits[split].labeled:
            labeled = ", ".join(s for s, info in manifest.splits.items() if info.labeled)
            raise DataError(
                f"the {split} split of {data_dir} has no labels (kept for enet predict only); "
                f"use a labeled split ({labeled})"
            )
        for shard, shard_path in zip(
            manifest.splits[split].shards, manifest.shard_paths(data_dir, split)
        ):
            if not shard_path.is_file():
                raise DataError(f"shard {shard_path} listed in {path} is missing")
            if verify_checksums and file_sha256(shard_path) != shard.sha256:
                raise DataError(
                    f"shard {shard_path} does not match its checksum in {path}; "
                    f"the file is corrupt: re-run enet preprocess"
                )
    return manifest


def check_batch_size(manifest: Manifest, split: str, batch_size: int, replicas: int = 1) -> None:
    """A step larger than the split would yield no batch at all: say so up front."""
    records = manifest.splits[split].records
    if global_batch(batch_size, replicas) <= records:
        return
    what = f"--batch-size {batch_size}"
    if replicas > 1:
        what += f" x {replicas} replicas = {global_batch(batch_size, replicas)} images per step"
    fix = (
        f"use --batch-size {records // replicas} or less"
        if records >= replicas
        else f"use at most {records} replicas"
    )
    raise DataError(f"{what} is larger than the {split} split ({records} images); {fix}")


def check_data(data: DataConfig, manifest: Manifest) -> None:
    """The data settings against what was preprocessed; callers check before any work."""
    if data.data_dir is None:
        raise DataError("no data directory given; pass DATA_DIR (the output of enet preprocess)")
    if data.image_size is not None and tuple(data.image_size) != tuple(manifest.image_size):
        raise DataError(
            f"--size {data.image_size[0]}x{data.image_size[1]} differs from the preprocessed "
            f"size {manifest.image_size[0]}x{manifest.image_size[1]} in {data.data_dir}; "
            f"re-run enet preprocess with --size or drop --size"
        )
