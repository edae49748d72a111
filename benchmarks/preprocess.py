"""Preprocessing throughput (images/s) on the bundled CamVid sample, by worker count, and
the peak memory of the whole process tree on Cityscapes-sized input.

Three inputs: the SegNet sample as it is (480x360, index labels, no resizing; 160 images);
the Kaggle sample scaled up to the real Kaggle download's 960x720 (RGB colour labels,
resized to 480x360; 64 images); and the SegNet frames scaled up to Cityscapes' 2048x1024 in
the Cityscapes layout (label ids), preprocessed to 512x1024, at two dataset sizes: memory
must not grow with the number of images (conversions in flight are bounded).
Run: python benchmarks/preprocess.py [--cityscapes-only] [--write]
(--write: also docs/results/preprocess{,_memory}.{json,md}, the tables the datasets guide
shows)
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from _common import COPIES, FIXTURES, Timer, describe, machine, publish, segnet_copies
from PIL import Image

from enet_cli.core.config import PreprocessConfig
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


# CamVid's 11 classes -> a Cityscapes label id of the same thing (void -> 0).
CITYSCAPES_IDS = [23, 11, 17, 7, 8, 21, 20, 13, 26, 24, 33, 0]


def cityscapes_2048(dest: Path, images: int) -> Path:
    """`images` train pairs (and 8 val) at 2048x1024 in the official Cityscapes layout."""
    src = FIXTURES / "camvid-segnet-mini"
    frames = sorted((src / "train").glob("*.png"))
    lookup = np.array(CITYSCAPES_IDS + [0] * 244, np.uint8)
    for split, count in (("train", images), ("val", 8)):
        image_dir = dest / "leftImg8bit" / split / "bench"
        label_dir = dest / "gtFine" / split / "bench"
        image_dir.mkdir(parents=True)
        label_dir.mkdir(parents=True)
        for k in range(count):
            frame = frames[k % len(frames)]
            name = f"bench_{k:06d}_000019"
            if k < len(frames):
                big = Image.open(frame).resize((2048, 1024), Image.BICUBIC)
                label = np.asarray(Image.open(src / "trainannot" / frame.name))
                ids = Image.fromarray(lookup[label]).resize((2048, 1024), Image.NEAREST)
                big.save(image_dir / f"{name}_leftImg8bit.png", compress_level=1)
                ids.save(label_dir / f"{name}_gtFine_labelIds.png")
            else:  # the same bytes again: generating 2048x1024 PNGs is slow
                first = f"bench_{k % len(frames):06d}_000019"
                for folder, suffix in ((image_dir, "leftImg8bit"), (label_dir, "gtFine_labelIds")):
                    os.link(folder / f"{first}_{suffix}.png", folder / f"{name}_{suffix}.png")
    return dest


def _tree_rss_kib(root: int) -> int:
    """Resident memory of `root` and all its descendants, from /proc (Linux)."""
    parents: Dict[int, int] = {}
    rss: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry)] = int(fields.get("PPid", "0").strip())
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(more)
        tree |= more
    return sum(rss.get(pid, 0) for pid in tree)


def peak_rss(input_dir: Path, out: Path, workers: int) -> Tuple[float, float]:
    """(images/s, peak RSS MiB of the whole process tree) of one `enet preprocess` run."""
    cmd = [sys.executable, "-m", "enet_cli", "preprocess", str(input_dir), str(out),
           "--size", "512x1024", "--workers", str(workers), "--force"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr.read().decode()[-2000:] if proc.stderr else "failed")
    images = sum(1 for _ in input_dir.rglob("*_leftImg8bit.png"))
    return images / seconds, peak / 1024


def cityscapes(work: Path) -> List[Tuple[str, ...]]:
    rows: List[Tuple[str, ...]] = []
    for images in (48, 144):
        data = cityscapes_2048(work / f"cityscapes-{images}", images)
        for workers in (1, 2):
            rate, peak = peak_rss(data, work / "cs-out", workers)
            rows.append((str(images + 8), str(workers), f"{rate:.1f}", f"{peak:.0f} MiB"))
            print(
                f"preprocess cityscapes 2048x1024 -> 512x1024, {images + 8} images, "
                f"workers={workers}: {rate:.2f} images/s, peak RSS {peak:.0f} MiB (all processes)",
                flush=True,
            )
    return rows


def main() -> None:
    write = "--write" in sys.argv
    at_start = machine()
    print(f"machine: {at_start}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        memory = cityscapes(work)
        if write:
            flags = " --cityscapes-only" if "--cityscapes-only" in sys.argv else ""
            header = ("images", "workers", "images/s", "peak RSS, all processes")
            note = (
                "Cityscapes-sized 2048x1024 PNGs in its layout, preprocessed to 512x1024, one "
                "run each: the peak must not grow with the number of images."
            )
            command = f"python benchmarks/preprocess.py{flags} --write"
            print(f"wrote {publish('preprocess_memory', command, header, memory, note, at_start)}")
        if "--cityscapes-only" in sys.argv:
            return
        inputs = {
            "SegNet 480x360, no resizing": segnet_copies(work / "segnet"),
            "Kaggle 960x720 -> 480x360, colour labels": kaggle_960x720(work / "kaggle960"),
        }
        rows = []
        for name, path in inputs.items():
            count = sum(1 for _ in path.rglob("*.png")) // 2
            cells = []
            for workers in (1, 2):
                rates = [rate(path, workers, work) for _ in range(3)]
                print(f"preprocess {name}, workers={workers}: images/s {describe(rates)}")
                cells.append(describe(rates))
            rows.append((f"{name} ({count} images)", *cells))
        if write:
            header = ("input", "workers=1, images/s", "workers=2, images/s")
            note = "Each figure: three runs of the whole preprocess into a fresh directory."
            command = "python benchmarks/preprocess.py --write"
            print(f"wrote {publish('preprocess', command, header, rows, note, at_start)}")


if __name__ == "__main__":
    main()
