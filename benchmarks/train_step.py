"""Training throughput and inference latency of ENet on this machine, after warm-up.

Training: images/s at 360x480, batch 4 and 10, float32 and mixed precision, through the
engine's real train step (weighted loss, Adam, weight decay); median over many steps.
Inference: ms per image at batch 1 through a compiled forward pass.
DESIGN.md's reference (PyTorch-ENet, torch CPU, 2 threads, batch 4, 360x480): about
4.2-4.5 training images/s and 48-67 ms per image at batch 1.
Run: python benchmarks/train_step.py [--steps N]
"""

import argparse
import statistics
import time

from _common import machine

from enet_cli.core.backend import keras, tf
from enet_cli.core.config import ModelConfig, Precision, TrainConfig
from enet_cli.model import build_enet
from enet_cli.train.engines.single import SingleEngine
from enet_cli.train.optim import build_update
from enet_cli.train.task import SegmentationTask

SIZE = (360, 480)


def train_rate(batch: int, precision: str, steps: int) -> list:
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_enet(ModelConfig(num_classes=11), SIZE)
        task = SegmentationTask(11, 11, tuple([1.0] * 11))
        cfg = TrainConfig(precision=Precision(precision))
        step = SingleEngine().make_train_step(
            model, build_update(cfg, model.trainable_variables), task
        )
        images = tf.random.uniform((batch, *SIZE, 3))
        labels = tf.random.uniform((batch, *SIZE), maxval=12, dtype=tf.int32)
        for _ in range(2):  # trace, then one warm step
            step((images, labels))["loss"].numpy()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step((images, labels))["loss"].numpy()
            times.append(time.perf_counter() - start)
        return [batch / t for t in times]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def inference_ms(runs: int) -> list:
    model = build_enet(ModelConfig(num_classes=11), SIZE)
    forward = tf.function(lambda x: model(x, training=False))
    image = tf.random.uniform((1, *SIZE, 3))
    for _ in range(3):
        forward(image).numpy()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        forward(image).numpy()
        out.append(1000 * (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {machine()}; TensorFlow {tf.__version__}")
    for precision in ("float32", "mixed_bfloat16", "mixed_float16"):
        for batch in (4, 10):
            rates = train_rate(batch, precision, args.steps)
            print(
                f"train {precision:15s} batch {batch:2d}: images/s median "
                f"{statistics.median(rates):.2f} (min {min(rates):.2f}, max {max(rates):.2f}, "
                f"{len(rates)} steps)"
            )
    ms = inference_ms(20)
    print(
        f"inference float32 batch 1: ms/image median {statistics.median(ms):.1f} "
        f"(min {min(ms):.1f}, max {max(ms):.1f}, {len(ms)} runs)"
    )


if __name__ == "__main__":
    main()
