"""What a run persists: checkpoints (tf.train.CheckpointManager) and its metadata file.

A checkpoint holds the model (weights, batch-norm statistics, dropout counters), the
optimizer (moments, step count), and where the loop was: epoch, batches done in it, and
the partial epoch's loss and confusion matrix, so a resumed run continues exactly where
the interrupted one stopped, with the same data order and the same metrics.

`enet.json` beside checkpoints and SavedModels says what model they hold (classes, colours,
size), so evaluate/predict need nothing else and a resume can refuse a mismatch up front.
"""

import json
from pathlib import Path
from typing import List, Optional, Tuple

from pydantic import BaseModel

from enet_cli.backend import tf
from enet_cli.config import ModelConfig
from enet_cli.data.manifest import Manifest
from enet_cli.errors import ConfigError, DataError, TrainingError

META_NAME = "enet.json"
BEST = "best"


class RunMeta(BaseModel):
    """What a checkpoint or SavedModel holds; written beside them as enet.json."""

    format_version: int = 1
    model: ModelConfig
    image_size: Tuple[int, int]
    class_names: List[str]
    class_colors: List[Tuple[int, int, int]]
    void_color: Tuple[int, int, int] = (0, 0, 0)
    ignore_index: int

    @classmethod
    def from_manifest(cls, model: ModelConfig, manifest: Manifest) -> "RunMeta":
        return cls(
            model=model,
            image_size=manifest.image_size,
            class_names=manifest.class_names,
            class_colors=[c.color for c in manifest.classes],
            void_color=manifest.void_color,
            ignore_index=manifest.ignore_index,
        )

    def write(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{META_NAME}.tmp"
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        tmp.replace(directory / META_NAME)

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


class CheckpointBackend:
    """How checkpoints are written and read. TensorFlow's CheckpointManager everywhere but
    under SMP, whose partitioned model must be saved and restored by the library's own
    manager (engines/smp.py)."""

    def manager(self, checkpoint: tf.train.Checkpoint, directory: Path, keep: int):
        return tf.train.CheckpointManager(checkpoint, str(directory), keep)

    def save(self, manager, step) -> Optional[str]:
        """Checkpoints are numbered by global step: ckpt-120 is the state after step 120."""
        return manager.save(checkpoint_number=step)

    def restore(self, checkpoint: tf.train.Checkpoint, path: str) -> None:
        # Partial on purpose: the optimizer may own a learning-rate variable in one run and
        # not in the next (a schedule vs a constant); model mismatches are caught by
        # check_compatible() and by the shape errors the caller turns into a ConfigError.
        checkpoint.restore(path).expect_partial()


class TrainState:
    """The checkpointed state of a run and its two managers: recent, and best by val mIoU.

    `directory` is the run's checkpoint directory, which every process restores from;
    `write_directory` is where this process saves (the same for the chief, a scratch
    directory for workers that must take part in saving, None for workers that do not save).
    """

    def __init__(
        self,
        model,
        optimizer,
        num_classes: int,
        directory: Path,
        keep: int,
        write_directory: Optional[Path] = None,
        backend: Optional[CheckpointBackend] = None,
    ):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.best_val_miou = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
        self.epoch_loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.epoch_confusion = tf.Variable(
            tf.zeros([num_classes, num_classes], tf.int64), trainable=False
        )
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            best_val_miou=self.best_val_miou,
            epoch_loss_sum=self.epoch_loss_sum,
            epoch_confusion=self.epoch_confusion,
        )
        self.directory = Path(directory)
        self.backend = backend or CheckpointBackend()
        self.writes = write_directory is not None
        self.manager = self.best = None
        if write_directory is not None:
            write_directory = Path(write_directory)
            self.manager = self.backend.manager(self.checkpoint, write_directory, keep)
            self.best = self.backend.manager(self.checkpoint, write_directory / BEST, 1)
        self.model = model
        self._write_directory = write_directory
        # The step of the checkpoint restored or last saved: saving it again would write a
        # second, different ckpt-N (e.g. an optimizer whose slots are not restored yet).
        # Every process knows it alike, so collective saves stay in step.
        self._saved_step: Optional[int] = None

    def latest(self) -> Optional[str]:
        return tf.train.latest_checkpoint(str(self.directory))

    def restore_latest(self) -> Optional[str]:
        path = self.latest()
        if path:
            try:
                self.backend.restore(self.checkpoint, path)
            except (AssertionError, ValueError, tf.errors.OpError) as err:
                first = str(err).strip().splitlines()[0][:200]
                raise ConfigError(
                    f"checkpoint {path} does not fit this model ({first}); use another "
                    f"--run-dir or --no-resume"
                ) from None
            self._saved_step = int(self.checkpoint.optimizer.iterations.numpy())
        return path

    def save(self) -> Optional[str]:
        """ckpt-<step>, unless this step's checkpoint exists already (then the same one)."""
        step = int(self.checkpoint.optimizer.iterations.numpy())
        if step == self._saved_step:
            return self.latest()
        self._saved_step = step
        if self.manager is None:
            return None
        return self._write(self.manager)

    def _write(self, manager) -> Optional[str]:
        previous = self.latest()
        try:
            return self.backend.save(manager, self.checkpoint.optimizer.iterations)
        except (tf.errors.OpError, OSError) as err:
            self.remove_partial_writes()
            first = str(getattr(err, "message", err)).strip().splitlines()[0][:160]
            raise TrainingError(
                f"cannot write a checkpoint in {self._write_directory} ({first}); free space "
                f"or fix the directory, then run the same command again to resume from "
                f"{previous or 'the start'}"
            ) from None

    def remove_partial_writes(self) -> None:
        """A process killed while writing a checkpoint leaves `ckpt-N_temp*` behind (the
        checkpoint itself is only listed once complete): nobody else writes here now."""
        import shutil

        if self._write_directory is None:
            return
        for directory in (Path(self._write_directory), Path(self._write_directory) / BEST):
            for partial in directory.glob("*_temp*"):
                if partial.is_dir():
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    partial.unlink()

    def save_best(self) -> Optional[str]:
        if self.best is None:
            return None
        return self._write(self.best)

    def load_best_weights(self) -> Optional[str]:
        """Put the best checkpoint's model weights into the model (for export)."""
        path = self.best.latest_checkpoint if self.best is not None else None
        if path:
            self.backend.restore(tf.train.Checkpoint(model=self.model), path)
        return path


def check_compatible(directory: Path, meta: RunMeta) -> None:
    """Refuse to resume from checkpoints of another model, before TF fails on shapes."""
    old = RunMeta.read(directory)
    if old is None:
        return
    if len(old.class_names) != len(meta.class_names) or old.class_names != meta.class_names:
        raise ConfigError(
            f"checkpoints in {directory} are for {len(old.class_names)} classes but the data "
            f"has {len(meta.class_names)}; use another --run-dir or --no-resume"
        )


def load_model_from_checkpoint(directory: Path):
    """(model, meta) from a checkpoint directory or a run's checkpoints (latest checkpoint)."""
    from enet_cli.model import build_enet

    directory = Path(directory)
    meta = RunMeta.read(directory)
    latest = tf.train.latest_checkpoint(str(directory))
    if meta is None or latest is None:
        return None
    model = build_enet(meta.model, None)
    status = tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    status.assert_existing_objects_matched()  # a truncated checkpoint fails here, not later
    return model, meta
