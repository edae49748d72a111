"""Time to the first overlay: `enet predict MODEL photo.png` as a fresh process, for a TFLite
and an ONNX export, the way a user on a small machine meets the tool.

Three set-ups, in turn within each round (A B C, B C A, ...): `enet` as it runs now (an
exported model never imports TensorFlow), the same command with TensorFlow imported first
(what every predict paid before serving/runners.py: the baseline), and a process in which
TensorFlow cannot be imported at all (the edge install's case). The model is an untrained
ENet at 360x480 (weights do not change the time); the photo is a CamVid frame. Issue 31's
target: at most 1.5 s without TensorFlow, and the full install within 10% of that.
Run: python benchmarks/first_overlay.py [--rounds 5] [--write]
(--write: also docs/results/first_overlay.{json,md}, the table the docs show)
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import FIXTURES, ROOT, machine, publish

COMMAND = "python benchmarks/first_overlay.py --write"
PHOTO = sorted((FIXTURES / "camvid-segnet-mini" / "val").glob("*.png"))[0]
SETUPS = {
    "enet now": "from enet_cli.cli import main",
    "TensorFlow imported first (before)": (
        "import enet_cli.core.backend\nfrom enet_cli.cli import main"
    ),
    "no TensorFlow installed": (  # None in sys.modules: every import of it fails
        "import sys\nfor name in ('tensorflow', 'tf_keras', 'keras'):\n"
        "    sys.modules[name] = None\nfrom enet_cli.cli import main"
    ),
}


def exports(root: Path) -> dict:
    """An untrained 360x480 ENet exported to TFLite and ONNX, as `enet export` writes them."""
    from enet_cli.artifacts.run import RunMeta
    from enet_cli.core.backend import tf
    from enet_cli.core.config import ModelConfig, PreprocessConfig
    from enet_cli.core.formats import ModelFormat
    from enet_cli.data.manifest import load_manifest
    from enet_cli.data.preprocess import preprocess
    from enet_cli.model import build_enet
    from enet_cli.serving.export import ExportRequest, export_model, write_saved_model

    data = root / "data"
    preprocess(PreprocessConfig(input_dir=FIXTURES / "camvid-segnet-mini", output_dir=data))
    manifest = load_manifest(data)
    meta = RunMeta.from_manifest(ModelConfig(num_classes=manifest.num_classes), manifest)
    tf.random.set_seed(1)
    write_saved_model(build_enet(meta.model, None), meta, root / "saved_model")
    found = {}
    for fmt in (ModelFormat.tflite, ModelFormat.onnx):
        export_model(ExportRequest(source=root / "saved_model", out=root / fmt.value, format=fmt))
        found[fmt.value] = root / fmt.value
    return found


def first_overlay(setup: str, model: Path, out: Path) -> float:
    """Seconds from starting the process to its exit, the overlay written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    code = f"{SETUPS[setup]}\nimport sys\nmain(sys.argv[1:])"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code, "predict", str(model), str(PHOTO), "--out", str(out)],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert (out / f"{PHOTO.stem}_overlay.png").is_file(), out
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write docs/results/first_overlay.*")
    args = parser.parse_args()
    at_start = machine()
    print(f"machine: {at_start}; {args.rounds} rounds")
    names = list(SETUPS)
    with tempfile.TemporaryDirectory() as tmp:
        models = exports(Path(tmp))
        times = {(r, s): [] for r in models for s in names}
        for k in range(args.rounds):
            for setup in names[k % 3 :] + names[: k % 3]:
                for runtime, model in models.items():
                    out = Path(tmp) / f"out-{k}-{runtime}-{names.index(setup)}"
                    times[runtime, setup].append(first_overlay(setup, model, out))
    rows = []
    for runtime in models:
        now = statistics.median(times[runtime, names[0]])
        for setup in names:
            median = statistics.median(times[runtime, setup])
            spread = f"{min(times[runtime, setup]):.2f}-{max(times[runtime, setup]):.2f}"
            rows.append([runtime, setup, f"{median:.2f}", spread, f"{median / now:.2f}x"])
            print(f"{runtime:7} {setup:36} median {median:.2f} s ({spread}), {median / now:.2f}x")
    if args.write:
        note = (
            f"`enet predict MODEL photo.png --out D` as a fresh process, from its start to its "
            f"exit with the overlay written; {args.rounds} rounds, the set-ups in turn; an "
            f"untrained ENet at 360x480 (the weights do not change the time). Target (issue "
            f"31): at most 1.5 s without TensorFlow."
        )
        header = ["model", "process", "seconds (median)", "range", "vs enet now"]
        path = publish("first_overlay", COMMAND, header, rows, note, at_start)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
