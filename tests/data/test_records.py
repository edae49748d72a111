"""The shards written and read without TensorFlow (data/records.py: `enet preprocess`
writes them, `enet evaluate` on an export reads them where TensorFlow is not installed):
TensorFlow's reader reads what the writer wrote, the reader gives exactly what TensorFlow's
gives, damage is named where TensorFlow names it, and a source PNG that needs no change is
stored as it is."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from enet_testing import FIXTURES, preprocess_to, read_records

pytestmark = pytest.mark.compat


def test_every_record_is_tensorflows(small_data):
    from enet_cli.data.manifest import load_manifest
    from enet_cli.data.records import batches, read_split

    manifest = load_manifest(small_data)
    for split, info in manifest.splits.items():
        records = read_split(small_data, manifest, split)
        ours = {name: (image, label) for name, image, label in records}
        theirs = read_records(small_data, split)  # tf.data and tf.io.parse_single_example
        assert sorted(ours) == sorted(theirs) and len(ours) == info.records > 0, split
        for name, (image, label) in theirs.items():
            assert ours[name][0].dtype == np.uint8 and ours[name][1].dtype == np.int32
            np.testing.assert_array_equal(ours[name][0], image, f"{split} {name}")
            np.testing.assert_array_equal(ours[name][1], label, f"{split} {name}")
    sizes = [len(images) for images, _ in batches(small_data, manifest, "val", 3)]
    assert sum(sizes) == manifest.splits["val"].records and max(sizes) == 3


def _damaged(small_data: Path, tmp_path: Path, where) -> Path:
    """A copy of the data whose first val shard has one byte flipped at `where(blob)`, its
    checksum in the manifest rewritten to match (damage after preprocess wrote it)."""
    from enet_cli.data.manifest import file_sha256

    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    shard = sorted(data.glob("val-*.tfrecord"))[0]
    blob = bytearray(shard.read_bytes())
    blob[where(blob)] ^= 0xFF
    shard.write_bytes(bytes(blob))
    manifest = data / "manifest.json"
    manifest.write_text(manifest.read_text().replace(
        json.dumps(file_sha256(small_data / shard.name)), json.dumps(file_sha256(shard))
    ))  # fmt: skip
    return shard


@pytest.mark.parametrize(
    "where", [lambda blob: len(blob) // 2, lambda blob: 3], ids=["data", "length"]
)
def test_a_damaged_record_is_named_at_tensorflows_offset(small_data, tmp_path, where):
    from enet_cli.core.backend import tf
    from enet_cli.core.errors import DataError
    from enet_cli.data.manifest import load_manifest
    from enet_cli.data.records import read_split

    shard = _damaged(small_data, tmp_path, where)
    data = shard.parent
    with pytest.raises(tf.errors.DataLossError) as theirs:
        for _ in tf.data.TFRecordDataset(str(shard)):
            pass
    offset = re.search(r"corrupted record at (\d+)", str(theirs.value)).group(1)
    with pytest.raises(DataError) as ours:
        list(read_split(data, load_manifest(data), "val"))
    assert str(ours.value) == (
        f"cannot read shard {shard} (corrupted record at {offset}); the data is corrupt: "
        "re-run enet preprocess"
    )


def test_a_shard_that_is_not_its_manifests_is_named(small_data, tmp_path):
    from enet_cli.core.errors import DataError
    from enet_cli.data.manifest import load_manifest
    from enet_cli.data.records import read_split

    data = Path(shutil.copytree(small_data, tmp_path / "data"))
    shard = sorted(data.glob("val-*.tfrecord"))[0]
    manifest = load_manifest(data)
    shard.write_bytes(shard.read_bytes()[:-1])  # cut short by one byte
    with pytest.raises(DataError, match=rf"shard {re.escape(str(shard))} does not match its"):
        list(read_split(data, manifest, "val"))


def test_tensorflow_reads_every_example_the_writer_wrote(tmp_path):
    """Bytes, ints, several records, an empty value: TFRecordDataset (which checks both
    CRCs of every record) and tf.io.parse_single_example get back what was written."""
    from enet_cli.core.backend import tf
    from enet_cli.data.records import ShardWriter, _frames

    rng = np.random.default_rng(0)
    written = [
        {"image": rng.bytes(int(n)), "name": f"r{k}".encode(), "height": int(n), "width": -k}
        for k, n in enumerate((0, 1, 300, 70_000))
    ]
    path = tmp_path / "shard.tfrecord"
    with ShardWriter(path) as writer:
        for features in written:
            writer.write(features)
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "name": tf.io.FixedLenFeature([], tf.string),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
    }
    read = [
        {key: value.numpy() for key, value in tf.io.parse_single_example(record, spec).items()}
        for record in tf.data.TFRecordDataset(str(path))
    ]
    assert read == written
    assert len(list(_frames(path))) == len(written)  # and our reader frames them the same


def test_a_source_png_that_decodes_to_the_record_is_stored_as_it_is(tmp_path):
    """At the source's size, an 8-bit RGB image and an 8-bit label whose values are the
    class indices go into the records byte for byte; what differs (a grey image, a 16-bit
    label, a resized pair) is re-encoded. Either way the record decodes to the pixels the
    source decodes to."""
    from PIL import Image

    source = tmp_path / "camvid"
    shutil.copytree(FIXTURES / "camvid-segnet-mini", source)
    grey = sorted((source / "val").glob("*.png"))[0]
    Image.open(grey).convert("L").save(grey)
    wide = sorted((source / "valannot").glob("*.png"))[1]
    Image.fromarray(np.asarray(Image.open(wide)).astype(np.uint16)).save(wide)  # I;16
    preprocess_to(source, tmp_path / "data", workers=1)
    for split in ("train", "val"):
        for name, (image, label) in read_records(tmp_path / "data", split).items():
            image_file = source / split / f"{name}.png"
            label_file = source / f"{split}annot" / f"{name}.png"
            expected = np.asarray(Image.open(image_file).convert("RGB"))
            np.testing.assert_array_equal(image, expected, name)
            np.testing.assert_array_equal(label, np.asarray(Image.open(label_file)), name)
    stored = _stored_pngs(tmp_path / "data", "val")
    for name, (image_png, label_png) in stored.items():
        image_file = (source / "val" / f"{name}.png").read_bytes()
        label_file = (source / "valannot" / f"{name}.png").read_bytes()
        assert (image_png == image_file) == (name != grey.stem), name
        assert (label_png == label_file) == (name != wide.stem), name

    preprocess_to(source, tmp_path / "small", workers=1, image_size=(96, 128))
    for name, (image_png, label_png) in _stored_pngs(tmp_path / "small", "val").items():
        assert image_png != (source / "val" / f"{name}.png").read_bytes()
        assert label_png != (source / "valannot" / f"{name}.png").read_bytes()


def _stored_pngs(data: Path, split: str) -> dict:
    """name -> (image PNG bytes, label PNG bytes) as the records hold them."""
    from enet_cli.core.backend import tf
    from enet_cli.data.dataset import FEATURES
    from enet_cli.data.manifest import load_manifest

    stored = {}
    for path in load_manifest(data).shard_paths(data, split):
        for record in tf.data.TFRecordDataset(str(path)):
            example = tf.io.parse_single_example(record, FEATURES)
            name = example["name"].numpy().decode()
            stored[name] = (example["image"].numpy(), example["label"].numpy())
    return stored
