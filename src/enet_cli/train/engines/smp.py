"""mp on SageMaker's model parallel library (SMP v1), inside its TF 2.6 training container.

SMP partitions whatever runs inside a `smp.DistributedModel`'s call() across `partitions`
processes (one per GPU) and pipelines `microbatches` slices of each batch through them.
Its contract, which this engine follows: `smp.init()`; forward and backward in a function
decorated `@smp.step` that the library runs once per microbatch; gradients returned from
it are averaged with `.accumulate()` and applied *outside* it, once; outputs are
`.merge()`d and losses `.reduce_mean()`d; checkpoints go through `smp.CheckpointManager`,
since each process holds only its partition's variables: every partition saves its own part
(checkpoints/smp/mp_rank_<k>), and the SavedModel is exported from all parts merged.

Because the step averages microbatches, each microbatch's loss is its share of the whole
batch's loss times M (the whole batch's non-void weight reaches the step unsplit), so the
mean over microbatches is exactly single mode's loss, and so are its gradients. Batch norm
normalises each microbatch by its own statistics, as in the tf pipeline engine.

The ENet inside the DistributedModel is the same Keras model every mode builds, and it is
what the checkpoints and the export hold: the partitions' checkpoints merged restore in
single mode, in evaluate, predict and export, and a whole checkpoint resumes here. Only
rank 0 (mp_rank 0 of dp_rank 0) logs and writes the model. The library is not on PyPI; it
is imported here only, lazily.
"""

import importlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from enet_cli.artifacts.checkpoints import SMP, SMP_BEST, FoundCheckpoint, find_checkpoint
from enet_cli.container.contract import mp_parameters
from enet_cli.core.backend import tf
from enet_cli.core.config import RuntimeConfig
from enet_cli.core.errors import ConfigError, EnvironmentProblem
from enet_cli.model import build_enet
from enet_cli.model.ops import SpatialDropout
from enet_cli.train.engines.base import Engine
from enet_cli.train.state import CheckpointBackend, create_slots
from enet_cli.train.step import objective

MODULE = "smdistributed.modelparallel.tensorflow"


def import_smp():
    try:
        return importlib.import_module(MODULE)
    except ImportError as err:
        raise EnvironmentProblem(
            f"--engine smp needs {MODULE} ({err}); it exists only in SageMaker's TensorFlow "
            f"2.6 training container. Use --engine tf here (a pipeline across this machine's "
            f"devices), or enet launch --mode mp to run on SageMaker"
        ) from None


def smp_parameters(runtime: RuntimeConfig) -> Tuple[Dict[str, Any], bool]:
    """(what smp.init() gets, whether SageMaker gave it): the job's mp_parameters inside
    SageMaker (enet launch sets them from the same options), else --partitions,
    --microbatches and --pipeline."""
    job = mp_parameters()
    if job is not None:
        return job, True
    options = {
        "partitions": runtime.partitions,
        "microbatches": runtime.microbatches,
        "pipeline": runtime.pipeline.value,
    }
    return options, False


class SMPCheckpoints(CheckpointBackend):
    """smp.CheckpointManager, through its documented calls only: save() and restore().

    The library writes each partition's variables into `<directory>/mp_rank_<k>`, numbers
    checkpoints by save count, and defers restore() to the first smp.step (after it has
    partitioned the model); its restore walks every subdirectory of `<directory>`, so the
    best checkpoints live beside the recent ones (checkpoints/smp-best), never inside them.
    The loop's position is read from the files meanwhile (TrainState._load_position).
    """

    def __init__(self, smp):
        self.smp = smp

    def directories(self, write_directory: Path) -> Tuple[Path, Path]:
        return write_directory / SMP, write_directory / SMP_BEST

    def manager(self, checkpoint, directory: Path, keep: int):
        return self.smp.CheckpointManager(checkpoint, directory=str(directory), max_to_keep=keep)

    def save(self, manager, step) -> Optional[str]:
        path = manager.save()
        # Every partition's part is on disk before anyone reads them (the export merges
        # the best one's parts; SMP's save_model waits the same way).
        self.smp.barrier()
        return path

    def find(self, directory: Path) -> Optional[FoundCheckpoint]:
        return find_checkpoint(directory, partitioned_first=True)

    def restore(self, checkpoint, found: FoundCheckpoint, manager) -> None:
        if found.partitioned:
            create_slots(checkpoint.optimizer, checkpoint.model.trainable_variables)
            manager.restore()  # applied by the library during the first step
        else:  # a whole checkpoint (another mode's, or an mp run of enet-cli before SMP's layout)
            super().restore(checkpoint, found, manager)


def distributed_model(smp, cfg, image_size):
    """An smp.DistributedModel holding an ENet (defined here: the base class comes from the
    library, which may only be imported inside its container).

    The ENet is built inside __init__, from the arguments: SMP makes a second copy of the
    model for partitioning by calling the subclass's constructor again with the same
    arguments (v2/model.py, _duplicate_model), and refuses layers the copies share."""

    class DistributedENet(smp.DistributedModel):
        def __init__(self, cfg, image_size):
            super().__init__()
            self.enet = build_enet(cfg, image_size)

        def call(self, images, training=None):
            return self.enet(images, training=training)

    return DistributedENet(cfg, image_size)


class SMPEngine(Engine):
    name = "smp"

    def __init__(self, runtime: RuntimeConfig, smp=None):
        smp = smp or import_smp()
        params, self.from_sagemaker = smp_parameters(runtime)
        smp.init(params)
        self.smp = smp
        self.partitions = int(params["partitions"])
        self.microbatches = int(params.get("microbatches", 1))
        self.schedule = str(params.get("pipeline", "interleaved"))
        if smp.dp_size() > 1:
            raise ConfigError(
                f"SMP runs {smp.size()} processes for {self.partitions} partitions: data "
                f"parallelism inside SMP is not supported; start one process per partition "
                f"(processes_per_host = partitions), or use --mode ddp"
            )
        self.rank = int(smp.rank())
        self.is_chief = self.rank == 0  # mp_rank 0 of dp_rank 0
        self.checkpoints = SMPCheckpoints(smp)
        SpatialDropout.REPLICA_SEED = int(smp.dp_rank())
        self.distributed = None

    def describe(self) -> str:
        source = "SageMaker's mp_parameters" if self.from_sagemaker else "options"
        return (
            f"smp engine, {self.partitions} partitions, {self.microbatches} microbatch(es) per "
            f"batch, {self.schedule} pipeline (from {source}; this is rank {self.rank}, "
            f"mp_rank {self.smp.mp_rank()})"
        )

    def checkpoint_dir(self, run_checkpoints: Path) -> Optional[Path]:
        return run_checkpoints  # every partition's process saves its own variables

    def create_optimizer_slots(self, optimizer, model) -> None:
        """Not before the first step: SMP partitions the model then, and each process must
        hold the slots of its own partition's variables only."""

    def build_model(self, cfg, image_size):
        self.distributed = distributed_model(self.smp, cfg, image_size)
        return self.distributed.enet

    def distribute_dataset(self, dataset_fn):
        return dataset_fn(None)  # every process of the model replica reads the same batch

    def make_train_step(self, model, update, task):
        smp, distributed, m = self.smp, self.distributed, self.microbatches

        # smp.step takes tf.function's arguments (smd_model_parallel_common_api.rst): plain
        # Python control flow only, as every engine's step, so no autograph conversion.
        @smp.step(non_split_inputs=["total_weight"], autograph=False)
        def microbatch(images, labels, total_weight):
            logits = distributed(images, training=True)
            # The library averages microbatches: m x each share is the sum of the shares.
            loss = objective(task, logits, labels, total_weight) * m
            # tf.gradients: what optimizer.get_gradients computes, as SMP's examples do
            grads = update.unscale(tf.gradients(update.scale(loss), update.variables))
            return grads, loss, logits

        @tf.function(autograph=False)
        def step(batch):
            images, labels = batch
            grads, loss, logits = microbatch(images, labels, task.weight_sum(labels))
            update.apply([g.accumulate() for g in grads])
            return {
                "loss": loss.reduce_mean(),
                "confusion": task.confusion(logits.merge(), labels),
            }

        return step

    def make_eval_step(self, model, task):
        smp, distributed, m = self.smp, self.distributed, self.microbatches

        @smp.step(autograph=False)
        def predict(images):
            return distributed(images, training=False)

        @tf.function(autograph=False)
        def step(batch):
            images, labels = batch
            # The last batch of a split may not divide into microbatches: pad it with void
            # pixels, which count in neither the loss nor the confusion matrix.
            pad = (m - tf.shape(images)[0] % m) % m
            images = tf.pad(images, [[0, pad], [0, 0], [0, 0], [0, 0]])
            labels = tf.pad(labels, [[0, pad], [0, 0], [0, 0]], constant_values=task.ignore_index)
            return task.eval_terms(predict(images).merge(), labels)

        return step
