"""What a run leaves for everything after training, on both sides of the train/serve line:
where a run writes (`RunPaths`), the model's identity card (`RunMeta`, enet.json beside every
checkpoint directory and SavedModel: classes, colours, size, preprocessing), and a model read
back from checkpoints. Training, export, evaluate, predict and the SageMaker contract import
these from here, so serving never imports the training loop and a local run never imports
`sagemaker`.
"""

import json
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

from pydantic import BaseModel, Field

from enet_cli.core.config import ModelConfig
from enet_cli.core.errors import ConfigError, DataError
from enet_cli.data.manifest import Manifest

META_NAME = "enet.json"


class RunPaths(NamedTuple):
    """Where a training run writes. Locally all under --run-dir; in SageMaker, split by role."""

    checkpoints: Path
    logs: Path
    export: Path  # the SavedModel
    outputs: Path  # metrics.json, classes.json, enet.json


def local_paths(run_dir: Path) -> RunPaths:
    run_dir = Path(run_dir)
    return RunPaths(run_dir / "checkpoints", run_dir / "logs", run_dir / "model", run_dir)


class RunMeta(BaseModel):
    """What a checkpoint or SavedModel holds; written beside them as enet.json."""

    format_version: int = Field(1, description="Version of this format.")
    model: ModelConfig = Field(
        description="The settings file's `model` section (classes, depth, ...): the graph."
    )
    image_size: Tuple[int, int] = Field(description="[height, width] it was trained at.")
    class_names: List[str] = Field(description="The classes, label 0 first.")
    class_colors: List[Tuple[int, int, int]] = Field(description="Their RGB colours.")
    void_color: Tuple[int, int, int] = Field((0, 0, 0), description="RGB of void.")
    ignore_index: int = Field(description="The void label: the number of classes.")
    interpolation: str = Field(
        "area",
        description="The filter `enet preprocess` shrank the training images with: "
        "serving resizes photos with it too.",
    )

    @classmethod
    def from_manifest(cls, model: ModelConfig, manifest: Manifest) -> "RunMeta":
        """The model a run trains on `manifest`'s data: its class count is the data's."""
        return cls(
            model=model.model_copy(update={"num_classes": manifest.num_classes}),
            image_size=manifest.image_size,
            class_names=manifest.class_names,
            class_colors=[c.color for c in manifest.classes],
            void_color=manifest.void_color,
            ignore_index=manifest.ignore_index,
            interpolation=manifest.interpolation,
        )

    def write(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{META_NAME}.tmp"
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        tmp.replace(directory / META_NAME)

    @classmethod
    def of_checkpoints(cls, directory: Path) -> Optional["RunMeta"]:
        """enet.json of a checkpoint directory; a run's best/ (and SMP's directories) use
        the one of the checkpoints/ they are in."""
        from enet_cli.artifacts.checkpoints import CHECKPOINT_SUBDIRS

        directory = Path(directory)
        meta = cls.read(directory)
        if meta is None and directory.name in CHECKPOINT_SUBDIRS:
            meta = cls.read(directory.parent)
        return meta

    @classmethod
    def read(cls, directory: Path) -> Optional["RunMeta"]:
        path = Path(directory) / META_NAME
        if not path.is_file():
            return None
        try:
            return cls.model_validate_json(path.read_text())
        except (OSError, ValueError) as err:  # pydantic's ValidationError is a ValueError
            first = str(err).strip().splitlines()[0][:120]
            raise DataError(f"{path} is damaged ({first}); export or train again") from None


def check_resumable(checkpoints: Path, meta: RunMeta) -> None:
    """Refuse to resume from checkpoints of another model (other classes, another depth),
    before TensorFlow fails on shapes: one line naming what differs and the way out."""
    old = RunMeta.read(checkpoints)
    if old is None:
        return
    if old.class_names != meta.class_names:
        raise ConfigError(
            f"checkpoints in {checkpoints} are for {len(old.class_names)} classes but the data "
            f"has {len(meta.class_names)}; use another --run-dir or --no-resume"
        )
    if old.model.bottlenecks != meta.model.bottlenecks:
        theirs, asked = (",".join(map(str, m.model.bottlenecks)) for m in (old, meta))
        raise ConfigError(
            f"checkpoints in {checkpoints} are of an ENet with --bottlenecks {theirs}, not "
            f"{asked}; give --bottlenecks {theirs} to resume them, or use another --run-dir "
            f"or --no-resume"
        )


def load_model_from_checkpoint(directory: Path, found=None):
    """(model, meta, found) from a checkpoint directory or a run's checkpoints (latest
    checkpoint, either layout, unless the caller `found` it already), or None when there is
    none."""
    from enet_cli.artifacts.checkpoints import check_model_complete, find_checkpoint
    from enet_cli.artifacts.checkpoints import restore as restore_found
    from enet_cli.core.backend import tf
    from enet_cli.model import build_enet

    directory = Path(directory)
    meta = RunMeta.of_checkpoints(directory)
    found = found or find_checkpoint(directory)
    if meta is None or found is None:
        return None
    model = build_enet(meta.model, None)
    restore_found(tf.train.Checkpoint(model=model), found)
    check_model_complete(found, len(model.variables))  # a truncated checkpoint fails here
    return model, meta, found
