"""Preprocessing throughput (images/s) on the bundled CamVid sample, by worker count.

Two inputs: the SegNet sample as it is (480x360, index labels, no resizing; 160 images) and
the Kaggle sample scaled up to the real Kaggle download's 960x720 (RGB colour labels,
resized to 480x360; 64 images), the expensive case. Run: python benchmarks/preprocess.py
"""

import shutil
import tempfile
from pathlib import Path

from _common import COPIES, FIXTURES, Timer, describe, machine, segnet_copies
from PIL import Image

from enet_cli.config import PreprocessConfig
from enet_cli.data.preprocess import preprocess


def kaggle_960x720(dest: Path) -> Path:
    """The Kaggle sample at the real download's 960x720, each image COPIES times."""
    src = FIXTURES / "camvid-kaggle-mini"
    dest.mkdir()
    shutil.copy(src / "class_dict.csv", dest)
    for folder in ("train", "val", "test"):
        (dest / folder).mkdir()
        (dest / f"{folder}_labels").mkdir()
        for image in sorted((src / folder).glob("*.png")):
            label = src / f"{folder}_labels" / f"{image.stem}_L.png"
            big_image = Image.open(image).resize((960, 720), Image.BICUBIC)
            big_label = Image.open(label).resize((960, 720), Image.NEAREST)
            for k in range(COPIES):
                big_image.save(dest / folder / f"{image.stem}x{k}.png")
                big_label.save(dest / f"{folder}_labels" / f"{image.stem}x{k}_L.png")
    return dest


def rate(input_dir: Path, workers: int, work: Path) -> float:
    out = work / f"out-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PreprocessConfig(input_dir=input_dir, output_dir=out, workers=workers)
    with Timer() as t:
        _, _, reports = preprocess(cfg)
    return sum(r.images for r in reports) / t.seconds


def main() -> None:
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = {
            "segnet 480x360 (no resize)": segnet_copies(work / "segnet"),
            "kaggle 960x720 -> 480x360": kaggle_960x720(work / "kaggle960"),
        }
        for name, path in inputs.items():
            for workers in (1, 2):
                rates = [rate(path, workers, work) for _ in range(3)]
                print(f"preprocess {name}, workers={workers}: images/s {describe(rates)}")


if __name__ == "__main__":
    main()
