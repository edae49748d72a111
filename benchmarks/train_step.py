"""Training throughput and inference latency of ENet on this machine, after warm-up.

Training: images/s at 360x480, batch 4 and 10, float32 and mixed precision, through the
engine's real train step (weighted loss, Adam, weight decay); median over many steps.
Inference: ms per image at batch 1 through a compiled forward pass.
For scale (not measured in the same run; benchmarks/versus_pytorch.py does that): the
project's reference figures for PyTorch-ENet (torch CPU, 2 threads, batch 4, 360x480) on
this machine type are about 4.2-4.5 training images/s and 48-67 ms per image at batch 1.
Run: python benchmarks/train_step.py [--steps N] [--write]
(--write: also docs/results/train_step.{json,md}, the table the training guide shows)
     python benchmarks/train_step.py --profile [--steps N]
(--profile: instead, where a float32 batch-4 step's CPU time goes, by TensorFlow op type,
from TensorFlow's profiler over N steps; the ops' CPU time on all threads against the
step's wall time shows how busy the cores are)
"""

import argparse
import collections
import glob
import os
import statistics
import tempfile
import time

from _common import machine, publish

from enet_cli.core.backend import keras, tf
from enet_cli.core.config import ModelConfig, Precision, TrainConfig
from enet_cli.model import build_enet
from enet_cli.train.engines.single import SingleEngine
from enet_cli.train.optim import build_update
from enet_cli.train.task import SegmentationTask

SIZE = (360, 480)


def _train_step(batch: int, precision: str):
    """(step, batch) warmed up: traced, then one step run."""
    model = build_enet(ModelConfig(num_classes=11), SIZE)
    task = SegmentationTask(11, 11, tuple([1.0] * 11))
    cfg = TrainConfig(precision=Precision(precision))
    step = SingleEngine().make_train_step(model, build_update(cfg, model.trainable_variables), task)
    images = tf.random.uniform((batch, *SIZE, 3))
    labels = tf.random.uniform((batch, *SIZE), maxval=12, dtype=tf.int32)
    for _ in range(2):  # trace, then one warm step
        step((images, labels))["loss"].numpy()
    return step, (images, labels)


def train_rate(batch: int, precision: str, steps: int) -> list:
    keras.mixed_precision.set_global_policy(precision)
    try:
        step, (images, labels) = _train_step(batch, precision)
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


def profile(steps: int) -> None:
    """Print each op type's CPU time per float32 batch-4 step, largest first."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # TensorFlow >= 2.13's home

    step, batch = _train_step(4, "float32")
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            step(batch)["loss"].numpy()
        tf.profiler.experimental.stop()
        wall = (time.perf_counter() - start) / steps
        space = xplane_pb2.XSpace()
        (path,) = glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb")
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    per_type, calls = collections.Counter(), collections.Counter()
    for plane in (p for p in space.planes if p.name == "/host:CPU"):
        for line in (x for x in plane.lines if x.name.startswith("tf_Compute")):
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name.replace("::", ""):  # "op name:op type", not executor spans
                    per_type[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9 / steps
                    calls[name.rsplit(":", 1)[1]] += 1
    total = sum(per_type.values())
    cores = os.cpu_count() or 1
    print(
        f"float32, batch 4, {steps} profiled steps: wall {1000 * wall:.0f} ms per step "
        f"(profiler on); ops' CPU time {total:.0f} ms per step on all threads, "
        f"{100 * total / (1000 * wall * cores):.0f}% of {cores} cores"
    )
    print(f"{'op type':34s} {'ms/step':>8s} {'share':>6s} {'calls/step':>10s}")
    for kind, ms in per_type.most_common(25):
        print(f"{kind:34s} {ms:8.1f} {100 * ms / total:5.1f}% {calls[kind] // steps:10d}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="write docs/results/train_step.*")
    parser.add_argument("--profile", action="store_true", help="op types' share of a step")
    args = parser.parse_args()
    at_start = machine()
    print(f"machine: {at_start}; TensorFlow {tf.__version__}")
    if args.profile:
        profile(args.steps)
        return
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
