"""`enet predict` on videos and frame streams, with a really trained model and real video
files made here from the bundled CamVid frames (they are frames of CamVid's 0016E5 drive).

The lossless clips are FFV1 in Matroska (RGB in, RGB out, bit for bit), so the class maps
of a video must equal `enet predict` on the frames' PNGs exactly; the overlay is H.264,
compared within the codec's tolerance.
"""

import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av  # the [video] extra, part of the dev install
import numpy as np
import pytest
from PIL import Image

from enet_testing import (
    FIXTURES,
    ctrl_c,
    enet_env,
    error_lines,
    invoke,
    last_error_line,
    make_video,
    one_error_line,
    user_env,
)

FRAMES = sorted((FIXTURES / "camvid-segnet-mini" / "val").glob("0016E5_*.png"))


def frames_of(paths):
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def decoded(path: Path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return pictures, rate


def blocks(picture: np.ndarray, side: int = 8) -> np.ndarray:
    """Mean of each side x side block, per channel."""
    h, w = (picture.shape[0] // side) * side, (picture.shape[1] // side) * side
    cut = picture[:h, :w].astype(float)
    return cut.reshape(h // side, side, w // side, side, -1).mean(axis=(1, 3))


def no_partial_files(directory: Path):
    return [p for p in directory.rglob("*") if "partial" in p.name]


@pytest.mark.slow
def test_a_video_gives_the_same_frames_as_predicting_each_png(trained_run, tmp_path):
    clip = make_video(tmp_path / "drive.mkv", frames_of(FRAMES), rate=15)
    out = tmp_path / "out"
    result = invoke(
        "predict", str(trained_run), str(clip), "--out", str(out), "--classes-video", "png",
        "--summary", str(out / "shares.json"), "--batch", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "drive.mkv -> " in result.stdout and f"{len(FRAMES)} frames" in result.stdout
    overlay, rate = decoded(out / "drive_overlay.mp4")
    assert len(overlay) == len(FRAMES) and rate == 15
    assert overlay[0].shape == (360, 480, 3)
    classes = sorted((out / "drive_classes").glob("*.png"))
    assert len(classes) == len(FRAMES)

    stills = invoke("predict", str(trained_run), *map(str, FRAMES), "--out", str(tmp_path / "s"))
    assert stills.returncode == 0, stills.stderr[-2000:]
    shares = json.loads((out / "shares.json").read_text())
    names = shares["classes"]
    [summary] = shares["inputs"]
    assert summary["input"] == str(clip) and len(summary["frames"]) == len(FRAMES)
    stills_through_codec, diffs = [], []
    for k, frame_png in enumerate(FRAMES):
        expected = np.asarray(Image.open(tmp_path / "s" / f"{frame_png.stem}_classes.png"))
        got = np.asarray(Image.open(classes[k]))
        assert np.array_equal(got, expected), k  # lossless in, the same class map out
        row = summary["frames"][k]
        assert row["frame"] == k and abs(row["time_s"] - k / 15) < 1e-3
        counts = np.bincount(expected.ravel(), minlength=len(names)) / expected.size
        assert np.allclose([row["shares"][n] for n in names], counts, atol=1e-6)
        # The overlay: the still's tinted photo (above its legend strip), within H.264's
        # tolerance, away from the frame's own legend (bottom) and counter (top left).
        # The codec's tolerance, measured: the still's overlay itself through the same
        # encoder. 8x8 block averages are compared (H.264 drops fine detail and 3/4 of the
        # colour resolution, and a near-untrained model's map is full of thin boundaries).
        still = np.asarray(Image.open(tmp_path / "s" / f"{frame_png.stem}_overlay.png"))[:360]
        stills_through_codec.append(still)
        band = slice(24, 360 - 80)
        diff = np.abs(blocks(overlay[k][band]) - blocks(still[band]))
        diffs.append(diff.mean())
        # and not merely the photo: the tint is there
        photo = blocks(frames_of([frame_png])[0][band])
        assert np.abs(blocks(overlay[k][band]) - photo).mean() > 5 * diff.mean()
    from enet_cli.serving.video import VideoWriter

    writer = VideoWriter(tmp_path / "codec.mp4", (360, 480), Fraction(15))
    for still in stills_through_codec:
        writer.write(still)
    writer.close()
    for k, (through, still) in enumerate(
        zip(decoded(tmp_path / "codec.mp4")[0], stills_through_codec)
    ):
        codec = np.abs(blocks(through[band]) - blocks(still[band])).mean()
        assert diffs[k] <= 1.25 * codec + 0.5, (k, diffs[k], codec)


@pytest.mark.slow
def test_classes_as_a_lossless_video_and_frames_from_a_pipe(trained_run, tmp_path):
    frames = frames_of(FRAMES[:5])
    out = tmp_path / "out"
    raw = np.stack(frames).tobytes()
    piped = subprocess.run(
        [sys.executable, "-m", "enet_cli", "predict", str(trained_run), "-", "--stream-size",
         "360x480", "--fps", "12.5", "--out", str(out), "--classes-video", "ffv1",
         "--summary", str(out / "s.csv")],
        input=raw, capture_output=True, timeout=300, env=enet_env(),
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr[-2000:]
    overlay, rate = decoded(out / "stdin_overlay.mp4")
    assert len(overlay) == 5 and rate == Fraction(25, 2)
    maps, _ = decoded(out / "stdin_classes.mkv")
    clip = make_video(tmp_path / "clip.mkv", frames, rate=25)
    again = invoke("predict", str(trained_run), str(clip), "--out", str(tmp_path / "o2"),
                     "--classes-video", "png")  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    pngs = sorted((tmp_path / "o2" / "clip_classes").glob("*.png"))
    for gray, png in zip(maps, pngs):  # FFV1 gray: pixel value = class index, exactly
        assert np.array_equal(gray[..., 0], np.asarray(Image.open(png)))
    rows = (out / "s.csv").read_text().splitlines()
    assert len(rows) == 6 and rows[0].startswith("input,frame,time_s,Sky,")
    assert rows[3].startswith("stdin,2,0.1600,")

    # A pipe cut inside a frame: the whole frames are kept, the command says so, exits 3.
    cut = subprocess.run(
        [sys.executable, "-m", "enet_cli", "predict", str(trained_run), "-", "--stream-size",
         "360x480", "--out", str(tmp_path / "cut")],
        input=raw[: 2 * 360 * 480 * 3 + 1000], capture_output=True, timeout=300, env=user_env(),
    )  # fmt: skip
    stderr = cut.stderr.decode()
    assert cut.returncode == 3, stderr[-2000:]
    assert "stdin: the stream ended inside a frame (1000 bytes)" in stderr
    assert len(decoded(tmp_path / "cut" / "stdin_overlay.mp4")[0]) == 2


@pytest.mark.slow
def test_damaged_and_unreadable_inputs_are_one_warning_each_and_the_rest_goes_on(
    trained_run, tmp_path
):
    make_video(tmp_path / "good.mkv", frames_of(FRAMES[:3]), rate=10)
    whole = make_video(tmp_path / "whole.mkv", frames_of(FRAMES), rate=10).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "notes.mp4").write_text("not a video at all\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    out = tmp_path / "out"
    result = invoke("predict", str(trained_run), str(tmp_path), "--out", str(out))
    lines = error_lines(result.stderr)
    warnings = [x for x in lines if x.startswith("warning:")]
    assert result.returncode == 3, result.stderr[-2000:]
    assert any("cut.mkv: ended after" in x and "truncated" in x for x in warnings), warnings
    assert any("notes.mp4" in x and "cannot read video" in x for x in warnings), warnings
    assert any("broken.png" in x and "cannot read image" in x for x in warnings), warnings
    assert lines[-1] == f"error: 3 of 5 inputs skipped or incomplete (see the warnings above); " \
        f"the others are in {out}"  # fmt: skip
    assert not [x for x in lines if "Traceback" in x]
    assert len(decoded(out / "good_overlay.mp4")[0]) == 3
    assert 0 < len(decoded(out / "cut_overlay.mp4")[0]) < len(FRAMES)
    assert not (out / "notes_overlay.mp4").exists() and not no_partial_files(out)


@pytest.mark.slow
def test_ctrl_c_mid_video_leaves_a_playable_shorter_file(trained_run, tmp_path):
    frames = frames_of(FRAMES) * 50  # 400 frames: long enough to be interrupted
    clip = make_video(tmp_path / "long.mp4", frames, rate=25, codec="h264")
    out = tmp_path / "out"
    # pressed at the first progress line: a quarter is done
    result = ctrl_c(["predict", trained_run, clip, "--out", out],
                    lambda lines: any("frames (" in x for x in lines))  # fmt: skip
    last = last_error_line(result, 130, r"holds the first \d+ of 400 frames")
    kept = int(last.split("holds the first ")[1].split()[0])
    assert 100 <= kept < 400, last
    assert "SIGINT received: finishing the file being written" in result.stderr
    assert len(decoded(out / "long_overlay.mp4")[0]) == kept  # playable, every frame there
    assert not no_partial_files(out)


def test_video_without_the_extra_is_one_line_naming_it(trained_run, tmp_path):
    """PyAV missing (a module named av that fails to import shadows it): one line that
    names the extra, before any image is written."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "av.py").write_text("raise ImportError('No module named av')\n")
    clip = tmp_path / "x.mp4"
    clip.write_bytes(b"\0")
    env = enet_env()
    env["PYTHONPATH"] = f"{shadow}:{env.get('PYTHONPATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "enet_cli", "predict", str(trained_run), str(FRAMES[0]),
         str(clip), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 6, result.stderr[-2000:]
    assert error_lines(result.stderr)[-1] == (
        "error: video needs PyAV, which is not installed: pip install 'enet-cli[video]'"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_video_benchmark_times_predicts_whole_path_beside_the_model_alone(trained_run):
    from enet_cli.workflows.benchmark import BenchmarkRequest, What, run_benchmark

    common = dict(model=trained_run, image_size=(96, 128), warmup=1, variants=("keras",))
    video = run_benchmark(
        BenchmarkRequest(
            what=What.video,
            iterations=10,
            video_sizes=((96, 128), (192, 256)),
            video_frames=12,
            **common,
        )
    )
    infer = run_benchmark(BenchmarkRequest(what=What.infer, iterations=10, **common))
    rates = {m.variant: m for m in video.results}
    assert sorted(rates) == ["keras 192x256", "keras 96x128", "keras model"]
    alone = rates.pop("keras model")  # the model as the path runs it: its ceiling
    assert alone.note == "batches of 4, 1 in flight" and alone.n == 10  # Keras: one at a time
    assert 0 < alone.min <= alone.median <= alone.max < 100_000
    # Speed itself is not asserted (shared, noisy machines: benchmarks/video.py prints it);
    # what is: each figure is frames over seconds of real passes, as many as asked for.
    for m in rates.values():
        assert m.unit == "frames/s" and m.n == 2 and m.note.startswith("12 frames; model at 96x128")
        assert 0 < m.min <= m.median <= m.max < 10_000
    assert infer.results[0].unit == "ms/image" and infer.results[0].median > 0


def test_a_stream_without_its_frame_size_is_refused_before_the_model_loads(tmp_path):
    result = invoke("predict", str(tmp_path / "no-model"), "-", "--out", str(tmp_path / "o"))
    one_error_line(
        result, 2, r"- reads raw RGB frames from stdin: give their size with --stream-size"
    )
    assert not (tmp_path / "o").exists()


def test_an_output_that_would_replace_an_input_is_refused_before_the_model_loads(tmp_path):
    shutil.copy(FRAMES[0], tmp_path / "a.png")
    shutil.copy(FRAMES[1], tmp_path / "a_overlay.png")
    before = (tmp_path / "a_overlay.png").read_bytes()
    result = invoke("predict", str(tmp_path / "no-model"), str(tmp_path), "--out", str(tmp_path))
    one_error_line(result, 2, r"would overwrite the input .*a_overlay.png; choose another --out")
    assert (tmp_path / "a_overlay.png").read_bytes() == before


@pytest.mark.parametrize("runtime", ["tflite", "onnx"])
def test_runtime_copies_hand_each_frames_classes_to_the_writer_in_order(
    untrained_exports, runtime, tmp_path
):
    """Two copies of the model, batches in flight (a batch of 1 keeps both busy): frame k's
    class map is what one copy on every core gives for frame k alone. A lossless clip keeps
    the pixels exactly; the frames' maps all differ, so a swap cannot pass."""
    from enet_cli.core import ui
    from enet_cli.serving.inputs import PredictOptions
    from enet_cli.serving.predict import VIDEO_PARALLEL, predict_video, segment
    from enet_cli.serving.runtimes import load_predictor
    from enet_cli.serving.video import VideoFile

    frames = frames_of(FRAMES[:6])
    clip = make_video(tmp_path / "drive.mkv", frames, rate=10)
    whole = load_predictor(untrained_exports[runtime])
    expected = [segment(whole, frame) for frame in frames]
    assert len({e.tobytes() for e in expected}) == len(frames)  # order is really tested
    copies = load_predictor(untrained_exports[runtime], parallel=VIDEO_PARALLEL)
    assert copies.parallel == VIDEO_PARALLEL >= 2
    for batch in (1, 2, 4):
        out = tmp_path / f"batch{batch}"
        out.mkdir()
        options = PredictOptions(out=out, batch=batch, classes_video="png")
        done = predict_video(copies, VideoFile(clip), options, ui.StopRequest())
        assert done.frames == len(frames)
        maps = sorted((out / "drive_classes").glob("*.png"))
        assert len(maps) == len(frames)
        for k, path in enumerate(maps):
            np.testing.assert_array_equal(np.asarray(Image.open(path)), expected[k], f"{k}")


def test_a_damaged_video_with_two_problems_counts_as_one_input(untrained_exports, tmp_path):
    """A damaged packet cuts a clip short: two warnings for one input, and the verdict counts
    inputs ("1 of 2", never "2 of 1"); alone, the input's own reason is the error."""
    import random

    clip = bytearray(
        make_video(tmp_path / "whole.mkv", frames_of(FRAMES) * 2, rate=10).read_bytes()
    )
    middle = len(clip) // 2
    random.seed(1)  # these bytes, there: one undecodable packet, 11 of 16 frames (measured)
    clip[middle : middle + 20000] = bytes(random.randrange(256) for _ in range(20000))
    (tmp_path / "clips").mkdir()
    damaged = tmp_path / "clips" / "damaged.mkv"
    damaged.write_bytes(bytes(clip))
    model = untrained_exports["onnx"]
    result = invoke("predict", model, damaged, "--out", tmp_path / "one")
    lines = error_lines(result.stderr)
    assert result.returncode == 3, result.stderr[-2000:]
    assert [x for x in lines if x.startswith("warning:")] == [
        f"warning: {damaged}: 1 damaged packet(s) could not be decoded",
        f"warning: {damaged}: ended after 11 of 16 frames; the file is truncated or damaged",
    ]
    assert lines[-1] == f"error: {damaged}: 1 damaged packet(s) could not be decoded"
    shutil.copy(FRAMES[0], tmp_path / "clips" / "street.png")
    result = invoke("predict", model, tmp_path / "clips", "--out", tmp_path / "two")
    assert result.returncode == 3, result.stderr[-2000:]
    assert error_lines(result.stderr)[-1] == (
        f"error: 1 of 2 inputs skipped or incomplete (see the warnings above); the others are "
        f"in {tmp_path / 'two'}"
    )
