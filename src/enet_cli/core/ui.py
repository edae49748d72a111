"""What people see while a command works: progress on stderr, rich on a terminal, plain elsewhere.

Logs of SageMaker jobs and CI are not terminals: there a progress bar would be thousands of
carriage returns, so we print a few plain lines instead.
"""

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

T = TypeVar("T")

# Rich lays out for 80 columns when it writes to a pipe or a file, so a table there would
# cut its cells short ("stage2_3_asymmetr...") and long lines would break in two. Without a
# terminal, and unless COLUMNS says otherwise, lines are as long as what they hold.
UNBOUNDED_WIDTH = 10_000


def _console(to_stderr: bool) -> Console:
    console = Console(stderr=to_stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = UNBOUNDED_WIDTH
    return console


stdout = _console(to_stderr=False)
stderr = _console(to_stderr=True)

# ENET_LOG_LEVEL=debug (what `enet --verbose` sets): every line TensorFlow prints, start-up
# and its C++ runtime's included, for a bug report; otherwise our lines only.
LOG_LEVEL_ENV = "ENET_LOG_LEVEL"


def verbose() -> bool:
    return os.environ.get(LOG_LEVEL_ENV, "").lower() == "debug"


def plural(count: int, word: str) -> str:
    """'1 epoch', '2 epochs'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def confirm(question: str) -> bool:
    """Ask yes/no on the terminal (rich's Confirm); False, without asking, when stdin is not
    a terminal: a script or a pipe never says yes by accident."""
    if not sys.stdin.isatty():
        return False
    from rich.prompt import Confirm

    return Confirm.ask(question, console=_console(True), default=False)


def info(message: str) -> None:
    stderr.print(escape(message), soft_wrap=True)


@contextlib.contextmanager
def status(description: str) -> Iterator[None]:
    """A spinner with `description` on a terminal, one plain line elsewhere, for long calls
    that report no progress of their own (conversions, compilations)."""
    if stderr.is_terminal:
        with stderr.status(escape(description)):
            yield
        return
    info(f"{description} ...")
    yield


def track(items: Iterable[T], total: int, description: str, unit: str = "images") -> Iterator[T]:
    """Yield `items`, showing progress: a rich bar on a terminal, else lines at 0/25/50/75/100%."""
    if stderr.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=stderr) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)
        return
    start = time.monotonic()
    marks = {max(1, total * q // 4) for q in (1, 2, 3)} | {total}
    info(f"{description}: 0/{total} {unit}")
    for done, item in enumerate(items, start=1):
        yield item
        if done in marks:
            rate = done / max(time.monotonic() - start, 1e-9)
            info(f"{description}: {done}/{total} {unit} ({rate:.1f} {unit}/s)")


@contextlib.contextmanager
def frame_progress(
    description: str, total: Optional[int], unit: str = "frames"
) -> Iterator[Callable[[int], None]]:
    """Yields advance(n_frames), called from a worker thread: a rich bar with frames/s and
    ETA on a terminal (no ETA when the length is unknown: a pipe), else a line at each
    quarter, or every 10 s without a length. `unit` names what is counted."""
    if stderr.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn() if total else TextColumn("{task.completed}"),
            TextColumn(unit),
            TextColumn(f"{{task.fields[rate]}} {unit}/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=stderr) as progress:
            task = progress.add_task(description, total=total, rate="-")
            start = time.monotonic()

            def advance(n: int) -> None:
                progress.advance(task, n)
                done = progress.tasks[0].completed
                rate = done / max(time.monotonic() - start, 1e-9)
                progress.update(task, rate=f"{rate:.1f}")

            yield advance
        return
    start, done, last = time.monotonic(), [0], [time.monotonic()]
    marks = {max(1, total * q // 4) for q in (1, 2, 3, 4)} if total else set()
    of = f"/{total}" if total else ""

    def advance_plain(n: int) -> None:
        before, done[0] = done[0], done[0] + n
        now = time.monotonic()
        crossed = any(before < mark <= done[0] for mark in marks)
        if crossed or (not total and now - last[0] >= 10):
            last[0] = now
            rate = done[0] / max(now - start, 1e-9)
            info(f"{description}: {done[0]}{of} {unit} ({rate:.1f} {unit}/s)")

    yield advance_plain


@contextlib.contextmanager
def byte_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields advance(n_bytes) (boto3's transfer Callback): a rich bar on a terminal, else a
    line at each quarter."""
    if stderr.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=stderr) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)
        return
    done, marks, lock = [0], [total * q // 4 for q in (1, 2, 3, 4)], threading.Lock()
    info(f"{description}: 0 of {total / 1e6:.1f} MB")

    def advance(n: int) -> None:  # boto3 calls it from its transfer threads
        with lock:
            before, done[0] = done[0], done[0] + n
            if any(before < mark <= done[0] for mark in marks):
                info(f"{description}: {done[0] / 1e6:.1f} of {total / 1e6:.1f} MB")

    yield advance


@contextlib.contextmanager
def _routed_to(handler, keep_ignored_sigint: bool) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` inside the block; the previous handlers come back
    after it. Only the main thread can install handlers (elsewhere nobody can signal us):
    there this changes nothing."""
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            ignored = signal.getsignal(sig) == signal.SIG_IGN
            if not (keep_ignored_sigint and sig == signal.SIGINT and ignored):
                previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Interrupts:
    """Inside `raising()`, SIGINT and SIGTERM raise KeyboardInterrupt, and stay raised.

    SIGTERM (SageMaker's stop, a spot interruption, `kill`) thus runs the same `finally`
    clean-ups as Ctrl-C. The signal is also remembered, because Python drops an exception
    raised while a finalizer (`__del__`, a weakref callback) happens to run: a Ctrl-C that
    lands there would be lost. `check()`, called between units of work, raises it again.
    A SIGINT the parent process ignores stays ignored (Python's own rule: background jobs
    of a shell must not die of the terminal's Ctrl-C). Only the main thread can install
    handlers; elsewhere `raising()` changes nothing.
    """

    def __init__(self) -> None:
        self.signal_name: str = ""

    def check(self) -> None:
        if self.signal_name:
            raise KeyboardInterrupt(self.signal_name)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        raise KeyboardInterrupt(self.signal_name)

    @contextlib.contextmanager
    def raising(self) -> Iterator["Interrupts"]:
        _raising.append(self)
        try:
            with _routed_to(self._handle, keep_ignored_sigint=True):
                yield self
        finally:
            _raising.remove(self)


_raising: "list[Interrupts]" = []  # those whose raising() block runs now (main's, at most)


def check_interrupts() -> None:
    """Raise again a signal that an active `Interrupts` received. Its KeyboardInterrupt can
    be lost (raised while a finalizer ran, or caught inside a library: seen once, an `enet
    export --force` killed while TensorFlow saved published the new export and then said
    it was removed), so what must not happen after a signal checks first: publishing an
    output over the earlier one."""
    for interrupts in _raising:
        interrupts.check()


class StopRequest:
    """Remembers SIGTERM/SIGINT so a loop can finish its step, checkpoint, and exit cleanly.

    A spot interruption or `StopTrainingJob` sends SIGTERM and SIGKILLs 120 s later: the
    loop checks `requested` after every step. A second Ctrl-C stops at once.
    """

    def __init__(self, then: str = "saving a checkpoint after this step") -> None:
        self.signal_name: str = ""
        self.then = then  # what happens now, for the one line that acknowledges the signal

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)

    def _handle(self, signum, frame) -> None:
        if self.signal_name and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        info(f"{self.signal_name} received: {self.then}")

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        with _routed_to(self._handle, keep_ignored_sigint=False):
            yield self


class StepProgress:
    """A training progress bar with loss and throughput on a terminal; silent elsewhere
    (logs get one metrics line per epoch instead of thousands of bar updates)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and stderr.is_terminal
        self._progress = None
        self._task = None

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        if not self.enabled:
            return
        self.close()
        self._progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=total, completed=done, loss="-", rate="-"
        )

    def advance(self, loss: float, images_per_sec: float) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task, advance=1, loss=f"{loss:.4f}", rate=f"{images_per_sec:.1f}"
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
