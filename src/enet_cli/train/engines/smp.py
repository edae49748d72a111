"""mp on SageMaker's model parallel library (SMP v1), inside its TF 2.6 training container.

SMP partitions whatever runs inside a `smp.DistributedModel`'s call() across `partitions`
processes (one per GPU) and pipelines `microbatches` slices of each batch through them.
Its contract, which this engine follows: `smp.init()`; forward and backward in a function
decorated `@smp.step` that the library runs once per microbatch; gradients returned from
it are averaged with `.accumulate()` and applied *outside* it, once; outputs are
`.merge()`d and losses `.reduce_mean()`d; checkpoints go through `smp.CheckpointManager`,
since each process holds only its partition's variables.

Because the step averages microbatches, each microbatch's loss is its share of the whole
batch's loss times M (the whole batch's non-void weight reaches the step unsplit), so the
mean over microbatches is exactly single mode's loss, and so are its gradients. Batch norm
normalises each microbatch by its own statistics, as in the tf pipeline engine.

The ENet inside the DistributedModel is the same Keras model every mode builds, and it is
what the checkpoints and the export hold: an mp checkpoint restores in single mode, in
evaluate and predict, and the other way round. Only rank 0 (mp_rank 0 of dp_rank 0) logs
and writes the model. The library is not on PyPI; it is imported here only, lazily.
"""

import importlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from enet_cli.backend import keras, tf
from enet_cli.config import RuntimeConfig
from enet_cli.errors import ConfigError, EnvironmentProblem
from enet_cli.model import build_enet
from enet_cli.model.layers import SpatialDropout
from enet_cli.sagemaker.contract import mp_parameters
from enet_cli.train.engines.base import Engine
from enet_cli.train.state import CheckpointBackend

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
    """smp.CheckpointManager, through its documented calls only: save() and restore()."""

    def __init__(self, smp):
        self.smp = smp

    def manager(self, checkpoint, directory: Path, keep: int):
        return self.smp.CheckpointManager(checkpoint, directory=str(directory), max_to_keep=keep)

    def save(self, manager, step) -> Optional[str]:
        return manager.save()  # numbered by save count: SMP's save() takes no number

    def restore(self, checkpoint, path: str) -> None:
        # restore() takes the directory's latest checkpoint; callers pass exactly that one.
        status = self.manager(checkpoint, Path(path).parent, 1).restore()
        if hasattr(status, "expect_partial"):
            status.expect_partial()


def distributed_model(smp, enet: keras.Model):
    """The ENet wrapped in an smp.DistributedModel (defined here: the base class comes from
    the library, which may only be imported inside its container)."""

    class DistributedENet(smp.DistributedModel):
        def __init__(self, model):
            super().__init__()
            self.enet = model

        def call(self, images, training=None):
            return self.enet(images, training=training)

    return DistributedENet(enet)


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

    def check_batch(self, global_batch: int) -> None:
        if global_batch % self.microbatches:
            raise ConfigError(
                f"--batch-size {global_batch} is not divisible by {self.microbatches} "
                f"microbatches; use a multiple of {self.microbatches}"
            )

    def checkpoint_dir(self, run_checkpoints: Path) -> Optional[Path]:
        return run_checkpoints  # every partition's process saves its own variables

    def build_model(self, cfg, image_size):
        model = build_enet(cfg, image_size)
        self.distributed = distributed_model(self.smp, model)
        return model

    def distribute_dataset(self, dataset_fn):
        return dataset_fn(None)  # every process of the model replica reads the same batch

    def make_train_step(self, model, optimizer, task, weight_decay):
        smp, distributed, m = self.smp, self.distributed, self.microbatches
        variables = model.trainable_variables
        scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)

        @smp.step(non_split_inputs=["total_weight"])
        def microbatch(images, labels, total_weight):
            logits = distributed(images, training=True)
            loss_sum, _ = task.loss_terms(logits, labels)
            loss = loss_sum * m / total_weight  # the mean over microbatches: the batch's loss
            target = optimizer.get_scaled_loss(loss) if scaled else loss
            grads = tf.gradients(target, variables)  # what optimizer.get_gradients computes
            if scaled:
                grads = optimizer.get_unscaled_gradients(grads)
            return grads, loss, logits

        @tf.function(autograph=False)
        def step(batch):
            images, labels = batch
            total_weight = tf.maximum(task.weight_sum(labels), 1e-12)
            grads, loss, logits = microbatch(images, labels, total_weight)
            grads = [g.accumulate() + weight_decay * v for g, v in zip(grads, variables)]
            optimizer.apply_gradients(zip(grads, variables))
            return {
                "loss": loss.reduce_mean(),
                "confusion": task.confusion(logits.merge(), labels),
            }

        return step

    def make_eval_step(self, model, task):
        smp, distributed, m = self.smp, self.distributed, self.microbatches

        @smp.step
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
