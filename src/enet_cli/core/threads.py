"""Hand-offs between threads that a consumer may abandon (an error, Ctrl-C): the video
pipeline of predict and evaluate's read-ahead."""

import queue
import threading


def put_unless_stopped(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` unless `stop` is set first (the consumer is gone); False when it was."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
