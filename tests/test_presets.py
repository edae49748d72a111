"""Presets (issue 34): a trained ENet that ships inside the package, by name wherever a MODEL
is taken.

The shipped weights must predict what the checkpoint they were packed from predicts: its
class maps of the bundled CamVid test images are fixtures (tests/fixtures/presets, written by
`benchmarks/pretrained.py pack` from that checkpoint), so wrong weights, a wrong class
order or a missing file fail here. The registry's figures must be what
`benchmarks/pretrained.py evaluate --write` measured (docs/results/pretrained_NAME.json).
"""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enet_testing import FIXTURES, REPO, enet_without_tensorflow, invoke

SAMPLES = REPO / "src" / "enet_cli" / "demo_data" / "camvid" / "test"


def test_enet_models_lists_the_presets_with_their_figures():
    from enet_cli.artifacts.presets import presets

    listed = invoke("models")
    assert listed.returncode == 0, listed.stderr
    assert "camvid" in listed.stdout and "360x480" in listed.stdout, listed.stdout
    assert "350,438" in listed.stdout and "52.0 (233 test images)" in listed.stdout
    as_json = invoke("models", "--json")
    assert as_json.returncode == 0, as_json.stderr
    found = json.loads(as_json.stdout)
    assert found == {n: p.model_dump(exclude={"name"}) for n, p in presets().items()}


def test_the_registry_states_what_the_weights_are_and_what_was_measured():
    from enet_cli.artifacts.presets import preset
    from enet_cli.artifacts.run import load_model_from_checkpoint

    camvid = preset("camvid")
    model, meta, _ = load_model_from_checkpoint(camvid.directory)
    assert camvid.parameters == sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert meta.image_size == (360, 480) and len(meta.class_names) == 11
    assert list(camvid.test.per_class_iou) == meta.class_names  # the weights' own order
    measured = json.loads((REPO / "docs" / "results" / "pretrained_camvid.json").read_text())
    assert measured["measured"] == camvid.test.model_dump()
    # Model weights only: no optimizer state, so well under a training checkpoint's size.
    size = sum(p.stat().st_size for p in camvid.directory.glob("ckpt-*"))
    assert size < 2 * 2**20, size


@pytest.mark.parametrize("install", ["full", "without TensorFlow"])
def test_predict_with_the_preset_gives_the_packed_checkpoints_class_maps(install, tmp_path):
    """With TensorFlow the preset's checkpoint runs; without (the edge install) its TFLite
    file in LiteRT: both give the class maps of the checkpoint it was packed from."""
    run = invoke if install == "full" else enet_without_tensorflow
    result = run("predict", "camvid", SAMPLES, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    said = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    runtime = "keras" if install == "full" else "tflite"
    assert f"(runtime {runtime})" in said, said
    golden = sorted((FIXTURES / "presets" / "camvid").glob("*_classes.png"))
    assert len(golden) == len(list(SAMPLES.glob("*.png"))) == 3
    for expected in golden:
        ours = np.asarray(Image.open(tmp_path / "out" / expected.name))
        theirs = np.asarray(Image.open(expected))
        assert ours.shape == theirs.shape == (360, 480)
        assert len(np.unique(theirs)) >= 5  # a real segmentation, not one class
        # Same weights and graph: equal but for near-tied logits on another machine's math.
        assert np.mean(ours == theirs) > 0.999, (expected.name, np.mean(ours == theirs))


def test_evaluate_and_export_take_the_preset_by_name(segnet_data, tmp_path):
    scored = invoke(
        "evaluate", "camvid", segnet_data, "--split", "val", "--json", tmp_path / "m.json"
    )
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "m.json").read_text())["mean_iou"] > 0.2
    exported = invoke("export", "camvid", "--format", "tflite", "--out", tmp_path / "f32")
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "f32" / "model.tflite").is_file()


def test_a_path_of_the_same_name_comes_before_the_preset(segnet_data, tmp_path):
    (tmp_path / "camvid").mkdir()  # e.g. the user's own folder, holding no model
    result = invoke("evaluate", "camvid", segnet_data, cwd=tmp_path)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "no trained ENet in camvid" in lines[0], lines  # the folder, not the preset
    assert "for the preset camvid, run enet outside this folder" in lines[0], lines


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_misspelt_preset_is_one_line_naming_the_known_ones(command, segnet_data, tmp_path):
    args = [segnet_data] if command == "evaluate" else ["--out", tmp_path / "out"]
    result = invoke(command, "camvd", *args, env={"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "camvd" in lines[0] and "preset (camvid)" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_the_package_wheel_carries_the_preset(tmp_path):
    from enet_cli.artifacts.presets import PRESETS_DIR
    from enet_cli.cloud import source

    wheel = source.build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as packed:
        names = set(packed.namelist())
    shipped = {
        "enet_cli/" + p.relative_to(PRESETS_DIR.parent).as_posix()
        for p in (PRESETS_DIR / "camvid").rglob("*")
        if p.is_file()
    }
    assert shipped | {"enet_cli/presets/presets.json"} <= names, sorted(names)[:20]
    assert {Path(n).suffix for n in shipped} >= {".index", ".tflite", ".json"}
