"""Video in and out for `enet predict`: files through PyAV, raw RGB frames from a pipe.

PyAV binds FFmpeg's own libraries and its PyPI wheels bundle them (libx264 among them), so
`pip install 'enet-cli[video]'` is all a laptop needs: no system FFmpeg, no subprocess
plumbing, frames arrive as NumPy arrays, and a decoding error is an exception on the frame
it hit (imageio-ffmpeg pipes to an ffmpeg binary and sees only its exit status).

Outputs are written under a temporary name and renamed when closed, so a file named like
an output is always playable: at the end, or shorter after a Ctrl-C.
"""

import contextlib
import sys
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Tuple

import numpy as np

from enet_cli.core.errors import EnvironmentProblem
from enet_cli.core.outputs import StagedFile

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
EXTRA = "pip install 'enet-cli[video]'"
OVERLAY_CRF = "20"  # libx264 quality: visually lossless for overlays, ~10x smaller than PNGs
OVERLAY_PRESET = "veryfast"  # encoding must keep up with inference on a laptop


def require_av():
    try:
        import av
    except ImportError:
        raise EnvironmentProblem(f"video needs PyAV, which is not installed: {EXTRA}") from None
    av.logging.set_level(av.logging.PANIC)  # FFmpeg's own stderr lines: we report in ours
    return av


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


class VideoError(Exception):
    """The input is not a readable video; the message says why, in FFmpeg's words."""


class FrameSource:
    """Frames of one input as (H, W, 3) uint8 arrays, with what the output needs to match it."""

    name: str  # for messages
    stem: str  # for output names
    size: Tuple[int, int]  # (height, width)
    rate: Fraction  # frames per second
    frames: Optional[int]  # when the container says
    corrupt: int = 0  # frames that could not be decoded (skipped)

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def problems(self, decoded: int) -> List[str]:
        """What went wrong while reading all of it (`decoded` frames came out), one line each."""
        return []


class VideoFile(FrameSource):
    def __init__(self, path: Path):
        av = require_av()
        self.path = Path(path)
        self.name, self.stem = str(path), self.path.stem
        try:
            self.container = av.open(str(path))
        except (av.error.FFmpegError, OSError, ValueError) as err:
            raise VideoError(_reason(err)) from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError("it has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
        context = self.stream.codec_context
        self.size = (int(context.height), int(context.width))
        if not all(self.size):
            self.container.close()
            raise VideoError("its video stream has no frame size")
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        self.rate = Fraction(rate)
        self.frames = int(self.stream.frames) or None
        self.corrupt = 0
        # What the header promises, to notice a file cut short (Matroska counts no frames).
        self.expected = self.frames
        if self.expected is None and self.container.duration:
            seconds = self.container.duration / 1_000_000  # AV_TIME_BASE
            self.expected = round(seconds * float(self.rate))

    def problems(self, decoded: int) -> List[str]:
        found = []
        if self.corrupt:
            found.append(f"{self.name}: {self.corrupt} damaged packet(s) could not be decoded")
        if self.expected and decoded < self.expected - 1:
            found.append(
                f"{self.name}: ended after {decoded} of {self.expected} frames; the file is "
                f"truncated or damaged"
            )
        return found

    def __iter__(self) -> Iterator[np.ndarray]:
        av = require_av()
        try:
            packets = self.container.demux(self.stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    return
                except av.error.FFmpegError:  # a damaged container: what came before stands
                    self.corrupt += 1
                    return
                try:
                    for frame in packet.decode():
                        yield frame.to_ndarray(format="rgb24")
                except av.error.FFmpegError:
                    self.corrupt += 1
        finally:
            self.close()

    def close(self) -> None:
        self.container.close()


class RawFrames(FrameSource):
    """Raw RGB24 frames of a stated size from a pipe (`ffmpeg ... -f rawvideo -pix_fmt rgb24
    -`, a camera grabber): the input for live sources."""

    def __init__(self, stream: BinaryIO, size: Tuple[int, int], rate: Fraction, name="stdin"):
        self.stream, self.size, self.rate = stream, (int(size[0]), int(size[1])), Fraction(rate)
        self.name = self.stem = name
        self.frames = None
        self.corrupt = 0
        self.partial = 0  # bytes of an incomplete last frame

    def __iter__(self) -> Iterator[np.ndarray]:
        need = self.size[0] * self.size[1] * 3
        while True:
            data = _read_exactly(self.stream, need)
            if len(data) < need:
                self.partial = len(data)
                return
            yield np.frombuffer(data, np.uint8).reshape(*self.size, 3)

    def problems(self, decoded: int) -> List[str]:
        if not self.partial:
            return []
        return [f"{self.name}: the stream ended inside a frame ({self.partial} bytes); dropped"]


def _read_exactly(stream: BinaryIO, count: int) -> bytes:
    chunks, got = [], 0
    while got < count:
        chunk = stream.read(count - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def stdin_frames(size: Tuple[int, int], rate: Fraction) -> RawFrames:
    return RawFrames(sys.stdin.buffer, size, rate)


def _reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return str(text).strip().splitlines()[0][:160] if text else type(err).__name__


class VideoWriter:
    """H.264 in MP4 (what every player and browser plays) at the source's size and rate; a
    lossless `ffv1` in Matroska for class maps (gray: pixel value = class index)."""

    def __init__(self, path: Path, size: Tuple[int, int], rate: Fraction, codec: str = "h264"):
        av = require_av()
        self.file = StagedFile(path)
        self.frames = 0
        self._format = "gray" if codec == "ffv1" else "rgb24"
        self.container = av.open(str(self.file.temp), "w", format=_container_format(path))
        try:
            if codec == "ffv1":
                stream = self.container.add_stream("ffv1", rate=rate)
                stream.pix_fmt = "gray"
            else:
                stream = self.container.add_stream("libx264", rate=rate)
                # 4:2:0 (what players expect) needs even sides; other sizes keep full chroma.
                even = size[0] % 2 == 0 and size[1] % 2 == 0
                stream.pix_fmt = "yuv420p" if even else "yuv444p"
                stream.options = {"crf": OVERLAY_CRF, "preset": OVERLAY_PRESET}
            stream.height, stream.width = size
            stream.thread_type = "AUTO"
        except BaseException:
            self.container.close()
            self.file.discard()
            raise
        self.stream = stream

    def write(self, picture: np.ndarray) -> None:
        av = require_av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format=self._format)
        frame.pts = self.frames
        frame.time_base = 1 / Fraction(self.stream.average_rate or self.stream.rate)
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        """Flush and close; keep it (renamed into place) if asked and any frame was written.
        Whatever fails on the way (a full disk while flushing), the partial file goes."""
        if not (keep and self.frames):
            with contextlib.suppress(Exception):  # being thrown away: its errors do not matter
                self.container.close()
            self.file.discard()
            return
        try:
            try:
                for packet in self.stream.encode():
                    self.container.mux(packet)
            finally:
                self.container.close()
        except BaseException:
            self.file.discard()
            raise
        self.file.publish()


def _container_format(path: Path) -> str:
    return {".mkv": "matroska", ".mp4": "mp4"}[Path(path).suffix.lower()]


class PngSequence:
    """Class maps as indexed PNGs (`000000.png`, ...) in a folder: lossless, and readable
    without any video library."""

    def __init__(self, directory: Path, palette: np.ndarray):
        from PIL import Image

        self._image = Image
        self.file = StagedFile(directory)
        self.file.temp.mkdir(parents=True)
        self.palette = palette.reshape(-1).tolist()
        self.frames = 0

    def write(self, classes: np.ndarray) -> None:
        indexed = self._image.fromarray(classes.astype(np.uint8), mode="P")
        indexed.putpalette(self.palette)
        indexed.save(self.file.temp / f"{self.frames:06d}.png")
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        if keep and self.frames:
            self.file.publish()  # an earlier run's sequence is replaced as a whole
        else:
            self.file.discard()


def read_frames(path: Path) -> Tuple[List[np.ndarray], Fraction]:
    """Every frame of a video file and its rate (for tests and small clips)."""
    source = VideoFile(path)
    return list(source), source.rate
