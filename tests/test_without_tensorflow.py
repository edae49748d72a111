"""An exported model (.tflite in LiteRT, .onnx in onnxruntime) is used without TensorFlow:
in a process where TensorFlow cannot be imported at all (as on a board that has only the
light runtimes), `enet predict` segments photos of any size, a video and frames from a pipe
exactly as the full install does, `enet evaluate` scores it on the shards with the full
install's numbers, `enet benchmark` times it, `enet preprocess` writes the shards the full
install writes, and what needs TensorFlow says so in one line.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enet_testing import (
    FIXTURES,
    enet_without_tensorflow,
    error_lines,
    invoke,
    make_video,
)

PHOTOS = sorted((FIXTURES / "camvid-segnet-mini" / "val").glob("0016E5_*.png"))[:2]


def test_resize_logits_is_tensorflows_bilinear():
    """Logits go back to a photo's size in NumPy as tf.image.resize(bilinear) takes them
    there (half-pixel centres), enlarging, shrinking and by odd factors: the same numbers
    (bit for bit on this machine), so the same classes as before, with no TensorFlow."""
    import tensorflow as tf

    from enet_cli.pixels.preprocessor import classes_at, resize_logits

    rng = np.random.default_rng(0)
    for source, target in (
        ((45, 60), (360, 480)),
        ((360, 480), (720, 960)),
        ((360, 480), (37, 51)),
        ((8, 8), (100, 30)),
        ((96, 128), (97, 127)),
    ):
        logits = (rng.normal(size=(2, *source, 11)) * 5).astype(np.float32)
        ours = resize_logits(logits, target)
        theirs = tf.image.resize(logits, target, "bilinear").numpy()
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=str(target))
        classes = classes_at(logits, target)
        assert isinstance(classes, np.ndarray) and classes.dtype == np.int32
        np.testing.assert_array_equal(classes, tf.argmax(theirs, axis=-1).numpy())
    same = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    assert resize_logits(same, (8, 8)) is same  # nothing to do at the same size

    # A segmentation's scores are smooth: large regions of one class, where classes_at
    # interpolates only between classes. The same classes as TensorFlow's whole resize.
    coarse = (rng.normal(size=(2, 6, 8, 11)) * 5).astype(np.float32)
    smooth = tf.image.resize(coarse, (45, 60), "bilinear").numpy()
    for target in ((360, 480), (720, 960), (37, 51), (46, 59)):
        expected = tf.argmax(tf.image.resize(smooth, target, "bilinear"), axis=-1).numpy()
        np.testing.assert_array_equal(classes_at(smooth, target), expected, str(target))
    regions = np.argmax(smooth, axis=-1)
    assert np.mean(regions[:, 1:] != regions[:, :-1]) < 0.2  # mostly inside regions


def _pngs(directory: Path) -> dict:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(directory.rglob("*.png"))}


@pytest.mark.parametrize("runtime", ["tflite", "onnx"])
def test_predict_runs_an_export_without_tensorflow_as_the_full_install_does(
    untrained_exports, runtime, tmp_path
):
    """Photos (one at the model's size, one not: its logits are resized), then raw frames
    from a pipe: every class map and overlay equals the one the full install writes."""
    model = untrained_exports[runtime]
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(PHOTOS[0]).save(photos / "a.png")
    Image.open(PHOTOS[1]).resize((250, 190)).save(photos / "b.png")  # not the model's size
    light = enet_without_tensorflow("predict", model, photos, "--out", tmp_path / "light")
    assert light.returncode == 0, light.stderr.decode()[-2000:]
    full = invoke("predict", model, photos, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    written = _pngs(tmp_path / "light")
    assert sorted(written) == ["a_classes.png", "a_overlay.png", "b_classes.png", "b_overlay.png"]
    assert written["b_classes.png"].shape == (190, 250)
    reference = _pngs(tmp_path / "full")
    assert written.keys() == reference.keys()
    for name in written:
        np.testing.assert_array_equal(written[name], reference[name], name)

    frames = [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS]
    clip = make_video(tmp_path / "drive.mkv", frames, rate=10)
    light = enet_without_tensorflow(
        "predict", model, clip, "--out", tmp_path / "vlight", "--classes-video", "png"
    )
    assert light.returncode == 0, light.stderr.decode()[-2000:]
    piped = enet_without_tensorflow(
        "predict", model, "-", "--stream-size", "360x480", "--out", tmp_path / "pipe",
        "--classes-video", "png", stdin=np.stack(frames).tobytes(),
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr.decode()[-2000:]
    from enet_cli.serving.predict import segment
    from enet_cli.serving.runtimes import load_predictor

    predictor = load_predictor(model)
    for directory in (tmp_path / "vlight" / "drive_classes", tmp_path / "pipe" / "stdin_classes"):
        maps = [np.asarray(Image.open(p)) for p in sorted(directory.glob("*.png"))]
        assert len(maps) == len(frames), directory
        for k, frame in enumerate(frames):  # a lossless clip: the frames' own pixels
            np.testing.assert_array_equal(maps[k], segment(predictor, frame), f"{directory} {k}")


@pytest.mark.parametrize("runtime", ["tflite", "onnx"])
def test_evaluate_and_benchmark_run_an_export_without_tensorflow(
    untrained_exports, small_data, runtime, tmp_path
):
    """evaluate: the shards read without TensorFlow give the full install's confusion
    matrix and metrics; benchmark --what infer times the export as it is, and reports the
    runtime that ran it and no TensorFlow."""
    model = untrained_exports[runtime]
    light = enet_without_tensorflow(
        "evaluate", model, small_data, "--split", "val", "--json", tmp_path / "light.json"
    )
    assert light.returncode == 0, light.stderr.decode()[-2000:]
    assert "mean" in light.stdout.decode()
    full = invoke("evaluate", model, small_data, "--split", "val", "--json", tmp_path / "full.json")
    assert full.returncode == 0, full.stderr[-2000:]
    timing = ("seconds", "ms_per_image")
    scores = [
        {k: v for k, v in json.loads((tmp_path / name).read_text()).items() if k not in timing}
        for name in ("light.json", "full.json")
    ]
    assert scores[0] == scores[1]
    assert np.sum(scores[0]["confusion"]) > 0 and scores[0]["images"] == 8

    bench = enet_without_tensorflow(
        "benchmark", model, "--what", "infer", "--iterations", "3", "--warmup", "1",
        "--json", tmp_path / "bench.json",
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr.decode()[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(m["what"], m["variant"], m["n"]) for m in report["results"]] == [("infer", runtime, 3)]
    assert report["results"][0]["median"] > 0
    assert "tensorflow" not in report["versions"]
    assert {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}[runtime] in report["versions"]


def test_preprocess_writes_the_full_installs_shards_without_tensorflow(segnet_data, tmp_path):
    """The same command as conftest's segnet_data (in the test process, TensorFlow loaded):
    the same shards, byte for byte, and the same manifest."""
    out = tmp_path / "data"
    result = enet_without_tensorflow(
        "preprocess", FIXTURES / "camvid-segnet-mini", out, "--workers", "2", "--shards", "4"
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (out, segnet_data))
    assert ours == theirs
    shards = sorted(p.name for p in segnet_data.glob("*.tfrecord"))
    assert shards == sorted(p.name for p in out.glob("*.tfrecord")) and len(shards) == 12
    for name in shards:
        assert (out / name).read_bytes() == (segnet_data / name).read_bytes(), name


def test_an_export_is_timed_only_as_it_is(untrained_exports):
    """Training and the input pipeline need a Keras model, other runtimes another export:
    one line each, before anything is timed."""
    model = untrained_exports["tflite"]
    for args, message in (
        (("--what", "train"), "--what train: an exported tflite model can be timed with"),
        (("--what", "infer", "--variants", "keras"), "--variants keras: the model is a tflite"),
    ):
        result = invoke("benchmark", model, *args)
        assert result.returncode == 2, result.stderr[-2000:]
        errors = error_lines(result.stderr)
        assert len(errors) == 1 and message in errors[0], result.stderr


def test_what_needs_tensorflow_says_so_in_one_line(untrained_exports, small_data, tmp_path):
    """A SavedModel (or a checkpoint, training, test-time augmentation) with no TensorFlow:
    one line saying what to install and what runs without it, exit code 6 (the
    environment), nothing written."""
    for args in (
        ("predict", untrained_exports["saved_model"], PHOTOS[0], "--out", tmp_path / "p"),
        ("export", untrained_exports["saved_model"], "--format", "onnx", "--out", tmp_path / "e"),
        ("demo", "--out", tmp_path / "d"),
        ("evaluate", untrained_exports["onnx"], small_data, "--tta", "flip"),
    ):
        result = enet_without_tensorflow(*args)
        stderr = result.stderr.decode()
        assert result.returncode == 6, stderr[-2000:]
        errors = error_lines(stderr)
        assert len(errors) == 1 and stderr.strip() == errors[0], stderr
        assert "needs TensorFlow, which is not installed" in errors[0]
        assert "exported .tflite and .onnx models run without it" in errors[0]
        assert errors[0].endswith("pip install 'enet-cli[tensorflow]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, not even a marker
