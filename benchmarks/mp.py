"""The throughput cost of the TF pipeline (--mode mp) on this machine.

The CPU is split into 2 logical devices (as `enet train --mode mp` does without GPUs); one
training step at 360x480, batch 4, runs on one device (single) and as a 2-stage pipeline
with 1 and 2 microbatches; medians after warm-up.

Not here yet: memory per stage. Logical CPU devices share one allocator, so
`tf.config.experimental.get_memory_info` reports the same peak for both; a per-stage figure
needs each stage run alone (to do with the SMP engine).
Run: python benchmarks/mp.py [--steps 5]
"""

import argparse
import statistics
import time

from _common import machine

from enet_cli.config import RuntimeConfig
from enet_cli.train.engines.pipeline import PipelineEngine

# Logical devices must exist before TensorFlow starts: make them first.
PIPELINE = PipelineEngine(RuntimeConfig(mode="mp", partitions=2, microbatches=1))

from enet_cli.backend import tf  # noqa: E402
from enet_cli.config import ModelConfig, TrainConfig  # noqa: E402
from enet_cli.model import build_enet  # noqa: E402
from enet_cli.train.engines.single import SingleEngine  # noqa: E402
from enet_cli.train.loop import build_lr_schedule, build_optimizer  # noqa: E402
from enet_cli.train.task import SegmentationTask  # noqa: E402

TASK = SegmentationTask(11, 11, tuple([1.0] * 11))


def _step(engine, size, batch):
    cfg = ModelConfig(num_classes=11)
    optimizer = build_optimizer(TrainConfig(), build_lr_schedule(TrainConfig(), 10, 10))
    if engine is None:
        with tf.device("/CPU:0"):
            model = build_enet(cfg, size)
        step = SingleEngine().make_train_step(model, optimizer, TASK, 2e-4)
    else:
        model = engine.build_model(cfg, size)
        step = engine.make_train_step(model, optimizer, TASK, 2e-4)
    images = tf.random.uniform((batch, *size, 3))
    labels = tf.random.uniform((batch, *size), maxval=11, dtype=tf.int32)
    return step, (images, labels)


def rate(engine, steps: int) -> float:
    step, batch = _step(engine, (360, 480), 4)
    with tf.device("/CPU:0"):
        for _ in range(2):
            step(batch)["loss"].numpy()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step(batch)["loss"].numpy()
            times.append(time.perf_counter() - start)
    return 4 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}; TensorFlow {tf.__version__}")
    base = rate(None, args.steps)
    print(f"360x480 batch 4, single: {base:.2f} images/s")
    for microbatches in (1, 2):
        PIPELINE.microbatches = microbatches
        r = rate(PIPELINE, args.steps)
        print(
            f"360x480 batch 4, mp 2 stages x {microbatches} microbatch(es): {r:.2f} images/s "
            f"({r / base:.2f}x single)"
        )


if __name__ == "__main__":
    main()
