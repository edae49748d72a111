"""What the TF pipeline (--mode mp) buys on this machine: memory per device, and its cost.

The CPU is split into 2 logical devices (as `enet train --mode mp` does without GPUs), and
TensorFlow reports each device's peak allocation (`tf.config.experimental.get_memory_info`).
For each input size, one training step at batch 1 runs on one device (single) and as a
2-stage pipeline; the largest size whose most loaded device stays under --cap-mb is what a
device of that memory could train. Then the throughput of both at 360x480, batch 4, with 1
and 2 microbatches.
Run: python benchmarks/mp.py [--cap-mb 1024] [--steps 5]
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

SIZES = [(360, 480), (480, 640), (720, 960), (960, 1280), (1080, 1440)]
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


def peak_mb(engine, size) -> list:
    devices = ["CPU:0", "CPU:1"]
    for d in devices:
        tf.config.experimental.reset_memory_stats(d)
    step, batch = _step(engine, size, 1)
    with tf.device("/CPU:0"):
        step(batch)["loss"].numpy()
    return [tf.config.experimental.get_memory_info(d)["peak"] / 2**20 for d in devices]


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
    parser.add_argument("--cap-mb", type=float, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}; TensorFlow {tf.__version__}")
    largest = {"single": None, "mp 2 stages": None}
    for size in SIZES:
        single = peak_mb(None, size)
        pipeline = peak_mb(PIPELINE, size)
        print(
            f"{size[0]}x{size[1]} batch 1: single peak {single[0]:.0f} MB on one device; "
            f"mp peaks {pipeline[0]:.0f} / {pipeline[1]:.0f} MB "
            f"(most loaded device {max(pipeline) / single[0]:.2f}x single)"
        )
        if single[0] <= args.cap_mb:
            largest["single"] = size
        if max(pipeline) <= args.cap_mb:
            largest["mp 2 stages"] = size
    for name, size in largest.items():
        shown = f"{size[0]}x{size[1]}" if size else "none of the sizes tried"
        print(f"largest size at batch 1 under {args.cap_mb:.0f} MB per device, {name}: {shown}")
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
