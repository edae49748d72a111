"""What a MODEL argument is, answered once at the command's edge.

Every command that takes a model (evaluate, predict, export, benchmark, deploy, transform)
reads its MODEL through `ModelRef.parse`: a local path (a run directory, SavedModel,
checkpoint directory, TFLite or ONNX export, or a downloaded job), an `s3://`
model.tar.gz, the name of a preset shipped in the package (artifacts/presets.py; a path of
the same name comes first), or a SageMaker training job's name. `locate` then says which
kind of model a local path holds (the table in core/formats.py) and reads its enet.json,
once; loaders take what it found instead of searching again.
"""

import enum
import re
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Union

from enet_cli.artifacts.run import META_NAME, RunMeta
from enet_cli.core.errors import DataError
from enet_cli.core.formats import FORMATS, ModelFormat, single_file_formats
from enet_cli.core.outputs import MARKER

# SageMaker's rule for a training job's (and endpoint's, model's) name.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class RefKind(str, enum.Enum):
    local = "local"
    preset = "preset"
    s3 = "s3"
    job = "job"


class ModelRef(NamedTuple):
    kind: RefKind
    value: str

    @classmethod
    def parse(cls, text: Union[str, Path]) -> "ModelRef":
        """A path that exists, or that has a `/`, is local; `s3://...` is S3; else a name
        SageMaker allows for a training job is a job; anything else is local (and then
        "does not exist" is the message a user needs)."""
        from enet_cli.artifacts.presets import presets

        text = str(text)
        if text.startswith("s3://"):
            return cls(RefKind.s3, text)
        if Path(text).exists() or "/" in text or not NAME_PATTERN.match(text):
            return cls(RefKind.local, text)
        if text in presets():
            return cls(RefKind.preset, text)
        return cls(RefKind.job, text)

    @property
    def on_disk(self) -> bool:
        return self.kind in (RefKind.local, RefKind.preset)

    @property
    def path(self) -> Path:
        if self.kind is RefKind.preset:
            from enet_cli.artifacts.presets import preset

            return preset(self.value).directory
        if self.kind is not RefKind.local:
            raise ValueError(f"{self.value} is a {self.kind.value} model, not a local path")
        return Path(self.value)

    def describe(self) -> str:
        return {
            RefKind.local: f"local model {self.value}",
            RefKind.preset: f"preset {self.value}",
            RefKind.s3: self.value,
            RefKind.job: f"training job {self.value}'s model.tar.gz",
        }[self.kind]


class FoundModel(NamedTuple):
    """A model located on disk: the file or directory to load, its enet.json, its format,
    and for checkpoints the checkpoint that was found (so nobody searches again)."""

    path: Path
    meta: RunMeta
    format: ModelFormat
    checkpoint: Optional[Any] = None  # artifacts.checkpoints.FoundCheckpoint

    def describe(self) -> str:
        return FORMATS[self.format].described


def locate(path: Union[str, Path]) -> FoundModel:
    """The model at `path`: a TFLite/ONNX file, or in `path`, `path/model` (a run's
    SavedModel), `path/1` (a SageMaker model.tar.gz) or `path/checkpoints`, whichever comes
    first with an enet.json; one-line errors otherwise. TensorFlow only for checkpoints."""
    from enet_cli.artifacts.checkpoints import find_checkpoint
    from enet_cli.artifacts.presets import names

    path = Path(path)
    if not path.exists():
        raise DataError(
            f"model {path} does not exist; give a run directory, SavedModel, TFLite or ONNX "
            f"export, checkpoint directory, or a preset ({', '.join(names())})"
        )
    files = {Path(name).suffix: fmt for name, fmt in single_file_formats().items()}
    if path.is_file() and path.suffix in files:
        meta = RunMeta.read(path.parent)
        if meta is None:
            raise DataError(f"{path.parent} has no enet.json beside {path.name}; export it again")
        return FoundModel(path, meta, files[path.suffix])
    for candidate in [path, path / "model", path / "1", path / "checkpoints"]:
        meta = RunMeta.of_checkpoints(candidate) if candidate.is_dir() else None
        if meta is None:
            continue
        if (candidate / "saved_model.pb").is_file():
            return FoundModel(candidate, meta, ModelFormat.saved_model)
        for name, fmt in single_file_formats().items():
            if (candidate / name).is_file():
                return FoundModel(candidate / name, meta, fmt)
        checkpoint = find_checkpoint(candidate)
        if checkpoint:
            return FoundModel(candidate, meta, ModelFormat.checkpoint, checkpoint)
    shadowed = str(path) in names()  # `enet predict camvid` where ./camvid is a folder
    raise DataError(
        f"no trained ENet in {path}: expected a SavedModel, TFLite or ONNX export, or "
        f"checkpoints with enet.json (the output of enet train or enet export)"
        + (f"; for the preset {path}, run enet outside this folder" if shadowed else "")
    )


def model_inputs(path: Union[str, Path]) -> List[Path]:
    """What a local MODEL is made of, for the rule that no output replaces an input: a
    directory (run, SavedModel, checkpoints, export) as a whole; a TFLite or ONNX file with
    the enet.json and marker its export wrote beside it. No TensorFlow: checked first."""
    ref = ModelRef.parse(path)
    if not ref.on_disk:
        return []  # downloaded into enet's own cache, which no option names
    path = ref.path
    if path.is_file():
        return [path, path.parent / META_NAME, path.parent / MARKER]
    return [path]
