"""The shards written and read without TensorFlow: `enet preprocess` writes them (its
process then never pays TensorFlow's import), and `enet evaluate` on a TFLite or ONNX model
reads them on a machine with the edge install, where TensorFlow is not installed; training
reads them with tf.data.

A shard is TFRecord framing around serialized `tf.train.Example`s. The framing is
TensorFlow's (tensorflow/core/lib/io/record_writer.h): a little-endian uint64 length, a
masked CRC-32C of the length, the data, a masked CRC-32C of the data; both CRCs are checked
(google-crc32c), so a record damaged after its shard's SHA-256 was written is named as
TensorFlow's reader names it. The Example is decoded by protobuf's runtime from a
descriptor of TensorFlow's example.proto built below, in a pool of its own, so it never
collides with TensorFlow's copy of the same message names when both are loaded.

The records come out as tf.data gives them to `make_dataset` (training=False): uint8
images, int32 labels, in the manifest's shard order. Layer 3 (data/): imports core/ only.
"""

import functools
import io
import struct
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Tuple, Union

import numpy as np

from enet_cli.core.errors import DataError, EnvironmentProblem
from enet_cli.data.manifest import Manifest, file_sha256

_HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_FOOTER = _CRC.size  # masked CRC of the data


@functools.lru_cache(maxsize=None)
def _example_class():
    """tensorflow.Example as a protobuf message class, from example.proto's fields."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    FieldProto = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="enet_cli/example.proto", package="tensorflow", syntax="proto3"
    )

    def message(container, name: str, *fields, oneof: str = ""):
        """Add message `name` to `container`: fields (number, name, type, label, type name)."""
        msg = container.add(name=name)
        if oneof:
            msg.oneof_decl.add(name=oneof)
        for number, field_name, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".tensorflow.{type_name}"
            if oneof:
                field.oneof_index = 0
        return msg

    top, message_field = proto.message_type, FieldProto.TYPE_MESSAGE
    repeated, optional = FieldProto.LABEL_REPEATED, FieldProto.LABEL_OPTIONAL
    message(top, "BytesList", (1, "value", FieldProto.TYPE_BYTES, repeated, ""))
    message(top, "FloatList", (1, "value", FieldProto.TYPE_FLOAT, repeated, ""))
    message(top, "Int64List", (1, "value", FieldProto.TYPE_INT64, repeated, ""))
    message(
        top,
        "Feature",
        (1, "bytes_list", message_field, optional, "BytesList"),
        (2, "float_list", message_field, optional, "FloatList"),
        (3, "int64_list", message_field, optional, "Int64List"),
        oneof="kind",
    )
    features = message(
        top, "Features", (1, "feature", message_field, repeated, "Features.FeatureEntry")
    )
    entry = message(
        features.nested_type,
        "FeatureEntry",
        (1, "key", FieldProto.TYPE_STRING, optional, ""),
        (2, "value", message_field, optional, "Feature"),
    )
    entry.options.map_entry = True  # map<string, Feature> feature = 1;
    message(top, "Example", (1, "features", message_field, optional, "Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("tensorflow.Example")
    try:
        from google.protobuf.message_factory import GetMessageClass
    except ImportError:  # protobuf < 4.21 (the SMP container's 3.19)
        from google.protobuf.message_factory import MessageFactory

        return MessageFactory(pool).GetPrototype(descriptor)
    return GetMessageClass(descriptor)


@functools.lru_cache(maxsize=None)
def _masked_crc():
    """TFRecord's checksum: CRC-32C, rotated right by 15 bits, plus a constant
    (tensorflow/core/lib/hash/crc32c.h: Mask)."""
    try:
        import google_crc32c
    except ImportError:
        raise EnvironmentProblem(
            "reading or writing the shards needs google-crc32c: "
            "pip install 'enet-cli[edge]' (or 'enet-cli[tensorflow]')"
        ) from None

    def masked(data) -> int:
        crc = google_crc32c.value(bytes(data))
        return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

    return masked


def _frames(path: Path) -> Iterator[bytes]:
    """The records of one TFRecord file, in order, each checked against its CRCs."""
    masked = _masked_crc()
    data = memoryview(path.read_bytes())
    offset = 0

    def corrupted(at: int) -> DataError:  # at: where the damaged part starts, as TF says
        return DataError(
            f"cannot read shard {path} (corrupted record at {at}); the data is corrupt: "
            "re-run enet preprocess"
        )

    while offset < len(data):
        start = offset + _HEADER.size
        if start > len(data):
            raise corrupted(offset)
        length, length_crc = _HEADER.unpack_from(data, offset)
        if masked(data[offset : offset + 8]) != length_crc:
            raise corrupted(offset)
        end = start + length
        if end + _FOOTER > len(data):
            raise corrupted(start)
        if masked(data[start:end]) != struct.unpack_from("<I", data, end)[0]:
            raise corrupted(start)
        yield bytes(data[start:end])
        offset = end + _FOOTER


class ShardWriter:
    """Examples into one TFRecord file, framed as TensorFlow's writer frames them (what
    `_frames` reads back and tf.data's TFRecordDataset checks). Use as a context manager."""

    def __init__(self, path: Path):
        self._masked = _masked_crc()
        self._example = _example_class()
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by __exit__)

    def write(self, features: Dict[str, Union[bytes, int]]) -> None:
        """One Example of single-value features: bytes as a BytesList, ints as an Int64List."""
        example = self._example()
        for key, value in features.items():
            feature = example.features.feature[key]
            if isinstance(value, bytes):
                feature.bytes_list.value.append(value)
            else:
                feature.int64_list.value.append(value)
        data = example.SerializeToString(deterministic=True)  # map keys sorted: same bytes
        length = _LENGTH.pack(len(data))
        self._file.write(length + _CRC.pack(self._masked(length)))
        self._file.write(data)
        self._file.write(_CRC.pack(self._masked(data)))

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def _png(data: bytes, path: Path, name: str, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            if what == "image":
                return np.asarray(picture.convert("RGB"))
            return np.asarray(picture)
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"cannot read shard {path} (the {what} of record {name!r} is not a readable PNG: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}); the data is "
            "corrupt: re-run enet preprocess"
        ) from None


def read_split(
    data_dir: Path, manifest: Manifest, split: str
) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """(name, uint8 HxWx3 image, int32 HxW label) for every record of `split`, each shard
    checked against its SHA-256 in the manifest before it is read."""
    example_class = _example_class()
    height, width = manifest.image_size
    for shard, path in zip(manifest.splits[split].shards, manifest.shard_paths(data_dir, split)):
        if not path.is_file():
            raise DataError(f"shard {path} listed in {data_dir / 'manifest.json'} is missing")
        if file_sha256(path) != shard.sha256:
            raise DataError(
                f"shard {path} does not match its checksum in {data_dir / 'manifest.json'}; "
                "the data is corrupt: re-run enet preprocess"
            )
        for record in _frames(path):
            example = example_class()
            try:
                example.ParseFromString(record)
                features = example.features.feature
                name = features["name"].bytes_list.value[0].decode()
                encoded: Dict[str, bytes] = {
                    key: features[key].bytes_list.value[0] for key in ("image", "label")
                }
            except Exception as err:  # protobuf's DecodeError, or a feature missing
                raise DataError(
                    f"cannot read shard {path} (a record is not an Example of enet preprocess: "
                    f"{type(err).__name__}); the data is corrupt: re-run enet preprocess"
                ) from None
            image = _png(encoded["image"], path, name, "image")
            label = _png(encoded["label"], path, name, "label")
            if image.shape[:2] != (height, width) or label.shape[:2] != (height, width):
                raise DataError(
                    f"record {name!r} of shard {path} is {image.shape[0]}x{image.shape[1]}, "
                    f"not the manifest's {height}x{width}; re-run enet preprocess"
                )
            yield name, image, label.reshape(height, width).astype(np.int32)


def batches(
    data_dir: Path, manifest: Manifest, split: str, batch_size: int
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(uint8 N x H x W x 3 images, int32 N x H x W labels); the last batch may be short."""
    for _, images, labels in named_batches(data_dir, manifest, split, batch_size):
        yield images, labels


def named_batches(
    data_dir: Path, manifest: Manifest, split: str, batch_size: int
) -> Iterator[Tuple[List[str], np.ndarray, np.ndarray]]:
    """`batches` with each record's name (the source image's, as preprocess stored it)."""
    names: List[str] = []
    images: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    for name, image, label in read_split(Path(data_dir), manifest, split):
        names.append(name)
        images.append(image)
        labels.append(label)
        if len(images) == batch_size:
            yield names, np.stack(images), np.stack(labels)
            names, images, labels = [], [], []
    if images:
        yield names, np.stack(images), np.stack(labels)
