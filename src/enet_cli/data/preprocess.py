"""`enet preprocess`: a dataset in any layout (data/layouts/) -> per-split TFRecord shards +
manifest.json.

Decoding, class mapping, resizing and PNG encoding run in worker processes that import
only numpy and Pillow (started with "spawn": a worker inherits nothing of its parent's
threads); the parent writes the shards in TensorFlow's TFRecord framing (data/records.py),
in input order, so the output is the same whatever --workers is. Nothing here imports
TensorFlow.

The output appears all at once or not at all, and never replaces anything but an earlier
`enet preprocess` output (outputs.claim: staged in a hidden sibling, renamed into place at
the end, removed on any error or signal; a later run cleans up after a killed one).
"""

import collections
import concurrent.futures
import contextlib
import io
import itertools
import multiprocessing
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Deque, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

import numpy as np
from PIL import Image

from enet_cli import __version__
from enet_cli.core import outputs
from enet_cli.core.config import PreprocessConfig
from enet_cli.core.errors import DataError, Interrupted, reason
from enet_cli.core.processes import die_with_parent, usable_cores
from enet_cli.core.ui import Interrupts, info, track, warn
from enet_cli.data.classes import (
    ClassScheme,
    enet_class_weights,
    labels_to_classes,
    median_frequency_weights,
)
from enet_cli.data.layouts import Layout, open_layout
from enet_cli.data.manifest import (
    FORMAT_VERSION,
    ClassInfo,
    Manifest,
    ShardInfo,
    SplitInfo,
    file_sha256,
    write_manifest,
)
from enet_cli.data.records import ShardWriter
from enet_cli.pixels.preprocessor import resize_classes, resize_image

DEFAULT_WORKERS = 4  # processes when --workers is not given (fewer on fewer cores)
MAX_UNKNOWN_FRACTION = 0.001  # unexplained label pixels tolerated per split (become void)
RECORDS_PER_SHARD = 32


class Task(NamedTuple):
    split: str
    name: str
    image: Path
    label: Optional[Path]  # None: an unlabeled split, stored as all void
    scheme: ClassScheme
    size: Tuple[int, int]
    interpolation: str


class Converted(NamedTuple):
    name: str
    image_png: bytes
    label_png: bytes
    histogram: np.ndarray  # pixels per class index, void last, at the output size
    unknown_pixels: int  # label pixels no class explained, at the source size
    source_pixels: int
    read_as: str = "values"  # "colours" when the mask held colours


class SplitReport(NamedTuple):
    split: str
    images: int
    shards: int
    classes_present: int
    seconds: float
    labeled: bool = True

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


# ---------------------------------------------------------------------------------------
# One example (runs in a worker process)
# ---------------------------------------------------------------------------------------
def _open(path: Path, data: Optional[bytes] = None) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data) if data is not None else path)
        image.load()  # decode now: truncated files fail here, not later
        return image
    except Image.DecompressionBombError:
        raise DataError(
            f"{path} is too large to decode safely (more than {2 * Image.MAX_IMAGE_PIXELS:,} "
            f"pixels); resize it or remove it"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}; replace the file") from None


LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")  # WebP may be lossless, but labels need not risk it


def _check_lossless_label(label: Image.Image, path: Path) -> None:
    """Lossy compression changes pixel values near every edge: a JPEG label silently turns
    thousands of boundary pixels into other classes, or into colours no class has."""
    if label.format in LOSSY_FORMATS:
        raise DataError(
            f"label {path} is stored as {label.format}, a lossy format that alters class "
            f"values at edges; save labels as PNG (lossless)"
        )


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


# PNG colour types (the PNG specification, IHDR): what a file must be to be stored as it is.
PNG_GREY, PNG_RGB = 0, 2


def _png_as_stored(data: bytes, colour_type: int) -> bool:
    """Whether a PNG file's own bytes can go into a record unchanged: 8 bits per channel
    of `colour_type`, so every decoder (Pillow, TensorFlow's decode_png) reads exactly the
    pixels decoded here. Re-encoding the same pixels was most of the time of an input
    that needs no resizing (CamVid's SegNet copy)."""
    return (
        data[:8] == b"\x89PNG\r\n\x1a\n"
        and data[12:16] == b"IHDR"
        and data[24] == 8  # bit depth
        and data[25] == colour_type
    )


def _read_mask(path: Path, scheme: ClassScheme, data: bytes) -> np.ndarray:
    """A mask as class indices, read as indices or as colours by what the scheme knows:
    a palette PNG's indices are its classes when the scheme maps values (VOC), its colours
    when it maps colours only (a CamVid label saved with a palette)."""
    mask = _open(path, data)
    _check_lossless_label(mask, path)
    if (mask.mode == "P" and not scheme.values) or (mask.mode in ("RGB", "RGBA") and scheme.rgb):
        mask = mask.convert("RGB")
    elif mask.mode not in ("L", "P", "I", "I;16") or not scheme.values:
        wanted = "single-channel class indices" if scheme.values else "colour (RGB) images"
        raise DataError(
            f"{path} is a {mask.mode} image, but the masks of {scheme.source} are {wanted}"
        )
    return np.asarray(mask)


def convert_example(task: Task) -> Converted:
    """Decode one image/label pair, map labels to classes, resize, and encode both as PNG
    (or keep a file's own PNG bytes where they decode to exactly those pixels)."""
    image_file = task.image.read_bytes()
    image = _open(task.image, image_file).convert("RGB")
    label_file = b""
    if task.label is None:
        classes = np.full((image.size[1], image.size[0]), task.scheme.void_index, np.uint8)
        unknown, read_as = 0, "values"
        mask = classes
    else:
        label_file = task.label.read_bytes()
        mask = _read_mask(task.label, task.scheme, label_file)
        read_as = "colours" if mask.ndim == 3 else "values"
        classes, unknown = labels_to_classes(mask, task.scheme)
        if classes.shape != (image.size[1], image.size[0]):
            raise DataError(
                f"{task.image} is {image.size[0]}x{image.size[1]} but its label {task.label} "
                f"is {classes.shape[1]}x{classes.shape[0]}; they must be the same size"
            )
    resized = image.size != (task.size[1], task.size[0])
    pixels = resize_image(image, task.size, task.interpolation)
    classes = resize_classes(classes, task.size)
    histogram = np.bincount(classes.ravel(), minlength=task.scheme.void_index + 1)
    keep_image = not resized and _png_as_stored(image_file, PNG_RGB)
    keep_label = (
        not resized
        and _png_as_stored(label_file, PNG_GREY)
        and mask.dtype == np.uint8
        and np.array_equal(mask, classes)  # its values are already the class indices
    )
    return Converted(
        name=task.name,
        image_png=image_file if keep_image else _png(pixels),
        label_png=label_file if keep_label else _png(classes),
        histogram=histogram,
        unknown_pixels=unknown,
        source_pixels=image.size[0] * image.size[1],
        read_as=read_as,
    )


def _init_worker() -> None:
    """Ctrl-C reaches the whole process group: let the parent alone decide and clean up;
    and die with the parent, however it dies (a SIGKILL leaves no orphans behind)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Optional[concurrent.futures.Executor]]:
    """One pool for the whole run (None: convert in this process). Errors stop it at once."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker
    )
    try:
        yield pool
    except KeyboardInterrupt:  # a signal: stop now, even a worker stuck on a slow read
        processes = list((getattr(pool, "_processes", None) or {}).values())
        with _quiet_broken_pool():
            _shutdown(pool, wait=False)  # forgets its processes: they were taken above
            for process in processes:
                process.terminate()
            _shutdown(pool, wait=True)
        raise
    finally:
        # After an error: queued work is cancelled, the few conversions already running
        # finish (well under a second), and the workers exit.
        _shutdown(pool, wait=True)


def _shutdown(pool: concurrent.futures.ProcessPoolExecutor, wait: bool) -> None:
    if sys.version_info >= (3, 9):
        pool.shutdown(wait=wait, cancel_futures=True)
    else:
        pool.shutdown(wait=wait)


@contextlib.contextmanager
def _quiet_broken_pool() -> Iterator[None]:
    """Terminated workers make the executor's manager thread set an exception on futures
    that were cancelled, which raises InvalidStateError in that thread (CPython's own
    bug): its traceback would bury our one line. Drop just that one."""
    previous = threading.excepthook

    def hook(args) -> None:
        if not isinstance(args.exc_value, concurrent.futures.InvalidStateError):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        time.sleep(0.1)  # the manager thread notices the dead workers
        threading.excepthook = previous


IN_FLIGHT_PER_WORKER = 4  # conversions queued or done ahead of the writer, per worker


def _bounded_map(pool: concurrent.futures.Executor, fn, items: List[Task], window: int):
    """pool.map, in order, with at most `window` conversions submitted and not yet written:
    Executor.map submits everything at once, so a slow item (or a slow disk) would let
    finished PNGs pile up in memory; here memory is bounded whatever the dataset's size."""
    pending: Deque[concurrent.futures.Future] = collections.deque()
    queue = iter(items)
    for item in itertools.islice(queue, window):
        pending.append(pool.submit(fn, item))
    while pending:
        yield pending.popleft().result()
        # Only once the caller has written that result: until then it still holds memory.
        for item in itertools.islice(queue, 1):
            pending.append(pool.submit(fn, item))


def _convert_all(
    tasks: List[Task], pool: Optional[concurrent.futures.Executor], interrupts: Interrupts
) -> Iterator[Converted]:
    if pool is None:
        converted: Iterator[Converted] = map(convert_example, tasks)
    else:
        window = IN_FLIGHT_PER_WORKER * pool._max_workers  # type: ignore[attr-defined]
        converted = _bounded_map(pool, convert_example, tasks, window)
    for item in converted:
        interrupts.check()  # a signal whose KeyboardInterrupt a finalizer swallowed
        yield item


# ---------------------------------------------------------------------------------------
# Shards and the whole run
# ---------------------------------------------------------------------------------------
def _shard_sizes(records: int, shards: int) -> List[int]:
    base, extra = divmod(records, shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


def default_shards(records: int) -> int:
    return max(1, round(records / RECORDS_PER_SHARD))


class _SplitResult(NamedTuple):
    info: SplitInfo
    histogram: np.ndarray
    image_pixels: np.ndarray  # per class: pixels of the images in which the class occurs
    report: SplitReport


class _Totals:
    """What a split's examples add up to while they are written."""

    def __init__(self, classes: int):
        self.histogram = np.zeros(classes, dtype=np.int64)
        self.image_pixels = np.zeros(classes, dtype=np.int64)
        self.unknown: Dict[str, int] = {}
        self.unknown_kinds: Set[str] = set()
        self.source_pixels = 0
        self.shards: List[ShardInfo] = []

    def add(self, item: Converted) -> None:
        self.histogram += item.histogram
        self.image_pixels += np.where(item.histogram > 0, item.histogram.sum(), 0)
        self.source_pixels += item.source_pixels
        if item.unknown_pixels:
            self.unknown[item.name] = item.unknown_pixels
            self.unknown_kinds.add(item.read_as)


def _fill_shards(converted, sizes, split, cfg, out_dir: Path, acc: _Totals) -> None:
    height, width = cfg.image_size
    for index, count in enumerate(sizes):
        name = f"{split}-{index:05d}-of-{len(sizes):05d}.tfrecord"
        with ShardWriter(out_dir / name) as writer:
            for _ in range(count):
                item = next(converted)
                writer.write(
                    {
                        "image": item.image_png,
                        "label": item.label_png,
                        "name": item.name.encode(),
                        "height": height,
                        "width": width,
                    }
                )
                acc.add(item)
        acc.shards.append(ShardInfo(file=name, records=count, sha256=file_sha256(out_dir / name)))


def _check_unknown_pixels(split: str, acc: _Totals, scheme: ClassScheme, root: Path) -> None:
    """Few unexplained label pixels become void with a warning; more than 0.1% is an error."""
    total = sum(acc.unknown.values())
    if not total:
        return
    worst = sorted(acc.unknown.items(), key=lambda kv: -kv[1])[:3]
    examples = ", ".join(f"{name} ({count:,})" for name, count in worst)
    share = total / max(acc.source_pixels, 1)
    source = Path(scheme.source).name if Path(scheme.source).is_file() else scheme.source
    what = f"{' or '.join(sorted(acc.unknown_kinds))} not in {source}"
    message = (
        f"{split}: {total:,} label pixels ({share:.3%}) in {len(acc.unknown)} files of "
        f"{root} have {what}, e.g. {examples}"
    )
    if share > MAX_UNKNOWN_FRACTION:
        raise DataError(
            f"{message}; more than {MAX_UNKNOWN_FRACTION:.1%} of a split: fix the labels "
            f"or the classes"
        )
    warn(f"{message}; they become void (ignored)")


def _write_split(
    split: str,
    tasks: List[Task],
    labeled: bool,
    cfg: PreprocessConfig,
    out_dir: Path,
    root: Path,
    pool,
    interrupts: Interrupts,
) -> _SplitResult:
    start = time.monotonic()
    shards = min(cfg.shards or default_shards(len(tasks)), len(tasks))
    sizes = _shard_sizes(len(tasks), shards)
    classes = tasks[0].scheme.void_index + 1
    acc = _Totals(classes)
    converted = track(_convert_all(tasks, pool, interrupts), len(tasks), f"preprocess {split}")
    try:
        _fill_shards(converted, sizes, split, cfg, out_dir, acc)
        for _ in converted:  # drain: lets the progress display finish
            pass
    finally:
        converted.close()
    _check_unknown_pixels(split, acc, tasks[0].scheme, root)
    report = SplitReport(
        split=split,
        images=len(tasks),
        shards=shards,
        classes_present=int(np.count_nonzero(acc.histogram[:-1])),
        seconds=time.monotonic() - start,
        labeled=labeled,
    )
    unknown = sum(acc.unknown.values())
    info = SplitInfo(
        records=len(tasks), shards=acc.shards, unknown_label_pixels=unknown, labeled=labeled
    )
    return _SplitResult(info, acc.histogram, acc.image_pixels, report)


class _Plan(NamedTuple):
    layout: Layout
    scheme: ClassScheme
    tasks: Dict[str, List[Task]]
    labeled: Dict[str, bool]


def _plan(cfg: PreprocessConfig) -> _Plan:
    """The layout, the class scheme and every split's image/label pairs, checked."""
    layout = open_layout(cfg)
    splits = layout.checked_splits()
    scheme = layout.scheme()
    tasks = {
        split: [
            Task(
                split,
                pair.name,
                pair.image,
                pair.label,
                scheme,
                cfg.image_size,
                cfg.interpolation.value,
            )
            for pair in found.pairs
        ]
        for split, found in splits.items()
    }
    return _Plan(layout, scheme, tasks, {split: found.labeled for split, found in splits.items()})


def preprocess(cfg: PreprocessConfig) -> Tuple[Manifest, Layout, List[SplitReport]]:
    """Run the whole conversion; returns the manifest written, the layout found, split reports."""
    try:
        with Interrupts().raising() as interrupts, outputs.claim(
            cfg.output_dir, "preprocess", cfg.force, [cfg.input_dir], "OUTPUT_DIR"
        ) as staged:
            plan = _plan(cfg)
            layout = plan.layout
            images = sum(len(tasks) for tasks in plan.tasks.values())
            info(f"reading {images} images of the {layout.name} layout in {cfg.input_dir}")
            for split, labeled in plan.labeled.items():
                if not labeled:
                    info(f"{split}: no labels, kept for enet predict only")
            with worker_pool(_workers(cfg.workers)) as pool, _writing(cfg.output_dir):
                results = {
                    split: _write_split(
                        split,
                        tasks,
                        plan.labeled[split],
                        cfg,
                        staged.path,
                        layout.root,
                        pool,
                        interrupts,
                    )
                    for split, tasks in plan.tasks.items()
                }
                manifest = _manifest(cfg, layout, plan.scheme, results)
                write_manifest(manifest, staged.path)
                staged.publish()
    except KeyboardInterrupt:
        message = f"preprocess interrupted; nothing was written to {cfg.output_dir}"
        raise Interrupted(message) from None
    return manifest, layout, [result.report for result in results.values()]


def _workers(asked: Optional[int]) -> int:
    """Conversion processes: as many as asked, up to one per core (more only compete);
    not asked, one per core up to DEFAULT_WORKERS."""
    cores = usable_cores()
    if asked is None:
        return min(DEFAULT_WORKERS, cores)
    if asked > cores:
        info(f"--workers {asked}: this machine has {cores} CPU core(s); using {cores}")
    return min(asked, cores)


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """A full disk or a vanished directory while shards are written: one line."""
    try:
        yield
    except OSError as err:
        raise outputs.OutputError(
            f"cannot write OUTPUT_DIR {out}: {reason(err)}; free space or choose another "
            f"directory (nothing was written)"
        ) from None


def _manifest(cfg, layout: Layout, scheme: ClassScheme, results) -> Manifest:
    train = results["train"]
    histogram = train.histogram[:-1]
    return Manifest(
        format_version=FORMAT_VERSION,
        created_by=f"enet-cli {__version__}",
        source_layout=layout.name,
        source_dir=str(Path(cfg.input_dir).resolve()),
        scheme=scheme.name,
        image_size=cfg.image_size,
        interpolation=cfg.interpolation.value,
        classes=[ClassInfo(name=n, color=c) for n, c in zip(scheme.classes, scheme.colors)],
        ignore_index=scheme.void_index,
        void_color=scheme.void_color,
        splits={split: result.info for split, result in results.items()},
        train_pixel_histogram=[int(v) for v in histogram],
        train_void_pixels=int(train.histogram[-1]),
        class_weights={
            "enet": [float(w) for w in enet_class_weights(histogram)],
            "median": [
                float(w) for w in median_frequency_weights(histogram, train.image_pixels[:-1])
            ],
        },
    )
