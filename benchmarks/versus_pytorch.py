"""Our ENet against davidtvs/PyTorch-ENet, in one run, alternating so load hits both alike.

Each round measures, one after the other: the PyTorch port (benchmarks/pytorch_port.py, in
a Python that has torch), optionally an older enet_cli checkout ("before"), the current
one, and `enet benchmark --what infer` for the exported variants. Each --before-src (may be
repeated) is labelled by its checkout's commit. Figures are medians over
rounds; ratios are against the port measured in the same rounds (issue 8's targets: train
images/s >= 1.5x the port's, exported inference latency <= 0.5x the port's).

Run: python benchmarks/versus_pytorch.py --torch-python VENV/bin/python \\
        --port PyTorch-ENet/models/enet.py [--before-src OLD_CHECKOUT/src ...] [--rounds 2]
        [--write]
(--write: also docs/results/versus_pytorch.{json,md}, the table the results page shows)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, machine, publish

EXPORTED = "keras_xla,saved_model,tflite_float32,tflite_float16,tflite_int8"


def _json_line(cmd, env=None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _probe(src: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), TF_CPP_MIN_LOG_LEVEL="3")
    return _json_line([sys.executable, str(ROOT / "benchmarks" / "_probe.py")], env)


def _commit(src: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or src.name


def _exported() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "bench.json"
        subprocess.run(
            [sys.executable, "-m", "enet_cli", "benchmark", "--what", "infer",
             "--variants", EXPORTED, "--iterations", "30", "--json", str(report)],
            capture_output=True, text=True, check=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), TF_CPP_MIN_LOG_LEVEL="3"),
        )  # fmt: skip
        results = json.loads(report.read_text())["results"]
    return {f"infer_{r['variant']}": r["median"] for r in results}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--port", required=True, help="PyTorch-ENet's models/enet.py")
    parser.add_argument(
        "--before-src", type=Path, action="append", default=[], help="an older checkout's src"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write docs/results/versus_pytorch.*")
    args = parser.parse_args()
    at_start = machine()
    print(f"machine: {at_start}")
    rows = {}
    for r in range(args.rounds):
        figures = {"pytorch": _json_line([args.torch_python, str(ROOT / "benchmarks" /
                   "pytorch_port.py"), "--port", args.port, "--json"])}  # fmt: skip
        for src in args.before_src:
            figures[f"before {_commit(src)}"] = _probe(src)
        figures["after"] = _probe(ROOT / "src")
        figures["after"].update(_exported())
        print(f"round {r + 1}: {json.dumps(figures)}", flush=True)
        for who, values in figures.items():
            for key, value in values.items():
                rows.setdefault((who, key), []).append(value)
    after = machine()
    print(f"machine after: {after}")
    med = {k: statistics.median(v) for k, v in rows.items() if isinstance(v[0], float)}
    torch_train = med[("pytorch", "train_images_per_sec")]
    torch_ms = med[("pytorch", "infer_ms")]
    table = [("PyTorch-ENet, training (images/s)", f"{torch_train:.2f}", "1.00x")]
    for who in [f"before {_commit(src)}" for src in args.before_src] + ["after"]:
        if (who, "train") in med:
            value = med[(who, "train")]
            table.append((f"enet {who}, training", f"{value:.2f}", f"{value / torch_train:.2f}x"))
    table.append(("PyTorch-ENet, inference (ms/image)", f"{torch_ms:.1f}", "1.00x"))
    for (who, key), value in sorted(med.items()):
        if who != "pytorch" and key.startswith("infer_"):
            table.append((f"enet {who}, {key[6:]}", f"{value:.1f}", f"{value / torch_ms:.2f}x"))
    print(f"\n{'what':42s} {'median':>10s} {'vs PyTorch-ENet':>16s}")
    for label, value, ratio in table:
        print(f"{label:42s} {value:>10s} {ratio:>16s}")
    if args.write:
        # A checkout's path is this machine's: the command names its commit instead.
        before = "".join(f" --before-src {_commit(src)}-CHECKOUT/src" for src in args.before_src)
        command = (
            f"python benchmarks/versus_pytorch.py --torch-python TORCH_VENV/bin/python --port "
            f"PyTorch-ENet/models/enet.py{before} --rounds {args.rounds} --write"
        )
        note = (
            f"Medians of {args.rounds} alternating rounds; 360x480; training batch 4, float32; "
            "inference one image per call. PyTorch-ENet is davidtvs/PyTorch-ENet's model "
            "(benchmarks/pytorch_port.py), timed without its train.py's per-step IoU "
            "bookkeeping while ours includes the confusion matrix. Machine at the end: "
            f"{after}."
        )
        header = ("what", "median", "vs PyTorch-ENet")
        print(f"wrote {publish('versus_pytorch', command, header, table, note, at_start)}")


if __name__ == "__main__":
    main()
