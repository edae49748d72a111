"""`enet train --init-from MODEL` (issue 34): fine-tuning starts from another model's weights.

The weights copied are compared with the source's, value for value: all of them for the
same classes; all but the classifier (left at this run's own initialisation) for others.
A source of another depth, an export, or a path that is no model is one line, before the
run directory is touched; a run that resumes its own checkpoint ignores --init-from.
"""

import numpy as np
import pytest

from enet_cli.artifacts.presets import preset
from enet_cli.artifacts.run import RunMeta, load_model_from_checkpoint
from enet_cli.core.config import ModelConfig
from enet_cli.core.errors import ConfigError
from enet_cli.model import build_enet
from enet_cli.train.optim import seed_everything
from enet_cli.train.warm_start import warm_start
from enet_testing import invoke

CAMVID = preset("camvid")


def _weights(model):
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def _meta(classes, size=(96, 128)):
    camvid = list(_camvid()[1].class_names)
    names = camvid if classes == 11 else [f"class{k}" for k in range(classes)]
    return RunMeta(
        model=ModelConfig(num_classes=classes),
        image_size=size,
        class_names=names,
        class_colors=[(k, k, k) for k in range(classes)],
        ignore_index=classes,
    )


def _camvid():
    model, meta, _ = load_model_from_checkpoint(CAMVID.directory)
    return model, meta


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_the_same_classes_copy_every_weight():
    source = _weights(_camvid()[0])
    seed_everything(1)
    model = build_enet(ModelConfig(num_classes=11), (96, 128))
    line = warm_start(model, _meta(11), "camvid")
    assert line == "initialised from camvid: every layer (the same 11 classes; trained at 360x480)"
    ours = _weights(model)
    assert ours.keys() == source.keys()
    assert all(_same(ours[name], source[name]) for name in source)


def test_other_classes_keep_a_fresh_classifier_and_copy_the_rest():
    source = _weights(_camvid()[0])
    seed_everything(2)
    model = build_enet(ModelConfig(num_classes=5), (96, 128))
    fresh = _weights(model)["fullconv"]
    line = warm_start(model, _meta(5), "camvid")
    assert "every layer but the classifier, re-initialised for this run's 5 classes" in line
    assert "camvid has 11: Sky, Building, Pole, Road, ..." in line, line
    ours = _weights(model)
    assert _same(ours["fullconv"], fresh)
    assert all(_same(ours[name], source[name]) for name in source if name != "fullconv")


def test_eleven_other_classes_are_other_classes_too():
    seed_everything(3)
    model = build_enet(ModelConfig(num_classes=11), (96, 128))
    fresh = _weights(model)["fullconv"]
    meta = _meta(11).model_copy(update={"class_names": [f"c{k}" for k in range(11)]})
    assert "but the classifier" in warm_start(model, meta, "camvid")
    assert _same(_weights(model)["fullconv"], fresh)


def test_a_source_of_another_depth_is_refused():
    model = build_enet(ModelConfig(num_classes=11, bottlenecks=(1, 3, 0, 1, 1)), (96, 128))
    meta = _meta(11).model_copy(update={"model": model_cfg_small()})
    before = _weights(model)
    with pytest.raises(ConfigError, match=r"--init-from camvid: its ENet differs .* depth"):
        warm_start(model, meta, "camvid")
    after = _weights(model)
    assert all(_same(after[name], before[name]) for name in before)  # nothing copied


def model_cfg_small():
    return ModelConfig(num_classes=11, bottlenecks=(1, 3, 0, 1, 1))


def test_train_says_what_it_started_from_and_a_resumed_run_ignores_it(segnet_data, tmp_path):
    run = tmp_path / "run"
    args = ["train", segnet_data, "--run-dir", run, "--init-from", "camvid", "--steps", "1",
            "--batch-size", "2", "--learning-rate", "1e-9"]  # fmt: skip
    first = invoke(*args)
    assert first.returncode == 0, first.stderr
    assert "initialised from camvid: every layer (the same 11 classes)" in first.stderr
    assert "starting from camvid's weights" in first.stderr
    # One step at lr 1e-9: the trained weights are the preset's (Adam moves each by ~lr;
    # batch norm's moving statistics do move, by their momentum, so they are not compared).
    trained, _, _ = load_model_from_checkpoint(run / "checkpoints")
    source = {layer.name: layer for layer in _camvid()[0].layers}
    for layer in (x for x in trained.layers if x.trainable_weights):
        theirs = {w.name: w.numpy() for w in source[layer.name].trainable_weights}
        assert len(theirs) == len(layer.trainable_weights)
        for ours in layer.trainable_weights:
            np.testing.assert_allclose(ours.numpy(), theirs[ours.name], atol=1e-6)
    again = invoke(*[a if a != "1" else "2" for a in args])
    assert again.returncode == 0, again.stderr
    assert "--init-from camvid not used: resuming this run" in again.stderr
    assert "initialised from" not in again.stderr


@pytest.mark.parametrize(
    "source, message",
    [
        ("nowhere/at-all", "does not exist"),
        ("camvd", "give a preset"),
    ],
)
def test_a_source_that_is_no_model_is_one_line_and_touches_nothing(
    source, message, segnet_data, tmp_path
):
    run = tmp_path / "run"
    result = invoke("train", segnet_data, "--run-dir", run, "--init-from", source, "--steps", "1")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "--init-from" in lines[0] and message in lines[0], lines
    assert not run.exists()


def test_a_run_directory_in_or_around_the_source_is_refused_and_nothing_written(
    segnet_data, tmp_path
):
    """--run-dir the preset's own directory (or a run given as its own --init-from) would
    write into the model it starts from: refused in one line, the source unchanged."""
    from enet_testing import tree

    before = tree(CAMVID.directory)
    for run in (CAMVID.directory, CAMVID.directory / "run"):
        result = invoke(
            "train", segnet_data, "--init-from", "camvid", "--run-dir", run, "--steps", "1"
        )
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert "--run-dir" in lines[0] and "the input" in lines[0], lines
    assert tree(CAMVID.directory) == before


def test_an_export_is_refused_as_a_source(tmp_path):
    exported = invoke("export", "camvid", "--format", "tflite", "--out", tmp_path / "f32")
    assert exported.returncode == 0, exported.stderr
    model = build_enet(ModelConfig(num_classes=11), (96, 128))
    with pytest.raises(ConfigError, match="export has lost what training needs"):
        warm_start(model, _meta(11), str(tmp_path / "f32"))


def test_a_job_starts_only_from_a_preset_its_wheel_carries(tmp_path):
    """enet launch: the preset's name travels as a hyperparameter (the job's wheel holds the
    presets: tests/test_presets.py); a path on this machine is refused before any upload."""
    from enet_cli.cloud.plan import make_plan
    from enet_cli.cloud.settings import LaunchConfig
    from enet_cli.train.settings import load_config

    plan = make_plan(load_config(None, {"train": {"init_from": "camvid"}}), LaunchConfig())
    assert plan.hyperparameters["init_from"] == "camvid"
    local = load_config(None, {"train": {"init_from": str(CAMVID.directory)}})
    with pytest.raises(ConfigError, match="starts only from a preset in the package"):
        make_plan(local, LaunchConfig())
