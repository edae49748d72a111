"""What a run persists: checkpoints (tf.train.CheckpointManager) and its metadata file.

A checkpoint holds the model (weights, batch-norm statistics, dropout counters), the
optimizer (moments, step count), and where the loop was: epoch, batches done in it, and
the partial epoch's loss and confusion matrix, so a resumed run continues exactly where
the interrupted one stopped, with the same data order and the same metrics.

`enet.json` beside checkpoints and SavedModels says what model they hold (classes, colours,
size), so evaluate/predict need nothing else and a resume can refuse a mismatch up front.
"""

from pathlib import Path
from typing import Optional, Tuple

from enet_cli.artifacts.checkpoints import (
    BEST,
    FoundCheckpoint,
    check_model_complete,
    find_checkpoint,
)
from enet_cli.artifacts.checkpoints import restore as restore_found
from enet_cli.artifacts.run import RunMeta
from enet_cli.core import outputs
from enet_cli.core.backend import tf
from enet_cli.core.errors import ConfigError, DataError, TrainingError, reason
from enet_cli.serving.export import ExportReport, ExportRequest, size_on_disk

# The loop's own variables: a resume reads them from the checkpoint file before the first
# step, since SMP restores the checkpoint itself only during that step.
POSITION = (
    "global_step",
    "epoch",
    "step_in_epoch",
    "best_val_miou",
    "epoch_loss_sum",
    "epoch_confusion",
)


def create_slots(optimizer, variables) -> None:
    """Make the optimizer's slot variables now, as its first apply_gradients would (same
    variables, same order). A checkpoint in several parts (SMP's partitions) must find
    them: restored before they exist, each part's values for a slot wait as a deferred
    restoration, and one part's (empty) entry can shadow another's.
    Keras >= 2.11 optimizers build(); older ones _create_all_weights()."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if hasattr(inner, "build") and not hasattr(inner, "_create_all_weights"):
        inner.build(variables)
    else:
        inner._create_all_weights(variables)


class CheckpointBackend:
    """How checkpoints are written and read: TensorFlow's CheckpointManager, whole
    checkpoints numbered by global step, everywhere but under SMP, whose partitioned model
    is saved and restored by the library's own manager (engines/smp.py)."""

    def directories(self, write_directory: Path) -> Tuple[Path, Path]:
        """(recent, best) checkpoint directories under a run's `checkpoints/`."""
        return write_directory, write_directory / BEST

    def manager(self, checkpoint: tf.train.Checkpoint, directory: Path, keep: int):
        return tf.train.CheckpointManager(checkpoint, str(directory), keep)

    def save(self, manager, step) -> Optional[str]:
        """Checkpoints are numbered by global step: ckpt-120 is the state after step 120."""
        return manager.save(checkpoint_number=step)

    def find(self, directory: Path) -> Optional[FoundCheckpoint]:
        """The checkpoint a resume starts from (an SMP run's too: its parts are merged)."""
        return find_checkpoint(directory)

    def restore(self, checkpoint: tf.train.Checkpoint, found: FoundCheckpoint, manager) -> None:
        # Partial on purpose: the optimizer may own a learning-rate variable in one run and
        # not in the next (a schedule vs a constant); model mismatches are caught by
        # artifacts.run.check_resumable() and by the shape errors the caller turns into a
        # ConfigError.
        if found.partitioned:
            create_slots(checkpoint.optimizer, checkpoint.model.trainable_variables)
        restore_found(checkpoint, found)


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
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            global_step=self.global_step,
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
        self._write_directories: Tuple[Path, ...] = ()
        if write_directory is not None:
            recent, best = self.backend.directories(Path(write_directory))
            self.manager = self.backend.manager(self.checkpoint, recent, keep)
            self.best = self.backend.manager(self.checkpoint, best, 1)
            self._write_directories = (recent, best)
        self.model = model
        self._write_directory = write_directory
        # The step of the checkpoint restored or last saved: saving it again would write a
        # second, different ckpt-N (e.g. an optimizer whose slots are not restored yet).
        # Every process knows it alike, so collective saves stay in step.
        self._saved_step: Optional[int] = None

    def latest(self) -> Optional[FoundCheckpoint]:
        return self.backend.find(self.directory)

    def restore_latest(self) -> Optional[FoundCheckpoint]:
        found = self.latest()
        if found:
            try:
                self.backend.restore(self.checkpoint, found, self.manager)
                self._load_position(found.prefixes[0])
            except (AssertionError, ValueError, tf.errors.OpError) as err:
                first = str(err).strip().splitlines()[0][:200]
                raise ConfigError(
                    f"checkpoint {found} does not fit this model ({first}); use another "
                    f"--run-dir or --no-resume"
                ) from None
            self._saved_step = int(self.checkpoint.optimizer.iterations.numpy())
        return found

    def _load_position(self, prefix: str) -> None:
        """Where the loop was, from the file: the same values the restore brings, known now
        even when the restore itself is deferred to the first step (SMP)."""
        reader = tf.train.load_checkpoint(prefix)
        saved = reader.get_variable_to_shape_map()
        for name in POSITION:
            key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
            if key in saved:  # a checkpoint of enet-cli <= 0.x has no global_step
                getattr(self, name).assign(reader.get_tensor(key))
        if "global_step/.ATTRIBUTES/VARIABLE_VALUE" in saved:
            self.checkpoint.optimizer.iterations.assign(self.global_step)

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
        self.global_step.assign(self.checkpoint.optimizer.iterations)
        try:
            return self.backend.save(manager, self.checkpoint.optimizer.iterations)
        except (tf.errors.OpError, OSError) as err:
            self.remove_partial_writes()
            first = reason(err)
            raise TrainingError(
                f"cannot write a checkpoint in {self._write_directory} ({first}); free space "
                f"or fix the directory, then run the same command again to resume from "
                f"{previous or 'the start'}"
            ) from None

    def remove_partial_writes(self) -> None:
        """A process killed while writing a checkpoint leaves `ckpt-N_temp*` behind (the
        checkpoint itself is only listed once complete): nobody else writes here now."""
        import shutil

        for directory in self._write_directories:
            for partial in Path(directory).rglob("*_temp*"):
                if partial.is_dir():
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    partial.unlink()

    def save_best(self) -> Optional[str]:
        if self.best is None:
            return None
        return self._write(self.best)

    def load_best_weights(self) -> Optional[FoundCheckpoint]:
        """Put the best checkpoint's model weights into the model (for export): every
        partition's part of it under SMP, read from the files, as SMP's save_model does."""
        if not self._write_directories:
            return None
        found = find_checkpoint(self._write_directories[1])
        if found:
            restore_found(tf.train.Checkpoint(model=self.model), found)
        return found


def convert_to_whole(directory: Path, out: Path) -> FoundCheckpoint:
    """Write the newest checkpoint (and the best) of a run's `checkpoints/` as whole
    checkpoints in `out` (ckpt-<step>, best/, enet.json, history.json): what an SMP run's
    per-partition checkpoints become for anything that reads one checkpoint. Everything is
    kept: weights, optimizer slots and step, the loop's position."""
    from enet_cli.core.backend import keras
    from enet_cli.core.config import Precision, TrainConfig
    from enet_cli.model import build_enet
    from enet_cli.train.optim import build_optimizer

    directory, out = Path(directory), Path(out)
    meta = RunMeta.read(directory)
    found = find_checkpoint(directory)
    if meta is None or found is None:
        raise DataError(f"no checkpoints with enet.json in {directory}")
    keys = {name for name, _ in tf.train.list_variables(found.prefixes[0])}
    for source, target in ((found, out), (find_checkpoint(directory / BEST), out / BEST)):
        if source is None:
            continue
        model = build_enet(meta.model, None)
        # The optimizer training builds; any schedule (training always gives one, and a
        # schedule owns no variable); loss-scaled when the run was mixed_float16.
        scaled = any(k.startswith("optimizer/inner_optimizer/") for k in keys)
        precision = Precision.mixed_float16 if scaled else Precision.float32
        optimizer = build_optimizer(
            TrainConfig(precision=precision),
            keras.optimizers.schedules.PiecewiseConstantDecay([2**62], [1.0, 1.0]),
        )
        state = TrainState(model, optimizer, len(meta.class_names), target, 1)
        create_slots(optimizer, model.trainable_variables)
        restore_found(state.checkpoint, source)
        check_model_complete(source, len(model.variables))
        step = int(
            tf.train.load_checkpoint(source.prefixes[0]).get_tensor(
                "global_step/.ATTRIBUTES/VARIABLE_VALUE"
            )
        )
        manager = tf.train.CheckpointManager(state.checkpoint, str(target), 1)
        manager.save(checkpoint_number=step)
    meta.write(out)
    history = directory / "history.json"
    if history.is_file():
        (out / "history.json").write_bytes(history.read_bytes())
    return found


def export_checkpoints(request: ExportRequest) -> ExportReport:
    """A run's checkpoints (either layout) as whole checkpoints in `request.out`."""
    source = Path(request.source)
    directory = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    with outputs.claim(
        Path(request.out), "export", request.force, [request.source], "--out"
    ) as staged:
        convert_to_whole(directory, staged.path)
        out = staged.publish()
    return ExportReport(
        path=out,
        format=request.format,
        quantize=request.quantize,
        image_size=None,
        size_bytes=size_on_disk(out),
    )
