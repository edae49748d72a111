"""What `enet predict` (and `enet invoke`) take and where their outputs go, checked before
any model loads: the inputs (files, folders searched recursively, `-` for a raw frame
stream), the names outputs get, and the refusals that name the input or option. No
TensorFlow here: a mistake is reported in a fraction of a second.
"""

from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from pydantic import BaseModel

from enet_cli.core import outputs
from enet_cli.core.errors import ConfigError, DataError, OutputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
STDIN = Path("-")
ClassesVideo = ("png", "ffv1")


class PredictOptions(BaseModel):
    """What `enet predict` was asked for, beyond the model and the inputs."""

    out: Path = Path("predictions")
    batch: int = 4  # frames per inference call
    classes_video: Optional[str] = None  # png | ffv1: also write a video's class maps
    summary: Optional[Path] = None  # per input and frame, each class's share (.csv or .json)
    glob: str = "*"  # which files of a directory (searched recursively)
    stream_size: Optional[Tuple[int, int]] = None  # (height, width) of raw frames on stdin
    stream_rate: float = 30.0  # their frames per second
    fps_counter: bool = True  # draw the processing rate into video overlays

    def check(self, kept: Sequence[Path] = ()) -> None:
        """`kept`: the model's files, which no output may replace."""
        if self.classes_video is not None and self.classes_video not in ClassesVideo:
            raise ConfigError(
                f"--classes-video {self.classes_video!r} is not one of {', '.join(ClassesVideo)}"
            )
        if self.summary is not None:
            if Path(self.summary).suffix.lower() not in (".csv", ".json"):
                raise ConfigError(f"--summary {self.summary}: name a .csv or .json file")
            outputs.check_file_target(Path(self.summary), "--summary", kept)
        if self.stream_rate <= 0:
            raise ConfigError(f"--fps {self.stream_rate} must be above 0")


def _wanted(path: Path) -> bool:
    from enet_cli.serving.video import VIDEO_SUFFIXES

    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def collect_inputs(inputs: Iterable[Path], glob: str = "*") -> List[Path]:
    """Files as given, directories searched recursively for images and videos matching
    `glob` (sorted), `-` for stdin; errors name the path, before any work."""
    found: List[Path] = []
    for item in inputs:
        item = Path(item)
        if item == STDIN:
            found.append(item)
        elif item.is_dir():
            inside = sorted(p for p in item.rglob(glob) if p.is_file() and _wanted(p))
            if not inside:
                raise DataError(
                    f"no images or videos matching {glob!r} in directory {item} (or below)"
                )
            found.extend(inside)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"input {item} does not exist")
    if found.count(STDIN) > 1:
        raise ConfigError("- (stdin) can be given once")
    seen: dict = {}
    for path in found:  # outputs are named by stem: two inputs must not share one
        other = seen.setdefault(output_stem(path), path)
        if other != path:
            raise DataError(
                f"inputs {other} and {path} would both be written as {output_stem(path)}_*; "
                f"predict them into different --out directories or rename one"
            )
    return found


def require_video_support(inputs: List[Path], stream_size: Optional[Tuple[int, int]]) -> None:
    """PyAV when any input is a video or a stream, and a stream's frame size: said before a
    model is loaded."""
    from enet_cli.serving import video

    if STDIN in inputs and stream_size is None:
        raise ConfigError(
            "- reads raw RGB frames from stdin: give their size with --stream-size HEIGHTxWIDTH"
        )
    if any(p == STDIN or video.is_video(p) for p in inputs):
        video.require_av()


def check_inputs_kept(inputs: List[Path], out_dir: Path) -> None:
    """No output may replace an input (`a.png` and `a_overlay.png` in the --out folder)."""
    given = {p.resolve() for p in inputs if p != STDIN}
    for path in inputs:
        for suffix in ("_classes.png", "_overlay.png", "_overlay.mp4", "_classes.mkv"):
            target = (Path(out_dir) / f"{output_stem(path)}{suffix}").resolve()
            if target in given:
                raise OutputError(
                    f"--out {out_dir}: predicting {path} would overwrite the input {target}; "
                    f"choose another --out"
                )


def output_stem(path: Path) -> str:
    return "stdin" if path == STDIN else path.stem


def check_out_dir(out_dir: Path, kept: Sequence[Path] = ()) -> None:
    """--out must be (or become) a directory we can write into, outside the model (`kept`):
    checked before any work."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file; give a directory")
    outputs.check_apart(out_dir, kept, "--out", may_contain=True)  # new files only
    outputs.check_file_target(out_dir / "x_classes.png", "--out")
