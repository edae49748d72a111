"""The training loop on real CamVid images: it learns, resumes exactly, stops cleanly."""

import json

import numpy as np
import pytest

from enet_cli.core.errors import ConfigError, DataError, TrainingError
from enet_cli.core.metrics import parse_metrics_line
from enet_cli.data.manifest import load_manifest
from enet_testing import SMALL_BOTTLENECKS, checkpoint_values, fit_quietly, train_config


def majority_baseline_miou(data_dir) -> float:
    """Val mean IoU of always predicting the most frequent train class."""
    import tensorflow as tf

    from enet_cli.data.dataset import FEATURES

    manifest = load_manifest(data_dir)
    major = int(np.argmax(manifest.train_pixel_histogram))
    counts = np.zeros(manifest.num_classes + 1, np.int64)
    for path in manifest.shard_paths(data_dir, "val"):
        for record in tf.data.TFRecordDataset(str(path)):
            label = tf.io.decode_png(tf.io.parse_single_example(record, FEATURES)["label"])
            counts += np.bincount(label.numpy().ravel(), minlength=len(counts))
    counts = counts[:-1]
    present = counts > 0
    iou = np.zeros(manifest.num_classes)
    iou[major] = counts[major] / counts.sum()  # union of "everything predicted major"
    return float(iou[present].mean())


@pytest.mark.slow
def test_training_learns_beyond_the_majority_class(small_data, tmp_path, capsys):
    cfg = train_config(small_data, tmp_path / "run", epochs=12, lr_schedule="constant")
    summary = fit_quietly(cfg)
    history = summary["history"]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    baseline = majority_baseline_miou(small_data)
    assert summary["best_val_mean_iou"] > baseline + 0.02, (summary["best_val_mean_iou"], baseline)
    # one metrics line per epoch, parsable with the SageMaker regexes, equal to metrics.json
    lines = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("enet-metrics:")
    ]
    assert len(lines) == 12
    parsed = [parse_metrics_line(line) for line in lines]
    for got, want in zip(parsed, history):
        assert got["epoch"] == want["epoch"]
        assert got["val_mean_iou"] == pytest.approx(want["val_mean_iou"], rel=1e-5)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["best_val_mean_iou"] == pytest.approx(summary["best_val_mean_iou"])
    assert (tmp_path / "run" / "model" / "saved_model.pb").is_file()
    assert list((tmp_path / "run" / "logs" / "val").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "checkpoints" / "best" / "checkpoint").is_file()


def deterministic_ops():
    """oneDNN's multi-threaded CPU kernels may sum in any order; make them repeatable so an
    interrupted run can be compared bit for bit-ish with an uninterrupted one (TF >= 2.8)."""
    import tensorflow as tf

    enable = getattr(tf.config.experimental, "enable_op_determinism", None)
    if enable is not None:
        enable()


def _same_state(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.compat
def test_a_resumed_run_says_where_it_resumed(small_data, tmp_path, capsys):
    """Stopped after step 1 and run again: it resumes at step 1 and says so; a run that
    silently started over would print "starting from scratch". That the resumed run ends
    where a straight run ends, variable for variable, at every step and after SIGTERM or
    SIGKILL, is test_every_step_resume.py's and test_every_step_sigkill.py's."""
    first = fit_quietly(train_config(small_data, tmp_path / "r", steps=1))
    assert first["steps"] == 1 and first["epochs_completed"] == 0
    capsys.readouterr()
    second = fit_quietly(train_config(small_data, tmp_path / "r", steps=2))
    said = capsys.readouterr().err
    assert f"resuming from {tmp_path / 'r' / 'checkpoints' / 'ckpt-1'} (epoch 1, step 1)" in said
    assert second["steps"] == 2
    later = checkpoint_values(tmp_path / "r" / "checkpoints")
    assert int(later["global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == 2
    assert int(later["step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE"]) == 2


def test_bad_inputs_are_one_line_errors(small_data, tmp_path):
    with pytest.raises(DataError, match="larger than the train split"):
        fit_quietly(train_config(small_data, tmp_path / "x", batch_size=64))
    with pytest.raises(DataError, match="does not exist"):
        fit_quietly(train_config(tmp_path / "nowhere", tmp_path / "x"))
    # checkpoints of another class count
    run = tmp_path / "y"
    fit_quietly(train_config(small_data, run, steps=1))
    meta = json.loads((run / "checkpoints" / "enet.json").read_text())
    meta["class_names"] = meta["class_names"][:5]
    (run / "checkpoints" / "enet.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="are for 5 classes but the data has 11"):
        fit_quietly(train_config(small_data, run, steps=2))


@pytest.mark.compat
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    small_data, tmp_path, monkeypatch
):
    from enet_cli.train import task as task_module

    run = tmp_path / "nan"
    fit_quietly(train_config(small_data, run, steps=2, checkpoint_every_steps=1))
    before = checkpoint_values(run / "checkpoints")
    # A numeric blow-up from step 3 on: the loss function itself returns NaN.
    original = task_module.SegmentationTask.loss_terms

    def exploding(self, logits, labels):
        loss_sum, weight_sum = original(self, logits, labels)
        return loss_sum * float("nan"), weight_sum

    monkeypatch.setattr(task_module.SegmentationTask, "loss_terms", exploding)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3 .*ckpt-2"):
        fit_quietly(train_config(small_data, run, steps=5))
    _same_state(before, checkpoint_values(run / "checkpoints"))


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_and_exports_float32(small_data, tmp_path, precision):
    summary = fit_quietly(
        train_config(small_data, tmp_path / precision, epochs=3, precision=precision)
    )
    losses = [epoch["loss"] for epoch in summary["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0], losses  # it learns
    from enet_cli.serving.runtimes import load_predictor

    predictor = load_predictor(tmp_path / precision)
    import tensorflow as tf

    logits = predictor.logits(tf.zeros((1, 96, 128, 3)))
    assert logits.dtype == tf.float32 and np.isfinite(logits.numpy()).all()
    # the global policy is restored for whatever runs next in this process
    from enet_cli.core.backend import keras

    assert keras.mixed_precision.global_policy().name == "float32"


def _first_batch_cross_entropy(data_dir, seed: int):
    """Per-pixel cross-entropy of the first training batch under the seeded initial model,
    and the pixels' labels (non-void only), computed here in float64."""
    from enet_cli.core.config import DataConfig, ModelConfig
    from enet_cli.data.dataset import make_dataset
    from enet_cli.model import build_enet
    from enet_cli.train.optim import seed_everything

    manifest = load_manifest(data_dir)
    seed_everything(seed)
    model = build_enet(
        ModelConfig(
            num_classes=manifest.num_classes,
            dropout=0,
            stage1_dropout=0,
            bottlenecks=SMALL_BOTTLENECKS,
        ),
        manifest.image_size,
    )
    data = DataConfig(data_dir=data_dir)
    images, labels = next(iter(make_dataset(data, manifest, "train", 4, True, seed=seed)))
    logits = model(images, training=True).numpy().astype(np.float64)
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.numpy().ravel()
    keep = labels != manifest.ignore_index
    logits, labels = logits[keep], labels[keep]
    top = logits.max(-1)
    log_sum = np.log(np.exp(logits - top[:, None]).sum(-1)) + top
    return log_sum - logits[np.arange(len(labels)), labels], labels


def test_class_weighting_is_the_loss_training_minimises(small_data, tmp_path):
    """--class-weighting none and median: the first step's loss is the reference recipe's
    weighted cross-entropy (sum of w[label] x CE / sum of w[label]) with the manifest's
    weights, computed here; and differs from the default (enet) weighting's."""
    manifest = load_manifest(small_data)
    ce, labels = _first_batch_cross_entropy(small_data, 5)
    weights = {
        "none": np.ones(manifest.num_classes),
        "median": np.asarray(manifest.class_weights["median"]),
        "enet": np.asarray(manifest.class_weights["enet"]),
    }
    expected = {k: float((w[labels] * ce).sum() / w[labels].sum()) for k, w in weights.items()}
    for weighting in ("none", "median"):
        run = tmp_path / weighting
        fit_quietly(
            train_config(
                small_data, run, steps=1, seed=5, dropout=0, stage1_dropout=0,
                class_weighting=weighting,
            )
        )  # fmt: skip
        values = checkpoint_values(run / "checkpoints")
        loss = float(values["epoch_loss_sum/.ATTRIBUTES/VARIABLE_VALUE"])
        assert loss == pytest.approx(expected[weighting], rel=1e-4), weighting
        assert abs(loss - expected["enet"]) > 1e-3 * loss, weighting  # the option mattered


def test_cosine_schedule_and_mid_epoch_validation(small_data, tmp_path, capsys):
    """The cosine schedule's lr at each epoch end, as Keras' CosineDecay defines it over the
    run's steps, and --val-every-steps validating inside epochs (not again at their ends)."""
    import math

    from enet_cli.core.metrics import parse_metrics_line

    capsys.readouterr()
    summary = fit_quietly(
        train_config(
            small_data, tmp_path / "run", epochs=2, lr_schedule="cosine", learning_rate=2e-3,
            val_every_steps=4,
        )
    )  # fmt: skip
    total = summary["steps"]
    assert total == 12
    for epoch in summary["history"]:
        expected = 2e-3 * 0.5 * (1 + math.cos(math.pi * epoch["step"] / total))
        assert epoch["lr"] == pytest.approx(expected, rel=1e-5, abs=1e-12), epoch
    lines = [parse_metrics_line(x) for x in capsys.readouterr().out.splitlines()]
    lines = [x for x in lines if x]
    mid = [x["step"] for x in lines if "loss" not in x and "val_loss" in x]
    assert mid == [4, 8]  # steps 4 and 8 are inside epochs; step 12 ends the run
    assert [x["step"] for x in lines if "loss" in x] == [6, 12]
