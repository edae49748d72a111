"""Child processes: how many this machine can run, and that none outlives the `enet`
process that started them."""

import os
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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, as a container or `taskset`
    sets it), the bound for worker processes."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1
