"""`enet predict`: class maps and colour overlays for images, videos and frame streams.

Each picture is resized to the model's size by the one preprocessor, segmented, and the
logits are resized back (bilinear) before the argmax, so boundaries follow the original
resolution rather than blocky upscaled labels.

- An image gives two PNGs: `<name>_classes.png`, an indexed PNG whose pixel values are
  class indices and whose palette is the class colours (viewers show colours, programs read
  indices), and `<name>_overlay.png`: the photo under the class colours, with class
  boundaries drawn and a legend of the classes present, largest first, below it.
- A video (or `-`: raw RGB frames from a pipe) gives `<name>_overlay.mp4` at the source's
  size and frame rate, the legend and a frames-per-second counter drawn inside the frame,
  and with `classes_video` the class maps losslessly (`<name>_classes/` PNGs or
  `<name>_classes.mkv`). Frames are decoded, segmented in batches and encoded in three
  threads joined by bounded queues, so memory does not grow with the video's length.

An input that cannot be read is one warning naming it and the others go on; the report
counts it, and the command exits non-zero. Ctrl-C finishes the video being written (a
playable, shorter file) and stops.
"""

import csv
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from enet_cli.core import outputs, ui
from enet_cli.core.errors import DataError, OutputError, disk_full, reason
from enet_cli.core.threads import put_unless_stopped
from enet_cli.pixels.drawing import (
    PictureError,
    PictureTooLarge,
    decode_rgb,
    indexed_png,
    overlay,
    png_bytes,
    shares,
    video_overlay,
)
from enet_cli.pixels.preprocessor import Preprocessor, classes_at
from enet_cli.serving.inputs import (
    STDIN,
    PredictOptions,
    check_out_dir,
    collect_inputs,
    require_video_support,
)
from enet_cli.serving.runtimes import Predictor

# Frames a video's model segments at once, each on a share of the cores (runtimes.RuntimeCopies):
# the whole path's rate, measured by benchmarks/video.py. Images run one at a time on all
# cores, for the shortest wait.
VIDEO_PARALLEL = 2


def parallel_for(inputs: Iterable[Path]) -> int:
    """How many images the model should run at once for these inputs (collect_inputs')."""
    from enet_cli.serving.video import is_video

    return VIDEO_PARALLEL if any(p == STDIN or is_video(p) for p in inputs) else 1


class Prediction(NamedTuple):
    """What was written for one input."""

    source: Path
    kind: str  # image | video
    outputs: Tuple[Path, ...]  # overlay first
    class_fractions: dict  # over all its frames
    frames: int = 1
    frames_total: Optional[int] = 1  # what the input holds, when known
    seconds: float = 0.0

    @property
    def image(self) -> Path:  # the names the image-only API had
        return self.source

    @property
    def overlay_png(self) -> Path:
        return self.outputs[0]

    @property
    def classes_png(self) -> Path:
        return self.outputs[1]


class Skipped(NamedTuple):
    source: Path
    reason: str


class PredictReport(NamedTuple):
    predictions: List[Prediction]
    skipped: List[Skipped]
    interrupted: Optional[Prediction]  # the video Ctrl-C cut short


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------
# Segmenting and drawing
# ---------------------------------------------------------------------------------------
def segment_batch(predictor: Predictor, model_inputs: np.ndarray, size) -> np.ndarray:
    """Class index per pixel, (N, H, W) int32 at `size`, of uint8 model-size inputs: the
    runtime's own classes when the sizes agree, else its logits resized (bilinear) first."""
    size = (int(size[0]), int(size[1]))
    same = tuple(model_inputs.shape[1:3]) == size  # the model's output has its input's size
    logits, classes = predictor.run(model_inputs, logits=not same)
    if same:
        return classes
    return classes_at(logits, size)  # NumPy, as TensorFlow resizes: no TensorFlow needed


def segment(predictor: Predictor, rgb: np.ndarray) -> np.ndarray:
    """Class index per pixel of an (H, W, 3) uint8 image, at the image's own size."""
    preprocessor = Preprocessor(predictor.meta.image_size, predictor.meta.interpolation)
    return segment_batch(predictor, preprocessor.pixels(rgb)[None], rgb.shape[:2])[0]


def _save(image: Image.Image, path: Path) -> None:
    outputs.write_atomic(path, png_bytes(image))


# ---------------------------------------------------------------------------------------
# The summary: each class's share per input and frame
# ---------------------------------------------------------------------------------------
class ClassSharesLog:
    """Rows (input, frame, time, share per class): a CSV written as it goes (under a
    temporary name, renamed at the end), or JSON written at the end."""

    def __init__(self, path: Path, names: Sequence[str]):
        self.path, self.names = Path(path), list(names)
        self.json = self.path.suffix.lower() == ".json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.staged = outputs.StagedFile(self.path)
        self.inputs: List[dict] = []
        if not self.json:
            self.file = self.staged.temp.open("w", newline="")
            self.writer = csv.writer(self.file)
            self.writer.writerow(["input", "frame", "time_s", *self.names])

    def add(self, source: str, frame: int, time_s: float, classes: np.ndarray) -> None:
        k = len(self.names)
        shares = np.bincount(classes.ravel(), minlength=k)[:k] / classes.size
        if self.json:
            if not self.inputs or self.inputs[-1]["input"] != source:
                self.inputs.append({"input": source, "frames": []})
            row = {"frame": frame, "time_s": round(time_s, 4)}
            row["shares"] = dict(zip(self.names, (round(float(s), 6) for s in shares)))
            self.inputs[-1]["frames"].append(row)
        else:
            self.writer.writerow([source, frame, f"{time_s:.4f}", *(f"{s:.6f}" for s in shares)])

    def discard(self) -> None:
        if not self.json:
            self.file.close()
        self.staged.discard()

    def close(self) -> None:
        if self.json:
            text = outputs.json_text({"classes": self.names, "inputs": self.inputs})
            self.staged.temp.write_text(text)
        else:
            self.file.close()
        self.staged.publish()


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------
def _read_image(path: Path) -> np.ndarray:
    try:
        return decode_rgb(path.read_bytes())
    except OSError as err:
        raise DataError(f"cannot read image {path}: {err.strerror or err}") from None
    except PictureTooLarge as err:
        raise DataError(f"{path} is {err}") from None
    except PictureError as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def predict_image(predictor: Predictor, path: Path, out_dir: Path, summary=None) -> Prediction:
    start = time.monotonic()
    rgb = _read_image(path)
    classes = segment(predictor, rgb)
    palette, names = predictor.palette(), predictor.meta.class_names
    classes_png = out_dir / f"{path.stem}_classes.png"
    overlay_png = out_dir / f"{path.stem}_overlay.png"
    _save(indexed_png(classes, palette), classes_png)
    _save(overlay(rgb, classes, palette, names), overlay_png)
    if summary is not None:
        summary.add(str(path), 0, 0.0, classes)
    counts = np.bincount(classes.ravel(), minlength=len(names))
    seconds = time.monotonic() - start
    return Prediction(
        path, "image", (overlay_png, classes_png), shares(counts, names), 1, 1, seconds
    )


# ---------------------------------------------------------------------------------------
# Videos and streams
# ---------------------------------------------------------------------------------------
_END = object()


class _Failed(NamedTuple):
    error: BaseException


class _Rate:
    """Frames per second over the last second or so, for the counter drawn in the video."""

    def __init__(self) -> None:
        self.times: deque = deque(maxlen=32)

    def tick(self) -> float:
        self.times.append(time.monotonic())
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-6)


def predict_video(
    predictor: Predictor,
    source,
    options: PredictOptions,
    stop: ui.StopRequest,
    summary: Optional[ClassSharesLog] = None,
    advance: Callable[[int], None] = lambda n: None,
) -> Prediction:
    """Segment every frame of `source` (a video.FrameSource) into an overlay video (and the
    class maps); returns what was written. Stops early, keeping a playable file, when
    `stop` is requested."""
    from enet_cli.serving.video import PngSequence, VideoWriter

    out_dir = Path(options.out)
    palette, names = predictor.palette(), predictor.meta.class_names
    preprocessor = Preprocessor(predictor.meta.image_size, predictor.meta.interpolation)
    overlay_path = out_dir / f"{source.stem}_overlay.mp4"
    writers: list = []
    try:
        writers.append(VideoWriter(overlay_path, source.size, source.rate))
        if options.classes_video == "png":
            writers.append(PngSequence(out_dir / f"{source.stem}_classes", palette))
        elif options.classes_video == "ffv1":
            writers.append(
                VideoWriter(
                    out_dir / f"{source.stem}_classes.mkv", source.size, source.rate, "ffv1"
                )
            )
    except BaseException:
        for writer in writers:
            writer.close(keep=False)
        raise

    halt = threading.Event()  # tells the reader and writer threads to give up
    frames_in: queue.Queue = queue.Queue(maxsize=2 * options.batch)
    segmented: queue.Queue = queue.Queue(maxsize=2)
    counts = np.zeros(len(names), np.int64)
    written = [0]
    start = time.monotonic()

    def read() -> None:
        try:
            for frame in source:
                if frame.shape[:2] != tuple(source.size):  # a size change mid-stream
                    raise DataError(
                        f"{source.name}: frame {frame.shape[1]}x{frame.shape[0]} differs from "
                        f"the stream's {source.size[1]}x{source.size[0]}"
                    )
                if not put_unless_stopped(frames_in, (frame, preprocessor.pixels(frame)), halt):
                    return
            put_unless_stopped(frames_in, _END, halt)
        except BaseException as err:
            put_unless_stopped(frames_in, _Failed(err), halt)

    failure: List[BaseException] = []

    def write() -> None:
        rate = _Rate()
        try:
            while True:
                item = segmented.get()
                if item is _END:
                    return
                frames, classes = item
                for frame, frame_classes in zip(frames, classes):
                    fps = rate.tick()
                    note = f"{fps:5.1f} fps" if options.fps_counter and fps else ""
                    writers[0].write(video_overlay(frame, frame_classes, palette, names, note))
                    for extra in writers[1:]:
                        extra.write(frame_classes.astype(np.uint8))
                    counts[:] += np.bincount(frame_classes.ravel(), minlength=len(names))[
                        : len(names)
                    ]
                    if summary is not None:
                        summary.add(
                            source.name, written[0], written[0] / float(source.rate), frame_classes
                        )
                    written[0] += 1
                advance(len(frames))
        except BaseException as err:
            failure.append(err)
            halt.set()
            while segmented.get() is not _END:  # let the main thread finish
                pass

    reader = threading.Thread(target=read, name="enet-decode", daemon=True)
    writer = threading.Thread(target=write, name="enet-encode", daemon=True)
    reader.start()
    writer.start()
    # Up to predictor.parallel batches in flight, handed to the writer in order: with copies
    # of the model, a batch smaller than the copies (--batch 1) still keeps them all busy.
    inferring = ThreadPoolExecutor(predictor.parallel, thread_name_prefix="enet-batch")
    in_flight: deque = deque()

    def hand_over(keep: int) -> None:
        while len(in_flight) > keep:
            frames, classes = in_flight.popleft()
            segmented.put((frames, classes.result()))

    ended = finished = False
    try:
        while not (stop.requested or halt.is_set()):
            batch = []
            while len(batch) < options.batch:
                try:
                    item = frames_in.get(timeout=0.1 if batch else 0.2)
                except queue.Empty:
                    if batch or stop.requested or halt.is_set():
                        break
                    continue
                if item is _END:
                    ended = True
                    break
                if isinstance(item, _Failed):
                    raise item.error
                batch.append(item)
            if batch:
                pixels = np.stack([p for _, p in batch])
                classes = inferring.submit(segment_batch, predictor, pixels, source.size)
                in_flight.append(([frame for frame, _ in batch], classes))
                hand_over(keep=predictor.parallel - 1)
            if ended:
                break
        hand_over(keep=0)
        finished = True
    except KeyboardInterrupt:  # a second Ctrl-C: what is encoded so far is kept, playable
        finished = True
        raise
    finally:
        for _, classes in in_flight:  # cut short: batches not started are dropped
            classes.cancel()
        inferring.shutdown(wait=False)
        halt.set()
        segmented.put(_END)
        writer.join()
        reader.join(timeout=5)
        source.close()
        keep = finished and not failure
        for each in writers:
            try:
                each.close(keep=keep)
            except Exception as err:  # flushing the end of the file: a full disk, mostly
                failure.append(err)
                keep = False
    if failure:
        error = failure[0]
        if isinstance(error, OSError) or disk_full(error):
            for each in writers:  # nothing half-written stays
                each.close(keep=False)
            raise OutputError(
                f"cannot write {overlay_path}: {reason(error)}; {outputs.remedy(error)}"
            ) from None
        raise error
    if written[0] == 0:
        raise DataError(f"{source.name}: no frame could be decoded")
    return Prediction(
        source=Path(source.name),
        kind="video",
        outputs=tuple(w.file.path for w in writers),
        class_fractions=shares(counts, names),
        frames=written[0],
        frames_total=source.frames,
        seconds=time.monotonic() - start,
    )


# ---------------------------------------------------------------------------------------
# All inputs
# ---------------------------------------------------------------------------------------
def _open_source(path: Path, options: PredictOptions):
    from enet_cli.serving import video

    if path == STDIN:
        return video.stdin_frames(
            options.stream_size, Fraction(options.stream_rate).limit_denominator(1001)
        )
    return video.VideoFile(path)


def run_predict(
    predictor: Predictor,
    inputs: List[Path],
    options: PredictOptions,
    on_done: Callable[[Union[Prediction, Skipped]], None] = lambda r: None,
) -> PredictReport:
    """Predict every input (collect_inputs' list) into `options.out`."""
    from enet_cli.serving import video

    options.check()
    out_dir = Path(options.out)
    check_out_dir(out_dir)
    require_video_support(inputs, options.stream_size)  # before any work, not after the images
    created = outputs.make_dirs(out_dir, "--out")
    outputs.sweep_partials(out_dir)  # a killed earlier run's half-written files
    names = predictor.meta.class_names
    summary = ClassSharesLog(options.summary, names) if options.summary is not None else None
    images = [p for p in inputs if p != STDIN and not video.is_video(p)]
    try:
        report = _predict_all(predictor, inputs, images, options, summary, on_done)
    except BaseException:
        if summary is not None:
            summary.discard()
        raise
    finally:
        outputs.remove_empty(created)  # nothing predicted: no empty --out left behind
    if summary is not None:
        summary.close()
    return report


def _predict_all(predictor, inputs, images, options, summary, on_done) -> PredictReport:
    from enet_cli.serving import video

    out_dir = Path(options.out)
    done: List[Prediction] = []
    skipped: List[Skipped] = []
    interrupted = None
    with ui.StopRequest("finishing the file being written, then stopping").installed() as stop:
        if images:
            for path in ui.track(images, len(images), "predict"):
                try:
                    result: Union[Prediction, Skipped] = predict_image(
                        predictor, path, out_dir, summary
                    )
                    done.append(result)
                except DataError as err:
                    result = Skipped(path, str(err))
                    ui.warn(f"{err}; skipped")
                    skipped.append(result)
                on_done(result)
                if stop.requested:
                    break
        for path in [p for p in inputs if p not in images]:
            if stop.requested:
                break
            try:
                source = _open_source(path, options)
            except video.VideoError as err:
                item = Skipped(path, f"cannot read video {path}: {err}")
                ui.warn(f"{item.reason}; skipped")
                skipped.append(item)
                on_done(item)
                continue
            try:
                with ui.frame_progress(source.stem, source.frames) as advance:
                    result = predict_video(predictor, source, options, stop, summary, advance)
            except DataError as err:
                item = Skipped(path, str(err))
                ui.warn(f"{err}; skipped")
                skipped.append(item)
                on_done(item)
                continue
            for problem in [] if stop.requested else source.problems(result.frames):
                item = Skipped(path, problem)
                ui.warn(problem)
                skipped.append(item)
            done.append(result)
            on_done(result)
            if stop.requested:
                interrupted = result
    return PredictReport(done, skipped, interrupted)


def predict(predictor: Predictor, inputs: Iterable[Path], out_dir: Path) -> List[Prediction]:
    """Segment every input (files or directories) into `out_dir`; what was written."""
    report = run_predict(predictor, collect_inputs(inputs), PredictOptions(out=Path(out_dir)))
    if report.skipped:
        raise DataError(report.skipped[0].reason)
    return report.predictions
