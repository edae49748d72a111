"""`enet evaluate --tta`: the averaged class probabilities against a hand computation, the
option's parsing, and the command on a really trained model."""

import json

import numpy as np
import pytest

from enet_testing import invoke, one_error_line


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _tiny_model(seed=0, k=3):
    """A per-pixel linear model with a term that depends on the column, so that a mirrored
    view really differs: logits[n, y, x, c] = pixels[n, y, x] . W[:, c] + x * v[c]."""
    rng = np.random.RandomState(seed)
    w, v = rng.normal(size=(3, k)).astype(np.float32), rng.normal(size=k).astype(np.float32)

    def logits(images):
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        columns = tf.cast(tf.range(tf.shape(images)[2]), tf.float32)[None, None, :, None]
        return tf.einsum("nhwc,ck->nhwk", images, w) + columns * v * 0.1

    def by_hand(images):
        columns = np.arange(images.shape[2], dtype=np.float32)[None, None, :, None]
        return images @ w + columns * v * 0.1

    return logits, by_hand


@pytest.mark.compat
def test_flip_averages_the_probabilities_of_the_image_and_its_mirror():
    from enet_cli.serving.tta import TTA, tta_probabilities

    images = np.random.RandomState(1).rand(2, 8, 12, 3).astype(np.float32)
    logits, by_hand = _tiny_model()
    got = tta_probabilities(logits, images, TTA(flip=True)).numpy()
    mirrored = by_hand(images[:, :, ::-1])[:, :, ::-1]
    expected = (_softmax(by_hand(images)) + _softmax(mirrored)) / 2
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, _softmax(by_hand(images)), atol=1e-3)  # the mirror counted
    # Flip TTA is mirror-symmetric: the TTA of the mirrored image is the mirrored TTA.
    again = tta_probabilities(logits, images[:, :, ::-1], TTA(flip=True)).numpy()
    np.testing.assert_allclose(again[:, :, ::-1], got, atol=1e-6)


@pytest.mark.compat
def test_scales_resize_each_view_back_and_weigh_every_view_alike():
    import tensorflow as tf

    from enet_cli.serving.tta import TTA, tta_probabilities

    images = np.random.RandomState(2).rand(1, 16, 24, 3).astype(np.float32)
    logits, by_hand = _tiny_model(seed=3)
    got = tta_probabilities(logits, images, TTA(flip=True, scales=(0.5, 1.0))).numpy()
    views = []
    for scale, antialias in ((0.5, True), (1.0, False)):
        size = (round(16 * scale), round(24 * scale))
        scaled = tf.image.resize(images, size, "bilinear", antialias=antialias).numpy()
        for mirror in (False, True):
            view = scaled[:, :, ::-1] if mirror else scaled
            p = _softmax(by_hand(view))
            p = p[:, :, ::-1] if mirror else p
            views.append(tf.image.resize(p, (16, 24), "bilinear").numpy())
    np.testing.assert_allclose(got, np.mean(views, axis=0), atol=1e-5)
    assert got.shape == (1, 16, 24, 3)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)  # still probabilities


def test_the_tta_option_is_parsed_or_refused_in_one_line():
    from enet_cli.core.errors import ConfigError
    from enet_cli.serving.tta import parse_tta

    assert parse_tta("flip").model_dump() == {"flip": True, "scales": (1.0,)}
    both = parse_tta("flip,scales=0.75,1,1.25")
    assert both.flip and both.scales == (0.75, 1.0, 1.25) and both.views == 6
    assert parse_tta("scales=0.5,1,flip").scales == (0.5, 1.0)
    for text, needle in (
        ("flop", "'flop' is not flip or scales="),
        ("scales=0.5,big", "scale 'big' is not a number"),
        ("scales=0,1", "every scale must be above 0"),
        ("", "asks for nothing"),
    ):
        with pytest.raises(ConfigError, match=needle):
            parse_tta(text)


@pytest.mark.slow
def test_evaluate_with_flip_scores_the_hand_computed_predictions(trained_run, small_data, tmp_path):
    import tensorflow as tf

    from enet_cli.core.config import DataConfig
    from enet_cli.data.dataset import make_dataset
    from enet_cli.data.manifest import load_manifest
    from enet_cli.serving.runtimes import load_keras_model

    result = invoke(
        "evaluate", str(trained_run), str(small_data), "--split", "val", "--tta", "flip",
        "--json", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ms per image; TTA: flip (2 views)" in result.stdout and "ms per image" in result.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["tta"] == {"flip": True, "scales": [1.0]} and metrics["ms_per_image"] > 0

    model, _ = load_keras_model(trained_run)
    manifest = load_manifest(small_data)
    data = DataConfig(data_dir=small_data, image_size=manifest.image_size)
    k = manifest.num_classes
    by_hand, without = np.zeros((k, k), np.int64), np.zeros((k, k), np.int64)
    for images, labels in make_dataset(data, manifest, "val", 4, training=False):
        x = images.numpy()
        plain = tf.nn.softmax(model(x, training=False)).numpy()
        mirror = tf.nn.softmax(model(x[:, :, ::-1].copy(), training=False)).numpy()[:, :, ::-1]
        truth = labels.numpy()
        valid = truth != manifest.ignore_index
        np.add.at(by_hand, (truth[valid], np.argmax(plain + mirror, -1)[valid]), 1)
        np.add.at(without, (truth[valid], np.argmax(plain, -1)[valid]), 1)

    def moved(a, b):  # share of pixels counted in another cell
        return np.abs(a - b).sum() / 2 / a.sum()

    # The SavedModel's graph and eager Keras may split a near tie differently
    # (enet_testing.PIXELS_OFF_AT_A_TIE); the mirror's vote moves far more pixels than that.
    tool = np.array(metrics["confusion"])
    assert moved(tool, by_hand) <= 0.005, moved(tool, by_hand)
    assert moved(tool, without) > 0.02, moved(tool, without)

    refused = invoke("evaluate", str(trained_run), str(small_data), "--tta", "flop")
    one_error_line(refused, 2, r"--tta 'flop': 'flop' is not flip or scales=")
