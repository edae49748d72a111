"""The engine interface: everything the training loop needs that differs between modes.

Like Accelerate's `Accelerator`, an engine is an object the loop *calls*; the loop never
asks which mode it runs. An engine decides device placement and variable scope, how a
dataset is split between replicas, how a step runs and how its gradients and metrics are
reduced, and which process is the chief (the only one that logs, checkpoints and exports).

`StrategyEngine` implements the interface on a `tf.distribute` strategy; with the default
strategy it is the single-device engine, with (MultiWorker)MirroredStrategy the TF ddp one.
"""

import contextlib
from typing import Callable, Dict, Iterable

from enet_cli.backend import keras, tf
from enet_cli.train.task import SegmentationTask


class Engine:
    """Interface. `fit()` in loop.py uses only these members."""

    name = "engine"
    num_replicas = 1
    is_chief = True

    def describe(self) -> str:
        return f"{self.name} engine, {self.num_replicas} replica(s)"

    def scope(self):
        return contextlib.nullcontext()

    def distribute_dataset(self, dataset_fn: Callable) -> Iterable:
        """`dataset_fn(input_context)` -> this replica's (or worker's) tf.data.Dataset."""
        raise NotImplementedError

    def make_train_step(self, model, optimizer, task: SegmentationTask, weight_decay: float):
        """Returns step(batch) -> {"loss", "confusion"} reduced over replicas (host values)."""
        raise NotImplementedError

    def make_eval_step(self, model, task: SegmentationTask):
        raise NotImplementedError


class StrategyEngine(Engine):
    """An engine on a tf.distribute strategy (the default strategy = one device)."""

    def __init__(self, strategy=None, name: str = "single"):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.name = name
        self.num_replicas = self.strategy.num_replicas_in_sync

    def scope(self):
        return self.strategy.scope()

    def distribute_dataset(self, dataset_fn):
        if self.num_replicas == 1 and not _is_multi_worker(self.strategy):
            return dataset_fn(None)
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _reduce(self, values: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return {
            k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in values.items()
        }

    def make_train_step(self, model, optimizer, task, weight_decay):
        replicas = self.num_replicas
        variables = model.trainable_variables
        scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)

        def replica_step(images, labels):
            context = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss_sum, weight_sum = task.loss_terms(logits, labels)
                total_weight = context.all_reduce(tf.distribute.ReduceOp.SUM, weight_sum)
                loss = loss_sum / tf.maximum(total_weight, 1e-12)
                target = optimizer.get_scaled_loss(loss) if scaled else loss
            grads = tape.gradient(target, variables)
            if scaled:
                grads = optimizer.get_unscaled_gradients(grads)
            # Coupled L2 (PyTorch Adam's weight_decay): + wd * w, split across the replicas
            # whose gradients the optimizer sums.
            grads = [g + (weight_decay / replicas) * v for g, v in zip(grads, variables)]
            optimizer.apply_gradients(zip(grads, variables))
            return {"loss": loss, "confusion": task.confusion(logits, labels)}

        @tf.function(autograph=False)  # plain Python control flow only: tracing 2x faster
        def step(batch):
            images, labels = batch
            return self._reduce(self.strategy.run(replica_step, args=(images, labels)))

        return step

    def make_eval_step(self, model, task):
        def replica_step(images, labels):
            logits = model(images, training=False)
            loss_sum, weight_sum = task.loss_terms(logits, labels)
            return {
                "loss_sum": loss_sum,
                "weight_sum": weight_sum,
                "confusion": task.confusion(logits, labels),
            }

        @tf.function(autograph=False)  # plain Python control flow only: tracing 2x faster
        def step(batch):
            images, labels = batch
            return self._reduce(self.strategy.run(replica_step, args=(images, labels)))

        return step


def _is_multi_worker(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return sum(len(v) for v in spec.values()) > 1
