"""What `enet export` is asked for, and its refusals that need no model: a module without
TensorFlow, so a mistake is one line in a second, not after TensorFlow and the model load."""

from pathlib import Path
from typing import Optional, Tuple

from pydantic import BaseModel

from enet_cli.core import outputs
from enet_cli.core.errors import ConfigError
from enet_cli.core.formats import ModelFormat, Quantize


class ExportRequest(BaseModel):
    """What `enet export` was asked for; one object instead of a row of arguments."""

    source: Path
    out: Path
    format: ModelFormat = ModelFormat.saved_model
    quantize: Quantize = Quantize.none
    data_dir: Optional[Path] = None
    split: str = "val"
    image_size: Optional[Tuple[int, int]] = None
    calibration_images: int = 16
    xla: bool = False
    force: bool = False  # replace an earlier export at `out`
    measure_agreement: bool = True  # with data_dir: score the export against the float model

    def check(self) -> None:
        """Refuse combinations that cannot work, before any model is loaded."""
        if self.format != ModelFormat.tflite and self.quantize != Quantize.none:
            raise ConfigError(
                f"--quantize {self.quantize.value} applies to --format tflite; "
                f"--format {self.format.value} is float32"
            )
        if self.quantize == Quantize.int8 and self.data_dir is None:
            raise ConfigError(
                "--quantize int8 calibrates on training images: give the preprocessed data "
                "with --data DATA_DIR"
            )
        if self.xla and self.format != ModelFormat.saved_model:
            raise ConfigError("--xla applies to --format saved_model only")
        if self.format == ModelFormat.checkpoint and (
            self.data_dir is not None or self.image_size is not None
        ):
            raise ConfigError(
                "--format checkpoint copies the training state as it is: --data and --size "
                "do not apply"
            )
        outputs.check_apart(self.out, [self.source, self.data_dir], "--out")
        outputs.check_replaceable(self.out, "export", self.force, "--out")
        if not Path(self.source).exists():
            from enet_cli.artifacts.model_ref import locate

            locate(self.source)  # its one line, before "exporting ..." is shown
