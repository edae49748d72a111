"""How long `enet export --format tflite` takes to convert, and why it is as fast as it is.

TFLiteConverter.from_concrete_functions(functions, trackable) first saves `trackable` with
the functions as a SavedModel, then converts that. Given the Keras model, the save also
traces every layer's call for Keras reloading, which is most of the conversion; given a
module holding only the variables (what serving/tflite.py passes), it does not. This
converts the same ENet both ways, alternating, each in a fresh process (a process keeps
what it traced), and checks that the two files are byte for byte the same.
Run: python benchmarks/tflite_conversion.py [--rounds 3] [--size 360x480] [--write]
(--write: also docs/results/tflite_conversion.{json,md}, the table the results page shows)
"""

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time

import numpy as np
from _common import machine, publish

VARIANTS = ("variables module (enet)", "Keras model")


def child(variant: str, size) -> None:
    from enet_cli.core.backend import tf
    from enet_cli.core.config import ModelConfig
    from enet_cli.core.formats import Quantize
    from enet_cli.model import build_enet
    from enet_cli.serving import tflite

    model = build_enet(ModelConfig(num_classes=11), None)
    rng = np.random.default_rng(0)  # the same weights in every process, whatever TF seeds
    model.set_weights([rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()])
    started = time.perf_counter()
    if variant == VARIANTS[0]:
        data = tflite.convert(model, size, Quantize.none)
    else:  # the converter given the Keras model, as before
        tflite.prepare_for_export(model)
        function = tflite._fixed_size_function(model, size, tf.uint8).get_concrete_function()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        data = converter.convert()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "sha256": hashlib.sha256(data).hexdigest()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--write", action="store_true", help="update the docs' table")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.child:
        child(args.child, size)
        return
    at_start = machine()
    print(f"machine: {at_start}; ENet at {args.size}, float32, {args.rounds} rounds")
    seconds = {v: [] for v in VARIANTS}
    digests = {v: set() for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:  # A B A B: load drifts hit both alike
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--size", args.size],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            found = json.loads(out.stdout.strip().splitlines()[-1])
            seconds[variant].append(found["seconds"])
            digests[variant].add(found["sha256"])
    for variant in VARIANTS:
        times = ", ".join(f"{s:.1f}" for s in seconds[variant])
        print(f"{variant:26} median {statistics.median(seconds[variant]):6.1f} s  ({times})")
    ratio = statistics.median(seconds[VARIANTS[1]]) / statistics.median(seconds[VARIANTS[0]])
    same = len(digests[VARIANTS[0]] | digests[VARIANTS[1]]) == 1
    verdict = f"the Keras model takes {ratio:.1f}x as long; same .tflite bytes: {same}"
    print(verdict)
    if args.write:
        rows = [
            (variant, f"{statistics.median(seconds[variant]):.1f}",
             ", ".join(f"{s:.1f}" for s in seconds[variant]))
            for variant in VARIANTS
        ]  # fmt: skip
        command = f"python benchmarks/tflite_conversion.py --rounds {args.rounds} --write"
        header = ("converter given", "median seconds", "each run")
        table = publish("tflite_conversion", command, header, rows, verdict + ".", at_start)
        print(f"wrote {table}")


if __name__ == "__main__":
    main()
