"""Presets: trained ENets that ship inside the package, addressed by name wherever a MODEL
is taken (`enet predict camvid photo.jpg`), as keras-hub's presets and MMSegmentation's
model zoo are.

The registry is data, `enet_cli/presets/presets.json`: for each name a description, where
the weights came from (data, recipe, commit, epoch), the parameter count and the test
figures `benchmarks/pretrained.py` measured. The weights are `enet_cli/presets/NAME/`: a
checkpoint of the model's variables only (no optimizer state) beside its enet.json, which
holds the classes, colours and training size (read from there, not repeated here), and the
same weights as a float32 TFLite file in `NAME/tflite/`, which an install without
TensorFlow (the `edge` extra) runs instead.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

from pydantic import BaseModel, Field

from enet_cli.core.errors import DataError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
REGISTRY = PRESETS_DIR / "presets.json"
TFLITE_DIR = "tflite"


class Provenance(BaseModel):
    data: str = Field(description="What it was trained on, and where that data is.")
    recipe: str = Field(description="The commands that trained it.")
    commit: str = Field(description="enet-cli's commit that trained it.")
    epoch: int = Field(description="The epoch of the checkpoint (best on val).")
    step: int = Field(description="Its training step.")


class Figures(BaseModel):
    split: str
    images: int
    mean_iou: float
    pixel_accuracy: float
    class_accuracy: float
    per_class_iou: Dict[str, float]


class Preset(BaseModel):
    name: str
    description: str
    parameters: int = Field(description="Trainable parameters.")
    source: Provenance
    test: Figures = Field(description="Measured by benchmarks/pretrained.py.")
    references: Dict[str, float] = Field(
        description="Published test mean IoU of the same recipe elsewhere, by who measured it."
    )

    @property
    def directory(self) -> Path:
        return PRESETS_DIR / self.name


@lru_cache(maxsize=None)
def presets() -> Dict[str, Preset]:
    found = json.loads(REGISTRY.read_text())
    return {name: Preset(name=name, **fields) for name, fields in found.items()}


def names() -> List[str]:
    return sorted(presets())


def preset(name: str) -> Preset:
    """The preset called `name`, or one line listing the known ones."""
    found = presets().get(name)
    if found is None:
        raise DataError(f"no preset called {name!r}; known presets: {', '.join(names())}")
    return found


def runnable(name: str) -> Path:
    """The preset as a model to run (predict, evaluate, benchmark, the Python API): its
    checkpoint where TensorFlow is installed, the exact weights; else its TFLite file,
    which LiteRT runs (the same classes but for near-tied logits)."""
    import importlib.util

    from enet_cli.core.formats import TFLITE_NAME

    found = preset(name)
    if importlib.util.find_spec("tensorflow") is not None:
        return found.directory
    return found.directory / TFLITE_DIR / TFLITE_NAME


def size_of(found: Preset) -> Tuple[int, int]:
    """Its training size, from its enet.json."""
    from enet_cli.artifacts.run import RunMeta

    meta = RunMeta.read(found.directory)
    if meta is None:
        raise DataError(f"preset {found.name}'s files are missing from {found.directory}")
    return meta.image_size
