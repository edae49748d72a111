"""One train step of engines, without and then with gradient clipping, written to an .npz.

Run as a script in a fresh process (`python step_probe.py OUT.npz ENGINE...`): the logical
CPU devices the mirrored and pipeline engines need must be made before TensorFlow starts. The
optimizer is plain SGD at learning rate 1, so a variable's change is minus the gradient
the update applied (Adam's first step would hide a scale: it moves by lr * sign).
test_step.py checks the two updates of each engine.
"""

import os
import sys

import numpy as np

from enet_cli.core.backend import keras, tf

SIZE = (24, 32)
CLASSES = 11


def make_engine(name: str):
    from enet_cli.core.config import RuntimeConfig
    from enet_cli.train.engines.base import StrategyEngine

    if name == "single":
        from enet_cli.train.engines.single import SingleEngine

        return SingleEngine()
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        return StrategyEngine(strategy, name="tf")
    if name == "pipeline":
        from enet_cli.train.engines.pipeline import PipelineEngine

        return PipelineEngine(RuntimeConfig(mode="mp", partitions=2, microbatches=2))
    if name == "smp":
        from enet_cli.train.engines.smp import SMPEngine

        return SMPEngine(RuntimeConfig(mode="mp", engine="smp", partitions=2, microbatches=2))
    if name == "smddp":
        from enet_cli.train.engines.smddp import SMDDPEngine

        return SMDDPEngine()
    raise SystemExit(f"unknown engine {name}")


def two_steps(engine):
    """The applied gradients (w0 - w1) of one step from the same weights and batch, first
    unclipped, then clipped to a quarter of that gradient's global norm: one traced step,
    the clip norm a variable, the weights put back in between."""
    from enet_cli.core.config import ModelConfig
    from enet_cli.train.optim import seed_everything
    from enet_cli.train.step import Update
    from enet_cli.train.task import SegmentationTask

    images = tf.random.stateless_uniform((4, *SIZE, 3), seed=(1, 2))
    labels = tf.random.stateless_uniform(
        (4, *SIZE), seed=(3, 4), maxval=CLASSES + 1, dtype=tf.int32
    )  # CLASSES is void
    task = SegmentationTask(CLASSES, CLASSES, tuple(1.0 + 0.1 * k for k in range(CLASSES)))
    per_replica = 4 // engine.num_replicas

    def dataset_fn(context):
        data = tf.data.Dataset.from_tensor_slices((images, labels))
        if context is not None:
            data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
        return data.batch(per_replica)

    seed_everything(7)
    depth = os.environ.get("STEP_PROBE_BOTTLENECKS")  # the test's shallower ENet, if given
    cfg = ModelConfig(num_classes=CLASSES, dropout=0, stage1_dropout=0)
    if depth:
        cfg.bottlenecks = depth
    with engine.scope():
        model = engine.build_model(cfg, SIZE)
        optimizer = keras.optimizers.SGD(learning_rate=1.0)
    clip_norm = tf.Variable(1e30, dtype=tf.float32, trainable=False)
    update = Update(optimizer, model.trainable_variables, 0.0, clip_norm)
    step = engine.make_train_step(model, update, task)
    batch = next(iter(engine.distribute_dataset(dataset_fn)))
    start = [v.numpy() for v in model.variables]
    trainable = model.trainable_variables
    before = [v.numpy() for v in trainable]
    step(batch)
    plain = [b - v.numpy() for b, v in zip(before, trainable)]
    norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in plain)))
    for variable, value in zip(model.variables, start):
        variable.assign(value)
    clip_norm.assign(norm / 4)
    step(batch)
    clipped = [b - v.numpy() for b, v in zip(before, trainable)]
    return plain, clipped, norm / 4


def main() -> None:
    out = sys.argv[1]
    names = sys.argv[2:]
    if {"mirrored", "pipeline"} & set(names):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(2)]
        )
    arrays = {}
    for name in names:
        plain, clipped, clip_norm = two_steps(make_engine(name))
        arrays[f"{name}/clip_norm"] = np.float64(clip_norm)
        arrays.update({f"{name}/plain_{i}": g for i, g in enumerate(plain)})
        arrays.update({f"{name}/clipped_{i}": g for i, g in enumerate(clipped)})
    np.savez(out, **arrays)


if __name__ == "__main__":
    main()
