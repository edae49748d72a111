"""Any image size: ENet runs at multiples of 8, so other sizes are padded at the bottom and
right (void in labels) and the logits cropped back, in training, evaluate, predict, the
SavedModel and TFLite. PyTorch-ENet's CamVid size 180x240 and an odd 181x243 are tested."""

import json

import numpy as np
import pytest
from PIL import Image

from enet_cli.core.backend import tf
from enet_cli.core.config import DataConfig, ModelConfig
from enet_cli.data.dataset import make_dataset
from enet_cli.data.manifest import load_manifest
from enet_cli.model import build_enet
from enet_cli.pixels.preprocessor import pad_to_model, run_padded
from enet_cli.train.settings import load_config
from enet_testing import FIXTURES, SMALL_BOTTLENECKS, fit_quietly, invoke, preprocess_to

ODD = (181, 243)


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("odd") / "data"
    preprocess_to(FIXTURES / "camvid-segnet-mini", out, image_size="181x243", workers=1)
    return out


@pytest.mark.parametrize("size", [(180, 240), ODD])
def test_run_padded_is_the_model_on_the_zero_padded_image_cropped(size):
    model = build_enet(ModelConfig(num_classes=3), None)
    images = tf.random.uniform((2, *size, 3), seed=4)
    logits = run_padded(model, images)
    assert tuple(logits.shape) == (2, *size, 3)
    pad_h, pad_w = -size[0] % 8, -size[1] % 8
    padded = tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    expected = model(padded, training=False)[:, : size[0], : size[1]]
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-5)
    exact = tf.zeros((1, 184, 248, 3))
    assert pad_to_model(exact) is exact  # a multiple of 8 already: not even an op


def test_training_batches_are_padded_with_void_and_evaluation_batches_are_not(odd_data):
    manifest = load_manifest(odd_data)
    assert manifest.image_size == ODD
    data = DataConfig(data_dir=odd_data, image_size=ODD)
    plain = next(iter(make_dataset(data, manifest, "val", 2, training=False)))
    padded = next(iter(make_dataset(data, manifest, "val", 2, training=False, pad=True)))
    assert tuple(plain[0].shape) == (2, *ODD, 3) and tuple(padded[0].shape) == (2, 184, 248, 3)
    np.testing.assert_array_equal(padded[0][:, :181, :243].numpy(), plain[0].numpy())
    np.testing.assert_array_equal(padded[1][:, :181, :243].numpy(), plain[1].numpy())
    assert not padded[0][:, 181:].numpy().any() and not padded[0][:, :, 243:].numpy().any()
    void = manifest.ignore_index
    assert (padded[1][:, 181:].numpy() == void).all()
    assert (padded[1][:, :, 243:].numpy() == void).all()


def test_an_odd_size_run_trains_evaluates_predicts_and_exports(odd_data, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(
        None,
        {
            "data": {"data_dir": odd_data, "image_size": "181x243"},
            "train": {"batch_size": 8, "epochs": 1, "learning_rate": 2e-3, "seed": 1},
            "model": {"bottlenecks": SMALL_BOTTLENECKS},
            "runtime": {"run_dir": run},
        },
    )
    summary = fit_quietly(cfg)
    # Padding is void: the run's validation (on padded batches) and evaluate (on the
    # images as they are, logits cropped) score the same pixels.
    scored = invoke("evaluate", str(run), str(odd_data), "--split", "val", "--json",
                      str(tmp_path / "val.json"))  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-2000:]
    evaluated = json.loads((tmp_path / "val.json").read_text())
    assert evaluated["mean_iou"] == pytest.approx(summary["final_val"]["mean_iou"], abs=1e-5)

    served = tf.saved_model.load(str(run / "model")).signatures["serving_default"]
    pixels = tf.zeros((1, *ODD, 3), tf.uint8)
    assert tuple(served(images=pixels)["logits"].shape) == (1, *ODD, 11)

    photo = FIXTURES / "camvid-segnet-mini" / "test" / "0001TP_007590.png"
    predicted = invoke("predict", str(run), str(photo), "--out", str(tmp_path / "pred"))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    classes = Image.open(next((tmp_path / "pred").glob("*classes*.png")))
    assert classes.size == Image.open(photo).size  # the photo's own size, 480x360

    exported = invoke("export", str(run), "--format", "tflite", "--out", str(tmp_path / "tfl"),
                        "--data", str(odd_data))  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "pixel agreement 99." in exported.stdout or "pixel agreement 100.00%" in exported.stdout
    from enet_cli.serving.runners import TFLiteRunner

    runner = TFLiteRunner(tmp_path / "tfl" / "model.tflite")
    assert runner.size == ODD  # what it takes is what the data is: the padding is inside
    logits, _ = runner(np.zeros((1, *ODD, 3), np.uint8))
    assert logits.shape == (1, *ODD, 11)
