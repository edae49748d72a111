"""Start-up of a training run: what the first train step costs before it trains anything.

Every `enet train` (and every test that runs one) pays this once per process: building
ENet, tracing the train step (Python builds the graph of the forward pass, its gradient and
Adam's update of each of ENet's ~290 variables) and the first call (Grappler optimises that
graph). The engines make the optimizer's slots before the step is traced
(Engine.create_optimizer_slots); made by the step itself, on its first call, they make
tf.function trace it twice. And the optimizer is Keras' OptimizerV2 Adam (one fused op per
variable, train/optim.py), not the newer Keras Adam (about fifteen ops per variable, where
Keras >= 2.11 has it). This compares the three, each in fresh processes (a process keeps
what it traced), in turn, and prints the median seconds of each phase.
Run: python benchmarks/startup.py [--rounds 3] [--size 96x128] [--batch 4]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

from _common import machine

VARIANTS = ("as enet trains", "slots made by the step", "newer Keras Adam")


def child(variant: str, size, batch: int) -> None:
    started = time.perf_counter()
    from enet_cli.core.backend import keras, tf
    from enet_cli.core.config import ModelConfig, TrainConfig
    from enet_cli.model import build_enet
    from enet_cli.train.engines.single import SingleEngine
    from enet_cli.train.optim import build_optimizer, build_update
    from enet_cli.train.task import SegmentationTask

    times = {"import": time.perf_counter() - started}

    def phase(name, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - start
        return out

    model = phase("build ENet", lambda: build_enet(ModelConfig(num_classes=11), size))
    engine = SingleEngine()
    optimizer = build_optimizer(TrainConfig())
    if variant == VARIANTS[2]:
        optimizer = keras.optimizers.Adam(TrainConfig().learning_rate)
    if variant != VARIANTS[1]:
        phase("make slots", lambda: engine.create_optimizer_slots(optimizer, model))
    update = build_update(TrainConfig(), model.trainable_variables, optimizer)
    step = engine.make_train_step(model, update, SegmentationTask(11, 11, tuple([1.0] * 11)))
    images = tf.random.uniform((batch, *size, 3), seed=1)
    labels = tf.random.uniform((batch, *size), maxval=12, dtype=tf.int32, seed=2)
    phase("trace the step", lambda: step.get_concrete_function((images, labels)))
    phase("first call", lambda: step((images, labels))["loss"].numpy())
    phase("second call", lambda: step((images, labels))["loss"].numpy())
    print(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="96x128")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.child:
        child(args.child, size, args.batch)
        return
    print(f"machine: {machine()}; {args.size}, batch {args.batch}, {args.rounds} rounds")
    results = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--size", args.size,
                 "--batch", str(args.batch)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'median seconds':<24}" + "".join(f"{v:>24}" for v in VARIANTS))
    names = {name: None for v in VARIANTS for name in results[v][0]}
    for name in names:
        row = [statistics.median(t.get(name, 0.0) for t in results[v]) for v in VARIANTS]
        print(f"{name:<24}" + "".join(f"{x:>24.2f}" for x in row))
    totals = {
        v: statistics.median(sum(t.values()) - t["import"] for t in results[v]) for v in VARIANTS
    }
    total = "all but the import"
    print(f"{total:<24}" + "".join(f"{totals[v]:>24.2f}" for v in VARIANTS))
    for variant in VARIANTS[1:]:
        ratio = totals[variant] / totals[VARIANTS[0]]
        print(f"{variant}: {ratio:.2f}x as long as enet's start-up")


if __name__ == "__main__":
    main()
