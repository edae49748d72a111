"""Training throughput and inference latency of ENet on this machine, after warm-up.

Training: images/s at 360x480, batch 4 and 10, float32 and mixed precision, through the
engine's real train step (weighted loss, Adam, weight decay); median over many steps.
Inference: ms per image at batch 1 through a compiled forward pass.
For scale (not measured in the same run; benchmarks/versus_pytorch.py does that): the
project's reference figures for PyTorch-ENet (torch CPU, 2 threads, batch 4, 360x480) on
this machine type are about 4.2-4.5 training images/s and 48-67 ms per image at batch 1.
Run: python benchmarks/train_step.py [--steps N] [--write]
(--write: also docs/results/train_step.{json,md}, the table the training guide shows)
"""

import argparse
import statistics
import time

from _common import machine, publish

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
    parser.add_argument("--write", action="store_true", help="write docs/results/train_step.*")
    args = parser.parse_args()
    at_start = machine()
    print(f"machine: {at_start}; TensorFlow {tf.__version__}")
    rows = []
    for precision in ("float32", "mixed_bfloat16", "mixed_float16"):
        cells = []
        for batch in (4, 10):
            rates = train_rate(batch, precision, args.steps)
            print(
                f"train {precision:15s} batch {batch:2d}: images/s median "
                f"{statistics.median(rates):.2f} (min {min(rates):.2f}, max {max(rates):.2f}, "
                f"{len(rates)} steps)"
            )
            cells.append(f"{statistics.median(rates):.2f} ({min(rates):.2f}-{max(rates):.2f})")
        rows.append((precision, *cells))
    ms = inference_ms(20)
    inference = (
        f"Inference, float32, batch 1: {statistics.median(ms):.1f} ms per image (median of "
        f"{len(ms)}, range {min(ms):.1f}-{max(ms):.1f})."
    )
    print(inference)
    if args.write:
        command = f"python benchmarks/train_step.py --steps {args.steps} --write"
        header = (
            "precision",
            f"batch 4, images/s (median of {args.steps} steps, range)",
            f"batch 10, images/s (median of {args.steps} steps, range)",
        )
        note = (
            f"360x480, the engine's real train step after tracing and a warm step. {inference}"
            " Mixed precision is faster than float32 only on a CPU with fast 16-bit arithmetic"
            " (bfloat16: AVX512_BF16 or AMX; float16: AMX-FP16); on others it is slower."
        )
        print(f"wrote {publish('train_step', command, header, rows, note, at_start)}")


if __name__ == "__main__":
    main()
