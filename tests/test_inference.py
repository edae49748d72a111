"""enet evaluate and enet predict on a really trained model."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from enet_cli.core.config import DataConfig
from enet_cli.data.dataset import make_dataset
from enet_cli.data.manifest import load_manifest
from enet_cli.pixels.drawing import OVERLAY_ALPHA
from enet_cli.serving.evaluate import evaluate
from enet_cli.serving.predict import predict
from enet_cli.serving.runtimes import load_predictor
from enet_testing import (
    FIXTURES,
    SMALL_SIZE,
    assert_same_logits,
    error_lines,
    fit_quietly,
    invoke,
    preprocess_to,
    train_config,
)


@pytest.mark.parametrize("where", ["run", "model", "checkpoints"])
def test_evaluate_equals_numpy_on_the_models_own_predictions(trained_run, small_data, where):
    target = {
        "run": trained_run,
        "model": trained_run / "model",
        "checkpoints": trained_run / "checkpoints",
    }[where]
    metrics = evaluate(target, small_data, "val", batch_size=3)
    # Independent computation: predictions from the loaded model, confusion with numpy.
    predictor = load_predictor(target)
    manifest = load_manifest(small_data)
    k = manifest.num_classes
    expected = np.zeros((k, k), np.int64)
    cfg = DataConfig(data_dir=small_data, image_size=manifest.image_size)
    for images, labels in make_dataset(cfg, manifest, "val", 5, training=False):
        pred = np.argmax(predictor.logits(images).numpy(), -1).ravel()
        truth = labels.numpy().ravel()
        keep = truth != manifest.ignore_index
        np.add.at(expected, (truth[keep], pred[keep]), 1)
    np.testing.assert_array_equal(np.array(metrics["confusion"]), expected)
    tp = np.diag(expected)
    union = expected.sum(0) + expected.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    assert metrics["mean_iou"] == pytest.approx(iou.mean())
    assert metrics["pixel_accuracy"] == pytest.approx(tp.sum() / expected.sum())


@pytest.fixture(scope="module")
def worse_at_the_end(trained_run, small_data, tmp_path_factory):
    """A run whose last epochs are worse than its first ones, by construction: the shared
    2-epoch run (real labels), resumed for 2 more epochs on the same images with every
    training label replaced by one class (Bicyclist), at a high learning rate, so the model
    unlearns what validation (the real val split, in both datasets) asks for."""
    base = tmp_path_factory.mktemp("worse")
    poisoned = base / "poisoned"
    shutil.copytree(FIXTURES / "camvid-segnet-mini", poisoned)
    bicyclist = load_manifest(small_data).class_names.index("Bicyclist")
    for label in (poisoned / "trainannot").iterdir():
        shape = np.asarray(Image.open(label)).shape
        Image.fromarray(np.full(shape, bicyclist, np.uint8)).save(label)
    poisoned_data = base / "poisoned-data"
    preprocess_to(poisoned, poisoned_data, image_size=SMALL_SIZE, workers=1)
    run = base / "run"
    shutil.copytree(trained_run, run)
    fit_quietly(train_config(poisoned_data, run, epochs=4, learning_rate=0.05))
    return run


def test_the_saved_model_holds_the_best_checkpoints_weights_not_the_last(
    worse_at_the_end, small_data
):
    run = worse_at_the_end
    summary = json.loads((run / "metrics.json").read_text())
    history = summary["history"]
    val = [epoch["val_mean_iou"] for epoch in history]
    assert len(val) == 4 and max(val[:2]) > max(val[2:]), val  # the construction held
    best = max(history[:2], key=lambda epoch: epoch["val_mean_iou"])
    assert summary["exported_weights"].endswith(f"ckpt-{best['step']}")

    manifest = load_manifest(small_data)
    cfg = DataConfig(data_dir=small_data, image_size=manifest.image_size)
    images, _ = next(iter(make_dataset(cfg, manifest, "val", 2, training=False)))
    saved = load_predictor(run / "model").logits(images).numpy()
    best_weights = load_predictor(run / "checkpoints" / "best")
    latest = load_predictor(run / "checkpoints")
    assert saved.shape == (2, 96, 128, 11)
    assert summary["exported_weights"] == best_weights.source.split("checkpoint ", 1)[1]
    assert_same_logits(saved, best_weights.logits(images).numpy())  # ties: enet_testing
    assert not np.allclose(saved, latest.logits(images).numpy(), atol=1e-3)


def test_predict_writes_indexed_maps_and_overlays(trained_run, tmp_path):
    source = FIXTURES / "camvid-kaggle-mini" / "test"
    results = predict(load_predictor(trained_run), [source], tmp_path / "out")
    assert len(results) == 4
    meta = json.loads((trained_run / "model" / "enet.json").read_text())
    palette = np.array([*meta["class_colors"], meta["void_color"]], np.uint8)
    for r in results:
        original = np.asarray(Image.open(r.image).convert("RGB"))
        indexed = Image.open(r.classes_png)
        assert indexed.mode == "P" and indexed.size == (original.shape[1], original.shape[0])
        classes = np.asarray(indexed)
        assert classes.max() < 11
        pal = np.array(indexed.getpalette()[: 3 * 12], np.uint8).reshape(12, 3)
        np.testing.assert_array_equal(pal, palette)
        overlay = np.asarray(Image.open(r.overlay_png).convert("RGB")).astype(float)
        assert overlay.shape[1] == original.shape[1] and overlay.shape[0] > original.shape[0]
        # away from class boundaries, each pixel is the documented blend
        inner = np.ones(classes.shape, bool)
        inner[:, 1:] &= classes[:, 1:] == classes[:, :-1]
        inner[1:, :] &= classes[1:, :] == classes[:-1, :]
        expected = (1 - OVERLAY_ALPHA) * original + OVERLAY_ALPHA * palette[classes]
        diff = np.abs(overlay[: original.shape[0]] - np.round(expected))[inner]
        assert diff.max() <= 1.0
        assert abs(sum(r.class_fractions.values()) - 1.0) < 1e-9


def test_cli_evaluate_and_predict(trained_run, small_data, tmp_path):
    result = invoke(
        "evaluate",
        str(trained_run),
        str(small_data),
        "--split",
        "val",
        "--json",
        str(tmp_path / "m.json"),
        "--confusion-csv",
        str(tmp_path / "c.csv"),
    )
    assert result.returncode == 0, result.stderr
    assert "mean IoU" in result.stdout and "Bicyclist" in result.stdout
    saved = json.loads((tmp_path / "m.json").read_text())
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert len(rows) == 12 and rows[0].startswith("truth \\ predicted,Sky")
    assert sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) == saved["pixels"]

    image = FIXTURES / "camvid-segnet-mini" / "val"
    result = invoke("predict", str(trained_run / "model"), str(image), "--out", str(tmp_path / "p"))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "p").glob("*_overlay.png"))) == 8

    for args, needle in (
        (["evaluate", str(tmp_path), str(small_data)], "no trained ENet in"),
        (["predict", str(trained_run), str(tmp_path / "none.png")], "does not exist"),
    ):
        bad = invoke(*args)
        assert bad.returncode == 3
        assert error_lines(bad.stderr)[-1].startswith("error:") and needle in bad.stderr


def _strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_json_file_a_run_writes_is_strict_json(trained_run, small_data, tmp_path):
    """IoU of a class absent from a split is null, not NaN (which jq and browsers reject):
    every JSON file of a real run and of enet evaluate parses with a strict parser."""
    evaluate(trained_run, small_data, "val", 2, json_path=tmp_path / "val.json")
    files = [*sorted(trained_run.rglob("*.json")), tmp_path / "val.json"]
    assert len(files) >= 5
    for path in files:
        _strict_json(path)


def test_json_we_write_has_null_where_a_number_is_undefined():
    """The IoU of a class in neither the labels nor the predictions is NaN in the metrics;
    written, it is null, with NumPy numbers as plain numbers."""
    from enet_cli.core.metrics import segmentation_metrics
    from enet_cli.core.outputs import json_text

    confusion = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 0]])  # class 2: absent everywhere
    metrics = segmentation_metrics(confusion, ["a", "b", "c"])
    text = json_text({**metrics, "inf": float("inf"), "count": np.int64(3)})
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert parsed["iou"]["c"] is None and parsed["inf"] is None and parsed["count"] == 3
    assert parsed["iou"]["a"] == pytest.approx(5 / 8)
    assert parsed["mean_iou"] == pytest.approx((5 / 8 + 7 / 10) / 2)  # over present classes


def test_a_photo_predicted_at_its_own_size_is_seen_as_training_saw_it(trained_run, small_data):
    """Train/serve skew: `enet predict` on a raw 480x360 SegNet photo gives the class map of
    the same photo's preprocessed record (its stored 96x128 pixels through the same model,
    scores resized back the same way): the one preprocessor shrinks both with the area
    filter, so the inputs are the same pixels and every pixel's class agrees (held to
    99.9%). Non-antialiased bilinear, which predict used before, samples 4 of every ~14
    source pixels: a different input, and a different map."""
    from enet_cli.core.backend import tf
    from enet_cli.pixels.preprocessor import Preprocessor
    from enet_cli.serving.predict import segment

    manifest = load_manifest(small_data)
    data = DataConfig(data_dir=small_data)
    from enet_cli.data.dataset import make_examples

    records = make_examples(data, manifest, "test", False).batch(1)
    predictor = load_predictor(trained_run)
    compared = 0
    for record in records.take(3):
        image, name = record["image"], record["name"].numpy()[0].decode()
        photo = FIXTURES / "camvid-segnet-mini" / "test" / f"{name}.png"
        rgb = np.asarray(Image.open(photo).convert("RGB"))
        served = segment(predictor, rgb)
        assert served.shape == rgb.shape[:2]
        logits = Preprocessor.logits_to_size(predictor.logits(image), rgb.shape[:2])
        trained = tf.argmax(logits, axis=-1, output_type=tf.int32)[0].numpy()
        assert np.mean(served == trained) >= 0.999, photo
        assert np.array_equal(Preprocessor(manifest.image_size).pixels(rgb), to_uint8(image))
        skewed = tf.image.resize(rgb[None] / 255.0, manifest.image_size, method="bilinear")
        assert np.abs(skewed.numpy() - image.numpy()).max() > 0.1  # what the old path fed
        compared += 1
    assert compared == 3


def to_uint8(image) -> np.ndarray:
    return np.round(image.numpy()[0] * 255.0).astype(np.uint8)
