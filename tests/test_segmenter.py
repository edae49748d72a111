"""The Python API (issue 34): `Segmenter.load(MODEL)` in a notebook or script gives what
`enet predict` writes for the same image, byte for byte, from a preset or a path."""

import numpy as np
import pytest
from PIL import Image

from enet_testing import REPO, invoke

SAMPLE = REPO / "src" / "enet_cli" / "demo_data" / "camvid" / "test" / "0001TP_007590.png"


@pytest.fixture(scope="module")
def segmenter():
    from enet_cli.api import Segmenter

    return Segmenter.load("camvid")


def test_the_segmenter_gives_enet_predicts_class_map_and_overlay(segmenter, tmp_path):
    from enet_cli.pixels.drawing import indexed_png, png_bytes

    result = invoke("predict", "camvid", SAMPLE, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    classes = segmenter.predict(SAMPLE)
    assert classes.shape == (360, 480) and len(np.unique(classes)) >= 5
    written = (tmp_path / f"{SAMPLE.stem}_classes.png").read_bytes()
    assert png_bytes(indexed_png(classes, segmenter.predictor.palette())) == written
    overlay = segmenter.overlay(SAMPLE)
    assert png_bytes(overlay) == (tmp_path / f"{SAMPLE.stem}_overlay.png").read_bytes()
    shares = segmenter.class_shares(SAMPLE)
    assert list(shares) == segmenter.class_names and abs(sum(shares.values()) - 1) < 1e-6


def test_the_segmenter_takes_paths_arrays_and_pil_images_of_any_size(segmenter):
    rgb = np.asarray(Image.open(SAMPLE).convert("RGB"))
    from_path = segmenter.predict(SAMPLE)
    assert np.array_equal(segmenter.predict(rgb), from_path)
    assert np.array_equal(segmenter.predict(Image.open(SAMPLE)), from_path)
    small = np.ascontiguousarray(rgb[::3, ::2])  # 120x240: resized in, class map back out
    assert segmenter.predict(small).shape == (120, 240)
    assert segmenter.image_size == (360, 480) and len(segmenter.class_colors) == 11
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        segmenter.predict(rgb.astype(np.float32))


def test_the_segmenter_loads_an_export_in_its_runtime(tmp_path):
    from enet_cli.api import Segmenter

    exported = invoke("export", "camvid", "--format", "tflite", "--out", tmp_path / "f32")
    assert exported.returncode == 0, exported.stderr
    tflite = Segmenter.load(tmp_path / "f32")
    assert tflite.predictor.runtime.value == "tflite"
    ours = tflite.predict(SAMPLE)
    theirs = Segmenter.load("camvid").predict(SAMPLE)
    assert np.mean(ours == theirs) > 0.999  # float32 TFLite: the same classes but near-ties


def test_an_unknown_model_is_one_clear_error():
    from enet_cli.api import Segmenter
    from enet_cli.core.errors import DataError

    with pytest.raises(DataError, match=r"preset \(camvid\)"):
        Segmenter.load("camvd")
