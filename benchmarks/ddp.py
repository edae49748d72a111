"""Data-parallel overhead: 1 process vs 2 local MultiWorkerMirroredStrategy workers at the
same global batch, through the real `enet train` command, and the bytes each step moves.

On a 2-core machine two workers share the cores one process already uses, so expect no
speed-up: the figure to read is the overhead (collectives over 127.0.0.1, duplicated input
pipelines, thread contention). Throughput is the loop's own `images_per_sec`, median of
epochs 2 and 3 (epoch 1 traces the graph) of the SegNet sample x4 (96 train images, 24
steps per epoch at batch 4).

Communication per step is computed from the model, not sniffed: the gradient all-reduce
carries every trainable float32 parameter; a ring all-reduce sends 2(N-1)/N of that per
worker. Synchronised batch norm adds three all-reduces per batch-norm layer (count, sum,
squared deviations; C floats each but the count), and the loss/metrics a few hundred bytes.
Run: python benchmarks/ddp.py [--size 360x480] [--batch 4] [--write]
(--write: also docs/results/ddp.{json,md}, the table the distributed guide shows)
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Timer, machine, publish, segnet_copies

from enet_cli.core.config import ModelConfig, PreprocessConfig, parse_size
from enet_cli.core.metrics import parse_metrics_line
from enet_cli.data.preprocess import preprocess


def train(data: Path, run: Path, batch: int, extra) -> tuple:
    command = [sys.executable, "-m", "enet_cli", "train", str(data), "--epochs", "3"]
    command += ["--batch-size", str(batch), "--run-dir", str(run), *extra]
    with Timer() as t:
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    epochs = [parse_metrics_line(line) for line in result.stdout.splitlines()]
    rates = [e["images_per_sec"] for e in epochs if e.get("images_per_sec")]
    return statistics.median(rates), t.seconds


def communication(size, sync_batchnorm: bool, workers: int) -> dict:
    from enet_cli.core.backend import keras
    from enet_cli.model import build_enet

    model = build_enet(ModelConfig(num_classes=11), size)
    gradient = sum(int(v.shape.num_elements()) for v in model.trainable_variables) * 4
    bn = [
        layer
        for block in model.layers
        for layer in getattr(block, "_flatten_layers", lambda: [])()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    bn_bytes = sum((2 * int(layer.gamma.shape[0]) + 1) * 4 for layer in bn)
    return {
        "gradient_bytes": gradient,
        "ring_bytes_sent_per_worker": gradient * 2 * (workers - 1) / workers,
        "sync_bn_bytes": bn_bytes if sync_batchnorm else 0,
        "batch_norm_layers": len(bn),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="write docs/results/ddp.*")
    args = parser.parse_args()
    size = parse_size(args.size)
    at_start = machine()
    print(f"machine: {at_start}")
    rows, lines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        preprocess(
            PreprocessConfig(
                input_dir=segnet_copies(work / "raw"),
                output_dir=data,
                image_size=size,
                workers=2,
            )
        )
        runs = {
            "single (1 process)": [],
            "ddp, 2 local workers": ["--mode", "ddp", "--local-workers", "2"],
            "ddp, 2 local workers, sync BN": [
                "--mode",
                "ddp",
                "--local-workers",
                "2",
                "--sync-batchnorm",
            ],
        }
        base = None
        for name, extra in runs.items():
            # --batch-size is per replica: the same global batch over 2 workers is half
            per_replica = args.batch // 2 if "--local-workers" in extra else args.batch
            rate, seconds = train(data, work / name.replace(" ", "_"), per_replica, extra)
            base = base or rate
            print(
                f"{name}: {rate:.2f} images/s at global batch {args.batch} "
                f"({rate / base:.2f}x single; whole command {seconds:.0f} s)"
            )
            rows.append((name, f"{rate:.2f}", f"{rate / base:.2f}x", f"{seconds:.0f}"))
    for sync in (False, True):
        volume = communication(size, sync, workers=2)
        lines.append(
            f"communication per step, 2 workers{', sync BN' if sync else ''}: gradient "
            f"all-reduce {volume['gradient_bytes'] / 1e6:.2f} MB "
            f"({volume['ring_bytes_sent_per_worker'] / 1e6:.2f} MB sent per worker, ring)"
            + (
                f" + batch norm {volume['sync_bn_bytes'] / 1e3:.1f} kB in "
                f"{3 * volume['batch_norm_layers']} all-reduces"
                if sync
                else ""
            )
        )
        print(lines[-1])
    if args.write:
        command = f"python benchmarks/ddp.py --size {args.size} --batch {args.batch} --write"
        header = ("run", "images/s", "vs single", "whole command (s)")
        note = (
            f"{args.size}, global batch {args.batch} (per replica half of it with 2 workers), "
            "the SegNet sample x4 (24 steps per epoch), images/s as the loop reports it, "
            "median of epochs 2 and 3 (epoch 1 traces). "
            + " ".join(f"{line[0].upper()}{line[1:]}." for line in lines)
        )
        print(f"wrote {publish('ddp', command, header, rows, note, at_start)}")


if __name__ == "__main__":
    main()
