"""What people see while a command works: progress on stderr, rich on a terminal, plain elsewhere.

Logs of SageMaker jobs and CI are not terminals: there a progress bar would be thousands of
carriage returns, so we print a few plain lines instead.
"""

import contextlib
import signal
import time
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def info(message: str) -> None:
    stderr.print(escape(message), soft_wrap=True)


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
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM (SageMaker's stop, a spot interruption, `kill`) raises
    KeyboardInterrupt like Ctrl-C does, so `finally` clean-ups run for both.

    Only the main thread can install handlers; elsewhere this is a no-op.
    """

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
