"""ddp on SageMaker's distributed data parallel library (SMDDP), inside its TF 2.x containers.

SMDDP is Horovod-like: `smddprun` starts one process per GPU; each process pins its GPU by
local rank, computes gradients on its own shard, and `DistributedGradientTape` averages
them across ranks. Nothing here is a tf.distribute strategy, so the engine does the rest
itself: the loss is normalised by the global non-void pixel count (so N ranks at batch b
compute exactly the gradient of one process at batch N*b), model and optimizer variables
are broadcast from rank 0 once after the first step (the library's documented pattern),
and metrics are summed over ranks with `oob_allreduce` (the library's reduction for
non-gradient tensors). Only rank 0 writes checkpoints, logs and the model.

What `oob_allreduce` returns is documented both ways (smd_data_parallel_tensorflow.rst: it
"average[s] the tensors", and "internally uses NCCL AllReduce with ncclSum"; AWS's examples
call it to "average the loss across workers"). The engine does not bet on either: at start-up
it reduces a 1 from every rank and reads the answer, 1 (an average) or the rank count (a sum).

The library is not on PyPI; it is imported here only, lazily.
"""

import importlib
from typing import Dict

import numpy as np

from enet_cli.core.backend import tf
from enet_cli.core.errors import EnvironmentProblem
from enet_cli.model.ops import SpatialDropout
from enet_cli.train.engines.base import Engine
from enet_cli.train.step import objective

MODULE = "smdistributed.dataparallel.tensorflow"


def import_smddp():
    try:
        return importlib.import_module(MODULE)
    except ImportError as err:
        raise EnvironmentProblem(
            f"--engine smddp needs {MODULE} ({err}); it exists only in SageMaker's TensorFlow "
            f"2.x training containers (up to TF 2.11). Use --engine tf here, or enet launch "
            f"--mode ddp to run on SageMaker"
        ) from None


class SMDDPEngine(Engine):
    name = "smddp"

    def __init__(self, sdp=None):
        sdp = sdp or import_smddp()
        sdp.init()
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        if gpus:
            tf.config.set_visible_devices(gpus[sdp.local_rank()], "GPU")
        self.sdp = sdp
        self.num_replicas = int(sdp.size())
        self.rank = int(sdp.rank())
        self.is_chief = self.rank == 0
        self._to_sum = self._oob_to_sum()
        # Each rank draws its own dropout masks (ranks are separate processes).
        SpatialDropout.REPLICA_SEED = self.rank

    def describe(self) -> str:
        device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        return (
            f"smddp engine, {self.num_replicas} rank(s) on {device} (this is rank {self.rank}, "
            f"local rank {self.sdp.local_rank()})"
        )

    def distribute_dataset(self, dataset_fn):
        context = tf.distribute.InputContext(
            num_input_pipelines=self.num_replicas,
            input_pipeline_id=self.rank,
            num_replicas_in_sync=self.num_replicas,
        )
        return dataset_fn(context)

    def _oob_to_sum(self) -> float:
        """The factor that turns oob_allreduce's answer into the sum over ranks."""
        probe = float(self.sdp.oob_allreduce(tf.constant(1.0, tf.float64)))
        if abs(probe - 1.0) < 1e-9:
            return float(self.num_replicas)  # it averages
        if abs(probe - self.num_replicas) < 1e-9:
            return 1.0  # it sums
        raise EnvironmentProblem(
            f"smdistributed.dataparallel's oob_allreduce of 1 over {self.num_replicas} ranks "
            f"returned {probe}, neither their average nor their sum; this enet-cli does not "
            f"know this version of the library"
        )

    def _sum(self, value: tf.Tensor) -> tf.Tensor:
        """Sum over ranks with the library's non-gradient reduction (see the module doc)."""
        return self.sdp.oob_allreduce(value) * self._to_sum

    def make_train_step(self, model, update, task):
        sdp = self.sdp
        ranks = float(self.num_replicas)

        @tf.function(autograph=False)
        def local_step(images, labels):
            total_weight = self._sum(tf.cast(task.weight_sum(labels), tf.float64))
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = objective(task, logits, labels, total_weight)
                # The tape averages over ranks: ranks x each share is the sum of the shares.
                target = update.scale(loss * ranks)
            tape = sdp.DistributedGradientTape(tape)
            update.apply(update.unscale(tape.gradient(target, update.variables)))
            confusion = tf.cast(task.confusion(logits, labels), tf.float64)
            return {
                "loss": self._sum(tf.cast(loss, tf.float64)),
                "confusion": tf.round(self._sum(confusion)),
            }

        first = [True]

        def step(batch):
            out = local_step(*batch)
            if first[0]:  # the documented pattern: after the first step, from rank 0
                sdp.broadcast_variables(model.variables, root_rank=0)
                sdp.broadcast_variables(update.optimizer.variables(), root_rank=0)
                first[0] = False
            return out

        return step

    def make_eval_step(self, model, task):
        """Per rank and without collectives: ranks may hold different numbers of validation
        batches; the totals are summed once at the end (sum_over_workers)."""

        @tf.function(autograph=False)
        def step(batch):
            images, labels = batch
            return task.eval_terms(model(images, training=False), labels)

        return step

    def sum_over_workers(self, totals: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        keys = sorted(totals)
        flat = np.concatenate([np.asarray(totals[k], np.float64).ravel() for k in keys])
        summed = self._sum(tf.constant(flat)).numpy()
        out, offset = {}, 0
        for key in keys:
            value = np.asarray(totals[key])
            part = summed[offset : offset + value.size].reshape(value.shape)
            if np.issubdtype(value.dtype, np.integer):  # counts: exact after rounding
                part = np.rint(part).astype(value.dtype)
            out[key] = part
            offset += value.size
        return out

    def any_worker(self, flag: bool) -> bool:
        return float(self._sum(tf.constant(1.0 if flag else 0.0, tf.float64))) > 0
