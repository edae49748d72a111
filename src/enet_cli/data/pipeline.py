"""The tf.data input: shards -> decoded, augmented, normalised, batched (images, labels).

`make_dataset` plays the role of Model Garden's `build_inputs(params, input_context)`: one
replica's (or one worker's) view of a split. Everything random is *stateless* and seeded
from (seed, epoch, record index), so an epoch is reproducible, a resumed run sees the same
order as an uninterrupted one, and the result does not depend on thread scheduling.

Element conventions: images float32 (N, H, W, 3) in [0, 1]; labels int32 (N, H, W) with
0..K-1 classes and K = void (the manifest's `ignore_index`).
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from enet_cli.backend import tf
from enet_cli.config import DataConfig
from enet_cli.data.manifest import Manifest
from enet_cli.errors import DataError

AUTOTUNE = tf.data.experimental.AUTOTUNE
SHUFFLE_BUFFER = 512  # serialized PNG records (~0.3 MB each at 360x480), not decoded images

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.string),
    "name": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
}


def _epoch_seed(seed: int, epoch: int) -> int:
    """A distinct 31-bit seed per (seed, epoch), stable across runs and TF versions."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def shard_files(files: List[str], input_context) -> Tuple[List[str], Optional[Tuple[int, int]]]:
    """Split the input between pipelines: by file when each gets one, else by record.

    Returns (files for this pipeline, record shard (count, index) or None).
    """
    if input_context is None or input_context.num_input_pipelines <= 1:
        return files, None
    count, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(files) >= count:
        return files[index::count], None
    return files, (count, index)


def _decode(record, image_size):
    parsed = tf.io.parse_single_example(record, FEATURES)
    height, width = image_size
    image = tf.io.decode_png(parsed["image"], channels=3)
    label = tf.io.decode_png(parsed["label"], channels=1)
    image = tf.ensure_shape(image, [height, width, 3])
    label = tf.ensure_shape(label, [height, width, 1])
    return {"image": image, "label": label, "name": parsed["name"]}


def _augment(example, seed, data: DataConfig, ignore_index: int):
    """Flip, scale-and-crop and colour jitter; image and label always move together."""
    image = tf.cast(example["image"], tf.float32) / 255.0
    label = tf.cast(example["label"], tf.float32)  # exact for values < 2**24
    height, width = data.image_size
    seeds = tf.random.experimental.stateless_split(seed, 4)

    both = tf.concat([image, label], axis=-1)
    both = tf.image.stateless_random_flip_left_right(both, seeds[0])
    image, label = both[..., :3], both[..., 3:]

    if data.random_scale is not None:
        low, high = data.random_scale
        scale = tf.random.stateless_uniform([], seeds[1], low, high)
        size = tf.cast(tf.round(tf.constant([height, width], tf.float32) * scale), tf.int32)
        image = tf.image.resize(image, size, method="bilinear")
        label = tf.image.resize(label, size, method="nearest")
        # Pad (image black, label void) where the scaled image is smaller than the crop.
        pad_h = tf.maximum(height - size[0], 0)
        pad_w = tf.maximum(width - size[1], 0)
        paddings = [[0, pad_h], [0, pad_w], [0, 0]]
        image = tf.pad(image, paddings)
        label = tf.pad(label, paddings, constant_values=float(ignore_index))
        both = tf.concat([image, label], axis=-1)
        both = tf.image.stateless_random_crop(both, [height, width, 4], seeds[2])
        image, label = both[..., :3], both[..., 3:]

    if data.color_jitter > 0:
        jitter = data.color_jitter
        parts = tf.random.experimental.stateless_split(seeds[3], 3)
        image = tf.image.stateless_random_brightness(image, jitter, parts[0])
        image = tf.image.stateless_random_contrast(image, 1 - jitter, 1 + jitter, parts[1])
        image = tf.image.stateless_random_saturation(image, 1 - jitter, 1 + jitter, parts[2])
        image = tf.clip_by_value(image, 0.0, 1.0)

    image = tf.ensure_shape(image, [height, width, 3])
    label = tf.ensure_shape(label, [height, width, 1])
    return {"image": image, "label": tf.cast(label, tf.uint8), "name": example["name"]}


def _normalise(example):
    image = example["image"]
    if image.dtype != tf.float32:
        image = tf.cast(image, tf.float32) / 255.0
    label = tf.cast(tf.squeeze(example["label"], -1), tf.int32)
    return {"image": image, "label": label, "name": example["name"]}


def make_examples(
    data: DataConfig,
    manifest: Manifest,
    split: str,
    training: bool,
    seed: int = 0,
    epoch: int = 0,
    input_context=None,
) -> tf.data.Dataset:
    """One epoch of unbatched examples {image, label, name} for this input pipeline."""
    if data.data_dir is None:
        raise DataError("no data directory given; pass DATA_DIR (the output of enet preprocess)")
    if tuple(data.image_size) != tuple(manifest.image_size):
        raise DataError(
            f"--size {data.image_size[0]}x{data.image_size[1]} differs from the preprocessed "
            f"size {manifest.image_size[0]}x{manifest.image_size[1]} in {data.data_dir}; "
            f"re-run enet preprocess with --size or drop --size"
        )
    files = [str(p) for p in manifest.shard_paths(Path(data.data_dir), split)]
    epoch_seed = _epoch_seed(seed, epoch)
    if training:
        files = [files[i] for i in np.random.default_rng(epoch_seed).permutation(len(files))]
    files, record_shard = shard_files(files, input_context)

    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(len(files), 4)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if record_shard is not None:
        ds = ds.shard(*record_shard)
    if training:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=epoch_seed, reshuffle_each_iteration=False)
    size = tuple(manifest.image_size)
    ds = ds.map(lambda r: _decode(r, size), num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and data.augment:
        ignore = manifest.ignore_index
        base = tf.constant([epoch_seed, 0], tf.int64)

        def augment(index, example):
            return _augment(example, base + tf.stack([0, index]), data, ignore)

        ds = ds.enumerate().map(augment, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.map(_normalise, num_parallel_calls=AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # We shard ourselves (above); tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def make_dataset(
    data: DataConfig,
    manifest: Manifest,
    split: str,
    batch_size: int,
    training: bool,
    seed: int = 0,
    epoch: int = 0,
    input_context=None,
) -> tf.data.Dataset:
    """Batched (images, labels) for one epoch; training drops the last partial batch."""
    ds = make_examples(data, manifest, split, training, seed, epoch, input_context)
    ds = ds.map(lambda e: (e["image"], e["label"]), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(AUTOTUNE)


def split_sizes(manifest: Manifest) -> Dict[str, int]:
    return {name: info.records for name, info in manifest.splits.items()}


def check_batch_size(manifest: Manifest, split: str, batch_size: int, option: str) -> None:
    """A training batch larger than the split would yield no batch at all: say so up front."""
    records = manifest.splits[split].records
    if batch_size > records:
        raise DataError(
            f"{option} {batch_size} is larger than the {split} split ({records} images); "
            f"use {option} {records} or less"
        )


def steps_per_epoch(manifest: Manifest, split: str, batch_size: int, training: bool) -> int:
    records = manifest.splits[split].records
    return records // batch_size if training else -(-records // batch_size)
