"""`enet evaluate`'s refusals that need no model: a module without TensorFlow, so a missing
data directory or split, or an output over an input, is one line in a second, not after
TensorFlow and the model load."""

from pathlib import Path
from typing import Optional

from enet_cli.artifacts.model_ref import model_inputs
from enet_cli.core import outputs
from enet_cli.core.errors import ConfigError
from enet_cli.data.manifest import Manifest, load_manifest


def evaluation_inputs(model_path: Path, data_dir: Path) -> list:
    """What no output of evaluate may replace: the model's files and the data."""
    return [*model_inputs(model_path), data_dir]


def check_evaluation(
    model_path: Path,
    data_dir: Path,
    split: str,
    json_path: Optional[Path] = None,
    confusion_csv: Optional[Path] = None,
) -> Manifest:
    """The data's manifest (checksums verified, the split present), once nothing is wrong."""
    kept = evaluation_inputs(model_path, data_dir)
    for path, option in ((json_path, "--json"), (confusion_csv, "--confusion-csv")):
        if path is not None:
            outputs.check_file_target(Path(path), option, kept)
    both = json_path is not None and confusion_csv is not None
    if both and Path(json_path).resolve() == Path(confusion_csv).resolve():
        raise ConfigError(f"--json and --confusion-csv both name {json_path}; give two file names")
    return load_manifest(data_dir, True, [split], "--split")
