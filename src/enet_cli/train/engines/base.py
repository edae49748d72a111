"""The engine interface: everything the training loop needs that differs between modes.

Like Accelerate's `Accelerator`, an engine is an object the loop *calls*; the loop never
asks which mode it runs. An engine decides device placement and variable scope, how a
dataset is split between replicas, how a step runs and how its gradients and metrics are
reduced, and which process is the chief (the only one that logs, checkpoints and exports).

`StrategyEngine` implements the interface on a `tf.distribute` strategy; with the default
strategy it is the single-device engine, with (MultiWorker)MirroredStrategy the TF ddp one.
"""

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import numpy as np

from enet_cli.core.backend import keras, tf
from enet_cli.core.config import ModelConfig
from enet_cli.model import build_enet
from enet_cli.train.state import CheckpointBackend, create_slots
from enet_cli.train.step import Update, objective
from enet_cli.train.task import SegmentationTask


class Engine:
    """Interface. `fit()` in loop.py uses only these members."""

    name = "engine"
    num_replicas = 1  # data-parallel replicas: each takes --batch-size images per step
    microbatches = 1  # pieces a replica's batch is cut into
    is_chief = True
    sync_batchnorm = False  # batch-norm statistics over the global batch (build_enet option)
    checkpoints = CheckpointBackend()  # how checkpoints are written and read

    def describe(self) -> str:
        return f"{self.name} engine, {self.num_replicas} replica(s)"

    def scope(self):
        return contextlib.nullcontext()

    def build_model(self, cfg: ModelConfig, image_size) -> keras.Model:
        """The ENet this engine trains (called in scope(); engines may place or wrap it)."""
        return build_enet(cfg, image_size, sync_batchnorm=self.sync_batchnorm)

    def create_optimizer_slots(self, optimizer, model) -> None:
        """Make the optimizer's slots before the train step is traced (called in scope()).
        A step that makes them on its first call is traced twice, tf.function's
        variable-creating trace and then the one it keeps, and that trace is the longest
        part of a run's start-up (benchmarks/startup.py)."""
        create_slots(optimizer, model.trainable_variables)

    def checkpoint_dir(self, run_checkpoints: Path) -> Optional[Path]:
        """Where this process writes checkpoints and exports; None: it does not write them.

        The chief writes into the run. Engines whose saving is a collective operation (every
        worker must take part) give the other workers a scratch directory, removed by close().
        """
        return run_checkpoints if self.is_chief else None

    def export_dir(self, run_export: Path) -> Optional[Path]:
        """Where this process writes the final SavedModel; None: it does not write one."""
        return run_export if self.is_chief else None

    def any_worker(self, flag: bool) -> bool:
        """True when `flag` is True on any worker: a stop request must stop all of them at
        the same step, or the others wait forever in their next collective."""
        return flag

    def sum_over_workers(self, totals: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Evaluation totals of this process -> totals over the whole cluster."""
        return totals

    def close(self) -> None:
        """Release what the engine made (scratch directories); called once after training."""

    def distribute_dataset(self, dataset_fn: Callable) -> Iterable:
        """`dataset_fn(input_context)` -> this replica's (or worker's) tf.data.Dataset."""
        raise NotImplementedError

    def make_train_step(self, model, update: Update, task: SegmentationTask):
        """step(batch) -> {"loss", "confusion"} summed over replicas: train/step.py's step
        (objective, update) distributed the engine's way."""
        raise NotImplementedError

    def make_eval_step(self, model, task: SegmentationTask):
        raise NotImplementedError


class StrategyEngine(Engine):
    """An engine on a tf.distribute strategy (the default strategy = one device).

    With several workers (MultiWorkerMirroredStrategy) reading a batch-norm moving statistic
    is a cross-worker reduction, so saving a checkpoint or a SavedModel is a collective:
    every worker saves, the non-chief ones into scratch directories (TensorFlow's documented
    pattern for custom loops).
    """

    def __init__(self, strategy=None, name: str = "single", sync_batchnorm: bool = False):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.name = name
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.sync_batchnorm = sync_batchnorm and self.num_replicas > 1
        self.multi_worker = _is_multi_worker(self.strategy)
        self._scratch: Optional[Path] = None
        self._any = None

    def scope(self):
        return self.strategy.scope()

    def checkpoint_dir(self, run_checkpoints: Path) -> Optional[Path]:
        if self.is_chief or not self.multi_worker:
            return super().checkpoint_dir(run_checkpoints)
        return self._scratch_dir() / "checkpoints"

    def export_dir(self, run_export: Path) -> Optional[Path]:
        if self.is_chief or not self.multi_worker:
            return super().export_dir(run_export)
        return self._scratch_dir() / "model"

    def _scratch_dir(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="enet-worker-scratch-"))
        return self._scratch

    def any_worker(self, flag: bool) -> bool:
        if not self.multi_worker:
            return flag
        if self._any is None:

            @tf.function(autograph=False)
            def any_flag(value):
                per_replica = self.strategy.run(tf.identity, args=(value,))
                return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._any = any_flag
        return float(self._any(tf.constant(1.0 if flag else 0.0))) > 0

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def distribute_dataset(self, dataset_fn):
        if self.num_replicas == 1 and not self.multi_worker:
            return dataset_fn(None)
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _reduce(self, values: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return {
            k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in values.items()
        }

    def make_train_step(self, model, update, task):
        def replica_step(images, labels):
            context = tf.distribute.get_replica_context()
            total_weight = context.all_reduce(tf.distribute.ReduceOp.SUM, task.weight_sum(labels))
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = objective(task, logits, labels, total_weight)
            grads = update.gradients(tape, loss)
            update.apply(context.all_reduce(tf.distribute.ReduceOp.SUM, grads))
            return {"loss": loss, "confusion": task.confusion(logits, labels)}

        @tf.function(autograph=False)  # plain Python control flow only: tracing 2x faster
        def step(batch):
            images, labels = batch
            return self._reduce(self.strategy.run(replica_step, args=(images, labels)))

        return step

    def make_eval_step(self, model, task):
        def replica_step(images, labels):
            # Under MultiWorkerMirroredStrategy a worker whose share of the split ends first
            # gets an empty last batch; oneDNN's convolutions mis-shape zero images (the
            # initial block's concat then fails), so an empty batch skips the model: its
            # terms are zeros either way.
            shape = tf.concat([tf.shape(images)[:3], [task.num_classes]], 0)
            logits = tf.cond(
                tf.shape(images)[0] > 0,
                lambda: tf.cast(model(images, training=False), tf.float32),
                lambda: tf.zeros(shape, tf.float32),
            )
            return task.eval_terms(logits, labels)

        @tf.function(autograph=False)  # plain Python control flow only: tracing 2x faster
        def step(batch):
            images, labels = batch
            return self._reduce(self.strategy.run(replica_step, args=(images, labels)))

        return step


def _is_multi_worker(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return sum(len(v) for v in spec.values()) > 1
