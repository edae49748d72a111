"""The fused PReLU kernel against Keras' composed PReLU, in ENet's real training step.

A paired, in-process A/B: two train steps of the same model, one traced with the kernel and
one without (`fused.turned_off()`), run alternately so machine load hits both alike; prints
the median images/s of each and the median of the per-pair ratios with its quartiles. Also
times the activation alone (forward + backward on a stage-1-sized tensor).
Run: python benchmarks/fused_prelu.py [--steps 30] [--size 360x480] [--batch 4] [--write]
(--write: also docs/results/fused_prelu.{json,md}, the table the results page shows)
"""

import argparse
import contextlib
import statistics
import time

from _common import machine, publish
from _probe import train_step

from enet_cli.core.backend import tf
from enet_cli.model import fused
from enet_cli.model.ops import BlockPReLU


def make_step(size, batch, use_kernel: bool):
    tf.random.set_seed(0)
    _, run_step = train_step(size, batch)
    with contextlib.nullcontext() if use_kernel else fused.turned_off():  # the first calls trace
        for _ in range(2):
            run_step()
    return run_step


def make_activation(use_kernel: bool):
    layer = BlockPReLU(shared_axes=[1, 2, 3])
    x = tf.random.normal((4, 90, 120, 64), seed=3)
    layer.build(x.shape)

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, [x, layer.alpha])

    with contextlib.nullcontext() if use_kernel else fused.turned_off():
        run()
    return lambda: [g.numpy() for g in run()]


def paired(variants: dict, rounds: int, per_call: float) -> dict:
    for fn in variants.values():  # one untimed round: first calls after tracing are slow
        fn()
    rates = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            rates[name].append(per_call / (time.perf_counter() - start))
    return rates


def report(label: str, unit: str, rates: dict) -> list:
    """Prints each variant's median and its paired ratio to the composed one; returns them
    as table rows."""
    base, rows = rates["composed"], []
    for name, values in rates.items():
        ratios = [a / b for a, b in zip(values, base)]
        q = statistics.quantiles(ratios, n=4)
        print(
            f"{label} {name:9s} median {statistics.median(values):8.2f} {unit}; "
            f"paired ratio vs composed {statistics.median(ratios):.3f} "
            f"(q1 {q[0]:.3f}, q3 {q[2]:.3f}, n={len(ratios)})"
        )
        rows.append(
            (
                f"{label.strip()}, {name}",
                f"{statistics.median(values):.2f} {unit}",
                f"{statistics.median(ratios):.2f}x ({q[0]:.2f}-{q[2]:.2f}, {len(ratios)} pairs)",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="write docs/results/fused_prelu.*")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    at_start = machine()
    print(at_start)
    if fused.prelu() is None:
        raise SystemExit(f"no fused kernel here: {fused.unavailable_reason() or 'turned off'}")
    layer = {name: make_activation(name == "fused") for name in ("composed", "fused")}
    rows = report("PReLU fwd+bwd", "calls/s", paired(layer, 4 * args.steps, 1.0))
    steps = {name: make_step(size, args.batch, name == "fused") for name in ("composed", "fused")}
    rows += report("train step   ", "images/s", paired(steps, args.steps, float(args.batch)))
    if args.write:
        command = (
            f"python benchmarks/fused_prelu.py --steps {args.steps} --size {args.size} "
            f"--batch {args.batch} --write"
        )
        header = ("what, variant", "median", "paired ratio vs composed (quartiles)")
        note = (
            f"A paired in-process A/B: the same model's training step ({args.size}, batch "
            f"{args.batch}, float32) traced with the fused kernel and with Keras' composed "
            "PReLU, run alternately; the activation alone is forward and backward on a "
            "(4, 90, 120, 64) tensor."
        )
        print(f"wrote {publish('fused_prelu', command, header, rows, note, at_start)}")


if __name__ == "__main__":
    main()
