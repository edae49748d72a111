"""Child processes that cannot outlive the `enet` process that started them."""

import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child: the kernel sends it SIGKILL when its parent dies, however the parent dies
    (a SIGKILL of the parent included, which no clean-up code of ours can handle). Linux
    only; elsewhere children end when their work queue closes."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
