"""The tf.data input: alignment under augmentation, sharding, determinism, manifest checks."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from enet_cli.core.backend import tf
from enet_cli.core.config import DataConfig
from enet_cli.core.errors import DataError
from enet_cli.data.dataset import make_dataset, make_examples
from enet_cli.data.manifest import check_batch_size, load_manifest
from enet_testing import FIXTURES, preprocess_to


def examples(data_dir, split="train", training=True, **kwargs):
    seed = kwargs.pop("seed", 0)
    epoch = kwargs.pop("epoch", 0)
    ctx = kwargs.pop("input_context", None)
    cfg = DataConfig(data_dir=data_dir, **kwargs)
    manifest = load_manifest(data_dir)
    ds = make_examples(cfg, manifest, split, training, seed=seed, epoch=epoch, input_context=ctx)
    return [{k: v.numpy() for k, v in e.items()} for e in ds]


@pytest.mark.compat
def test_batches_have_the_documented_types(segnet_data):
    cfg = DataConfig(data_dir=segnet_data)
    manifest = load_manifest(segnet_data)
    batches = list(make_dataset(cfg, manifest, "train", 5, training=True))
    assert len(batches) == 24 // 5  # training drops the partial batch
    images, labels = batches[0]
    assert images.shape == (5, 360, 480, 3) and images.dtype == tf.float32
    assert labels.shape == (5, 360, 480) and labels.dtype == tf.int32
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0
    assert set(np.unique(labels.numpy())) <= set(range(12))
    evaluation = list(make_dataset(cfg, manifest, "val", 5, training=False))
    assert [int(b[0].shape[0]) for b in evaluation] == [5, 3]


def test_flip_keeps_image_and_label_aligned(segnet_data):
    plain = {e["name"]: e for e in examples(segnet_data, training=False)}
    flipped = unchanged = 0
    for e in examples(segnet_data, augment=True, seed=3):
        ref = plain[e["name"]]
        if np.array_equal(e["image"], ref["image"]):
            np.testing.assert_array_equal(e["label"], ref["label"])
            unchanged += 1
        else:
            np.testing.assert_array_equal(e["image"], ref["image"][:, ::-1])
            np.testing.assert_array_equal(e["label"], ref["label"][:, ::-1])
            flipped += 1
    assert flipped and unchanged and flipped + unchanged == 24


def _blocks_dataset(root, count=6):
    """A tiny SegNet-layout set whose image red channel encodes the label (label*20)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(count):
            label = np.kron(rng.integers(0, 12, size=(6, 8)), np.ones((8, 8), int)).astype("uint8")
            image = np.zeros((48, 64, 3), np.uint8)
            image[..., 0] = label * 20
            image[..., 1] = 255 - label * 20
            Image.fromarray(image).save(root / split / f"f{i}.png")
            Image.fromarray(label).save(root / f"{split}annot" / f"f{i}.png")
    return root


def test_scale_crop_and_jitter_keep_alignment(tmp_path):
    raw = _blocks_dataset(tmp_path / "raw")
    preprocess_to(raw, tmp_path / "data", image_size="48x64", workers=1)
    out = examples(tmp_path / "data", image_size="48x64", random_scale=(0.5, 2.0), seed=7)
    padded = checked = 0
    for e in out:
        label, red = e["label"], e["image"][..., 0] * 255
        # interior of label blocks: all 3x3 neighbours agree, so bilinear kept the exact value
        core = label[1:-1, 1:-1]
        same = np.ones_like(core, bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                same &= (
                    label[1 + dy : label.shape[0] - 1 + dy, 1 + dx : label.shape[1] - 1 + dx]
                    == core
                )
        inner = same & (core < 11)
        np.testing.assert_allclose(red[1:-1, 1:-1][inner], core[inner] * 20.0, atol=0.5)
        checked += inner.sum()
        padded += (label == 11).sum()  # scale < 1 pads with void
    assert checked > 1000 and padded > 0
    jitter = examples(tmp_path / "data", image_size="48x64", color_jitter=0.3, seed=7)
    plain = {e["name"]: e for e in examples(tmp_path / "data", image_size="48x64", training=False)}
    for e in jitter:
        ref = plain[e["name"]]
        assert np.array_equal(e["label"], ref["label"]) or np.array_equal(
            e["label"], ref["label"][:, ::-1]
        )
        assert e["image"].min() >= 0.0 and e["image"].max() <= 1.0


@pytest.mark.compat
@pytest.mark.parametrize("shards", [4, 1])
def test_two_workers_split_the_global_order(tmp_path, shards):
    """Worker i gets global places i, i+2, ...: the workers' k-th batches together are the
    k-th batch of one process with twice the batch, augmented identically."""
    data = tmp_path / "d"
    preprocess_to(FIXTURES / "camvid-kaggle-mini", data, shards=shards, workers=1)
    whole = examples(data, seed=1, augment=True)
    for index in range(2):
        ctx = SimpleNamespace(num_input_pipelines=2, input_pipeline_id=index)
        mine = examples(data, input_context=ctx, seed=1, augment=True)
        assert [e["name"] for e in mine] == [e["name"] for e in whole[index::2]]
        for a, b in zip(mine, whole[index::2]):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    assert sorted(e["name"] for e in whole) == sorted(
        e["name"] for e in examples(data, training=False)
    )


@pytest.mark.compat
def test_same_seed_same_stream_other_epoch_other_order(segnet_data):
    first = examples(segnet_data, seed=5, epoch=2)
    again = examples(segnet_data, seed=5, epoch=2)
    assert [e["name"] for e in first] == [e["name"] for e in again]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    later = examples(segnet_data, seed=5, epoch=3)
    assert [e["name"] for e in later] != [e["name"] for e in first]
    assert sorted(e["name"] for e in later) == sorted(e["name"] for e in first)


def test_manifest_problems_are_clear(segnet_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(segnet_data, data)
    manifest = json.loads((data / "manifest.json").read_text())

    with pytest.raises(DataError, match=r"no manifest\.json in"):
        load_manifest(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "missing")

    shard = data / manifest["splits"]["val"]["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    load_manifest(data)  # cheap check passes
    with pytest.raises(DataError, match="does not match its checksum"):
        load_manifest(data, verify_checksums=True)
    shard.unlink()
    with pytest.raises(DataError, match="is missing"):
        load_manifest(data)

    newer = dict(manifest, format_version=99)
    (data / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(DataError, match=r"format 99, newer .* upgrade enet-cli"):
        load_manifest(data)
    (data / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        load_manifest(data)


def test_size_and_batch_mismatches(segnet_data):
    manifest = load_manifest(segnet_data)
    with pytest.raises(DataError, match="differs from the preprocessed size 360x480"):
        make_dataset(
            DataConfig(data_dir=segnet_data, image_size="720x960"),
            manifest,
            "train",
            2,
            training=True,
        )
    with pytest.raises(DataError, match="--batch-size 30 is larger than the train split"):
        check_batch_size(manifest, "train", 30)
