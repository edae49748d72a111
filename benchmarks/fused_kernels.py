"""The fused training kernels (model/fused.py) against TensorFlow's composed ops, in ENet's
real training step.

A paired, in-process A/B: the same model's train step traced three times, with no kernel,
with the PReLU kernel alone (what training ran before the others), and with every kernel
(PReLU, batch norm + activation, cross-entropy, confusion matrix), run in rotation so
machine load hits all alike; prints each one's median images/s and the median of its
per-round ratios to the composed one, with quartiles.
Run: python benchmarks/fused_kernels.py [--steps 30] [--size 360x480] [--batch 4] [--write]
(--write: also docs/results/fused_kernels.{json,md}, the table the results page shows)
"""

import argparse
import statistics
import time

from _common import machine, publish
from _probe import train_step

from enet_cli.core.backend import tf
from enet_cli.model import fused

VARIANTS = {  # name -> kernels turned off
    "composed": fused.KERNELS,
    "PReLU kernel only": tuple(k for k in fused.KERNELS if k != "prelu"),
    "all kernels": (),
}


def make_step(size, batch, off):
    tf.random.set_seed(0)
    _, run_step = train_step(size, batch)
    with fused.turned_off(*off) if off else fused.turned_off("none"):  # first calls trace
        for _ in range(2):
            run_step()
    return run_step


def rotated(variants: dict, rounds: int, per_call: float) -> dict:
    for fn in variants.values():  # one untimed round: first calls after tracing are slow
        fn()
    rates = {name: [] for name in variants}
    order = list(variants.items())
    for r in range(rounds):
        for name, fn in order[r % len(order) :] + order[: r % len(order)]:
            start = time.perf_counter()
            fn()
            rates[name].append(per_call / (time.perf_counter() - start))
    return rates


def report(rates: dict) -> list:
    base, rows = rates["composed"], []
    for name, values in rates.items():
        ratios = [a / b for a, b in zip(values, base)]
        q = statistics.quantiles(ratios, n=4)
        print(
            f"train step {name:18s} median {statistics.median(values):6.2f} images/s; "
            f"ratio vs composed {statistics.median(ratios):.3f} "
            f"(q1 {q[0]:.3f}, q3 {q[2]:.3f}, n={len(ratios)})"
        )
        rows.append(
            (
                name,
                f"{statistics.median(values):.2f}",
                f"{statistics.median(ratios):.2f}x ({q[0]:.2f}-{q[2]:.2f}, {len(ratios)} rounds)",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="write docs/results/fused_kernels.*")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    at_start = machine()
    print(at_start)
    if fused.prelu() is None:
        raise SystemExit(f"no fused kernels here: {fused.unavailable_reason() or 'turned off'}")
    steps = {name: make_step(size, args.batch, off) for name, off in VARIANTS.items()}
    rows = report(rotated(steps, args.steps, float(args.batch)))
    if args.write:
        command = (
            f"python benchmarks/fused_kernels.py --steps {args.steps} --size {args.size} "
            f"--batch {args.batch} --write"
        )
        header = ("training step", "images/s (median)", "ratio vs composed (quartiles)")
        note = (
            f"A paired in-process A/B: the same model's training step ({args.size}, batch "
            f"{args.batch}, float32) traced with TensorFlow's composed ops, with the PReLU "
            "kernel alone, and with every fused kernel (PReLU, batch norm + activation, "
            "cross-entropy, confusion matrix), run in rotation."
        )
        print(f"wrote {publish('fused_kernels', command, header, rows, note, at_start)}")


if __name__ == "__main__":
    main()
