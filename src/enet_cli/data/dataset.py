"""The tf.data input: shards -> decoded, augmented, normalised, batched (images, labels).

`make_dataset` plays the role of Model Garden's `build_inputs(params, input_context)`: one
replica's (or one worker's) view of a split. Everything random is *stateless* and seeded
from (seed, epoch, record index), so an epoch is reproducible, a resumed run sees the same
order as an uninterrupted one, and the result does not depend on thread scheduling.

Element conventions: images float32 (N, H, W, 3) in [0, 1]; labels int32 (N, H, W) with
0..K-1 classes and K = void (the manifest's `ignore_index`).
"""

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from enet_cli.core.backend import tf
from enet_cli.core.config import DataConfig
from enet_cli.core.errors import DataError, reason
from enet_cli.data.manifest import Manifest, check_data
from enet_cli.pixels.preprocessor import pad_to_model, to_unit

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


def _decode(record, image_size):
    parsed = tf.io.parse_single_example(record, FEATURES)
    height, width = image_size
    image = tf.io.decode_png(parsed["image"], channels=3)
    label = tf.io.decode_png(parsed["label"], channels=1)
    image = tf.ensure_shape(image, [height, width, 3])
    label = tf.ensure_shape(label, [height, width, 1])
    return image, label, parsed["name"]


def _scale_flip_crop(image, label, seeds, flip, data: DataConfig, image_size, ignore_index: int):
    """Random scale, flip and crop back to the image size as ONE resampling per tensor.

    A window of 1/scale of the image (larger than the image when scale < 1: the outside
    becomes black image and void label) is placed at random and resampled to H x W,
    bilinear for the image and nearest for the label, at the same sample points, so they
    stay aligned. Swapping the window's left and right edges mirrors it: the flip is free.
    """
    height, width = image_size
    low, high = data.random_scale
    scale = tf.random.stateless_uniform([], seeds[1], low, high)
    extent = 1.0 / scale
    slack = 1.0 - extent  # negative when the window is larger than the image
    offsets = tf.random.stateless_uniform(
        [2], seeds[2], tf.minimum(slack, 0.0), tf.maximum(slack, 0.0) + 1e-9
    )
    y1, x1 = offsets[0], offsets[1]
    x_start = tf.where(flip, x1 + extent, x1)
    x_end = tf.where(flip, x1, x1 + extent)
    boxes = tf.reshape(tf.stack([y1, x_start, y1 + extent, x_end]), [1, 4])
    size = tf.constant([height, width])
    image = tf.image.crop_and_resize(image[None], boxes, [0], size, method="bilinear")[0]
    label = tf.image.crop_and_resize(
        label[None], boxes, [0], size, method="nearest", extrapolation_value=float(ignore_index)
    )[0]
    return image, label


def _jitter(image, seed, amount: float):
    """Brightness, contrast and saturation, torchvision-style: saturation blends with grey
    (TF's own random_saturation converts to HSV and back, several times slower)."""
    factors = tf.random.stateless_uniform([3], seed, 1.0 - amount, 1.0 + amount)
    image = image * factors[0]
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    image = (image - mean) * factors[1] + mean
    grey = tf.image.rgb_to_grayscale(image)
    image = (image - grey) * factors[2] + grey
    return tf.clip_by_value(image, 0.0, 1.0)


def _example_fn(
    data: DataConfig, image_size, ignore_index: int, augment: bool, epoch_seed: int, pad: bool
):
    """record (and its index) -> {image float32 [0,1] HxWx3, label int32 HxW, name}; `pad`:
    H and W padded to ENet's multiple of 8, the label with void (preprocessor.pad_to_model)."""

    def fn(index, record):
        image, label, name = _decode(record, image_size)
        if augment:
            seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
            seeds = tf.random.experimental.stateless_split(seed, 4)
            flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
            if data.random_scale is None:  # flip the uint8 tensors: 4x less to move
                image, label = tf.cond(
                    flip,
                    lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
                    lambda: (image, label),
                )
        image = to_unit(image)
        label = tf.cast(label, tf.float32)  # exact for values < 2**24
        if augment:
            if data.random_scale is not None:
                image, label = _scale_flip_crop(
                    image, label, seeds, flip, data, image_size, ignore_index
                )
            if data.color_jitter > 0:
                image = _jitter(image, seeds[3], data.color_jitter)
        height, width = image_size
        image = tf.ensure_shape(image, [height, width, 3])
        label = tf.ensure_shape(tf.cast(label[..., 0], tf.int32), [height, width])
        if pad:
            image, label = pad_to_model(image), pad_to_model(label, ignore_index)
        return {"image": image, "label": label, "name": name}

    return fn


@contextlib.contextmanager
def reading_shards(data_dir) -> Iterator[None]:
    """A shard that fails to read or decode (corrupted after its checksum was checked, or
    checks skipped) is one line naming the shard, not a TensorFlow traceback."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        first = reason(err)
        decoding = any(word in first for word in ("PNG", "png", "Feature", "record"))
        if isinstance(err, tf.errors.InvalidArgumentError) and not decoding:
            raise  # not the data's fault: a bug, keep its traceback
        shard = _unreadable_shard(Path(data_dir))
        where = f"shard {shard}" if shard is not None else f"the shards of {data_dir}"
        raise DataError(
            f"cannot read {where} ({first}); the data is corrupt: re-run enet preprocess"
        ) from None


def _unreadable_shard(data_dir: Path) -> Optional[Path]:
    """Which shard breaks TFRecord's framing (TensorFlow's error gives only an offset):
    each is read on its own, on this failure path only."""
    for shard in sorted(data_dir.glob("*.tfrecord")):
        try:
            for _ in tf.data.TFRecordDataset(str(shard)):
                pass
        except tf.errors.DataLossError:
            return shard
    return None


def make_examples(
    data: DataConfig,
    manifest: Manifest,
    split: str,
    training: bool,
    seed: int = 0,
    epoch: int = 0,
    input_context=None,
    skip: int = 0,
    pad: bool = False,
) -> tf.data.Dataset:
    """One epoch of unbatched examples {image, label, name} for this input pipeline.

    `skip` drops that many records from the front before decoding (a resumed epoch); the
    records after it get the same augmentation as in an uninterrupted epoch. `pad`: at
    ENet's size (training); otherwise at the data's, for models that pad themselves.
    """
    check_data(data, manifest)
    files = [str(p) for p in manifest.shard_paths(Path(data.data_dir), split)]
    epoch_seed = _epoch_seed(seed, epoch)
    if training:
        files = [files[i] for i in np.random.default_rng(epoch_seed).permutation(len(files))]
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(len(files), 4)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if training:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=epoch_seed, reshuffle_each_iteration=False)
    fn = _example_fn(
        data,
        tuple(manifest.image_size),
        manifest.ignore_index,
        training and data.augment,
        epoch_seed,
        pad,
    )
    # The index is the record's place in the GLOBAL order: it seeds the augmentation, and
    # pipeline i takes places i, i+n, i+2n...: so step k's batches of n data-parallel
    # workers together are exactly step k's batch of one process with the global batch,
    # augmented identically. Only the selected records are decoded.
    ds = ds.enumerate()
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if skip:
        ds = ds.skip(skip)
    ds = ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # We shard ourselves (above): tf.distribute must not shard again.
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
    skip_batches: int = 0,
    pad: bool = False,
) -> tf.data.Dataset:
    """Batched (images, labels) for one epoch; training drops the last partial batch.

    `skip_batches` resumes an epoch after that many batches of `batch_size`; `pad` as in
    make_examples.
    """
    ds = make_examples(
        data, manifest, split, training, seed, epoch, input_context, skip_batches * batch_size, pad
    )
    ds = ds.map(lambda e: (e["image"], e["label"]), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(AUTOTUNE)
