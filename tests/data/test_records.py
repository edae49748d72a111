"""The shards read without TensorFlow (data/records.py, for `enet evaluate` on an export
where TensorFlow is not installed) give exactly what TensorFlow's reader gives, and damage
is named where TensorFlow names it."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from enet_testing import read_records

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
