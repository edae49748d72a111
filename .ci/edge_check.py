"""CI's edge job: `pip install ".[edge]"` in a fresh environment (no TensorFlow) runs the
exported models the main job's full install wrote, and its class maps and scores equal the
full install's.

  python .ci/edge_check.py export DIR   (full install) a small trained run in DIR, its TFLite
                                        and ONNX exports, the full install's predictions
                                        and its evaluate scores on the test split
  python .ci/edge_check.py check DIR    (edge install) the same predictions and scores
                                        without TensorFlow, compared pixel for pixel and
                                        number for number; benchmark times each export

Run by .ci/run; the process is what is checked (what the install can import, exit codes),
so the steps are real `enet` commands.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "fixtures" / "camvid-segnet-mini"
PHOTOS = sorted((SAMPLE / "val").glob("0016E5_*.png"))[:3]
RUNTIMES = ("tflite", "onnx")


def enet(*args, stdin: bytes = b"", expect: int = 0) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("enet")), *map(str, args)]
    done = subprocess.run(command, input=stdin, capture_output=True)
    if done.returncode != expect:
        sys.exit(
            f"edge check: {' '.join(command)} exited {done.returncode}, not {expect}:\n"
            f"{done.stderr.decode()[-3000:]}"
        )
    return done


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def inputs(work: Path) -> Path:
    """Two photos (one not at the model's size) and a lossless (FFV1) clip of three frames."""
    folder = work / "inputs"
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    shutil.copy(PHOTOS[0], folder / "a.png")
    Image.open(PHOTOS[1]).resize((250, 190)).save(folder / "b.png")
    import av

    with av.open(str(folder / "drive.mkv"), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.pix_fmt, stream.height, stream.width = "bgr0", 360, 480
        for k, photo in enumerate(PHOTOS):
            frame = av.VideoFrame.from_ndarray(rgb(photo), format="rgb24")
            frame.pts, frame.time_base = k, 1 / Fraction(10)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return folder


def predict_all(work: Path, out: str) -> None:
    folder = inputs(work)
    frames = np.stack([rgb(p) for p in PHOTOS]).tobytes()
    for runtime in RUNTIMES:
        model, target = work / runtime, work / out / runtime
        enet("predict", model, folder, "--out", target / "files", "--classes-video", "png")
        enet(
            "predict", model, "-", "--stream-size", "360x480", "--out", target / "stdin",
            "--classes-video", "png", stdin=frames,
        )  # fmt: skip
        scores = work / out / f"{runtime}-test.json"
        enet("evaluate", model, work / "data", "--split", "test", "--json", scores)


def scores(path: Path) -> dict:
    """evaluate's JSON without its timings."""
    found = json.loads(path.read_text())
    return {k: v for k, v in found.items() if k not in ("seconds", "ms_per_image")}


def export(work: Path) -> None:
    enet("preprocess", SAMPLE, work / "data", "--size", "96x128")
    enet(
        "train", work / "data", "--run-dir", work / "run", "--steps", "2", "--batch-size", "4",
        "--bottlenecks", "1,3,0,1,1",
    )  # fmt: skip
    for runtime in RUNTIMES:
        enet("export", work / "run", "--format", runtime, "--out", work / runtime)
    predict_all(work, "full")


def same_records(edge: Path, full: Path) -> None:
    """`enet preprocess` of the edge install writes the records the full install wrote:
    the same names, pixels and labels in every split (read back without TensorFlow)."""
    from enet_cli.data.manifest import load_manifest
    from enet_cli.data.records import read_split

    enet("preprocess", SAMPLE, edge, "--size", "96x128")
    ours, theirs = load_manifest(edge), load_manifest(full)
    if sorted(ours.splits) != sorted(theirs.splits):
        sys.exit(f"edge check: preprocess wrote splits {sorted(ours.splits)}")
    for split in theirs.splits:
        mine = list(read_split(edge, ours, split))
        wanted = list(read_split(full, theirs, split))
        if len(mine) != len(wanted) or not mine:
            sys.exit(f"edge check: preprocess wrote {len(mine)} {split} records")
        for (name, image, label), (other, image2, label2) in zip(mine, wanted):
            same = np.array_equal(image, image2) and np.array_equal(label, label2)
            if name != other or not same:
                sys.exit(f"edge check: preprocess's {split} record {name} differs")


def preset(out: Path) -> None:
    """The camvid preset, installed with the package, runs without TensorFlow (its TFLite
    file) and predicts what the checkpoint it was packed from predicts."""
    samples = ROOT / "src" / "enet_cli" / "demo_data" / "camvid" / "test"
    said = enet("predict", "camvid", samples, "--out", out).stderr.decode()
    if "(runtime tflite)" not in said:
        sys.exit(f"edge check: the preset did not run in LiteRT: {said}")
    for golden in sorted((ROOT / "tests" / "fixtures" / "presets" / "camvid").glob("*.png")):
        ours, theirs = (np.asarray(Image.open(p)) for p in (out / golden.name, golden))
        if np.mean(ours == theirs) <= 0.999:
            sys.exit(f"edge check: the preset's {golden.name} differs from the checkpoint's")


def serve(work: Path) -> None:
    """enet serve runs the TFLite export without TensorFlow, and enet invoke against it
    writes the class maps the edge install's predict wrote."""
    import signal
    import time
    import urllib.request

    command = [str(Path(sys.executable).with_name("enet")), "serve", str(work / "tflite"),
               "--port", "0"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in process.stderr:
            if "serving on " in line:
                url = line.split("serving on ")[1].split()[0].rstrip("/")
                break
        if url is None:
            sys.exit(f"edge check: enet serve did not start: {process.stderr.read()}")
        with urllib.request.urlopen(url + "/ping", timeout=30) as reply:
            if reply.status != 200:
                sys.exit(f"edge check: /ping answered {reply.status}")
        out = work / "edge-invoke"
        photos = [inputs(work) / name for name in ("a.png", "b.png")]
        enet("invoke", url, *photos, "--out", out)
    finally:
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        process.kill()
    if process.returncode != 0:
        sys.exit(f"edge check: enet serve exited {process.returncode} on SIGINT")
    for name in ("a_classes.png", "b_classes.png"):
        served = (out / name).read_bytes()
        if served != (work / "edge" / "tflite" / "files" / name).read_bytes():
            sys.exit(f"edge check: enet serve's {name} differs from predict's")


def check(work: Path) -> None:
    if importlib.util.find_spec("tensorflow") is not None:
        sys.exit("edge check: TensorFlow is importable in the edge install")
    predict_all(work, "edge")
    full = sorted(p.relative_to(work / "full") for p in (work / "full").rglob("*.png"))
    edge = sorted(p.relative_to(work / "edge") for p in (work / "edge").rglob("*.png"))
    # per runtime: 2 photos x (classes, overlay), the clip's and the pipe's frames
    if full != edge or len(full) != len(RUNTIMES) * (2 * 2 + 2 * len(PHOTOS)):
        sys.exit(f"edge check: the edge install wrote {edge}, the full install {full}")
    for name in full:
        ours, theirs = Image.open(work / "edge" / name), Image.open(work / "full" / name)
        if not np.array_equal(np.asarray(ours), np.asarray(theirs)):
            sys.exit(f"edge check: {name} differs between the edge and the full install")
    for runtime in RUNTIMES:
        ours, theirs = (scores(work / side / f"{runtime}-test.json") for side in ("edge", "full"))
        if ours != theirs or sum(map(sum, ours["confusion"])) == 0:
            sys.exit(f"edge check: evaluate of {runtime} differs: {ours} vs {theirs}")
        bench = work / "edge" / f"{runtime}-bench.json"
        enet("benchmark", work / runtime, "--what", "infer", "--iterations", "3", "--json", bench)
        report = json.loads(bench.read_text())
        timed = [(m["variant"], m["n"]) for m in report["results"]]
        if timed != [(runtime, 3)] or "tensorflow" in report["versions"]:
            sys.exit(f"edge check: benchmark of {runtime}: {timed}, {report['versions']}")
    same_records(work / "edge-data", work / "data")
    preset(work / "edge-preset")
    serve(work)
    refused = enet("predict", work / "run", PHOTOS[0], "--out", work / "refused", expect=6)
    line = refused.stderr.decode().strip()
    if "\n" in line or not line.endswith("pip install 'enet-cli[tensorflow]'"):
        sys.exit(f"edge check: without TensorFlow, one line naming the extra: {line}")
    if (work / "refused").exists():
        sys.exit("edge check: the refused predict wrote its --out")
    print(
        f"edge install: {len(full)} class maps and overlays, and evaluate's scores on the "
        "test split, equal the full install's (TFLite and ONNX; photos, a video, stdin "
        "frames); benchmark timed both; preprocess wrote the same shards; the camvid preset "
        "predicts its checkpoint's class maps; enet serve answers invoke with predict's class "
        "maps; no TensorFlow importable"
    )


if __name__ == "__main__":
    step, directory = sys.argv[1], Path(sys.argv[2])
    {"export": export, "check": check}[step](directory)
