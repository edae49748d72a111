"""`enet train --mode ddp --local-workers N`: a real multi-worker cluster on this machine.

Like `accelerate launch` / `torchrun`, the launcher starts N copies of the same `enet train`
command, each with a TF_CONFIG naming all N workers on 127.0.0.1 (free ports) and its own
index, and then only supervises: worker 0 (the chief) writes to this terminal, the others
to `<run-dir>/logs/worker-<i>.log`. It returns the chief's exit code. If any worker dies,
the rest are stopped at once (SIGKILL: blocked in a collective, they could save nothing)
and the launcher reports which worker and where its log is; a stop the user asks for is
SIGTERM, then SIGKILL after a grace period. Workers die with the launcher
(PR_SET_PDEATHSIG on Linux), so nothing is orphaned, and their temporary files live in one
directory the launcher removes.

The launcher itself never imports TensorFlow.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, List, Optional

from enet_cli.core import ui
from enet_cli.core.errors import PeerLost, TrainingError
from enet_cli.core.processes import die_with_parent

WORKER_ENV = "ENET_LOCAL_WORKER"  # set in workers: they train instead of launching again
POLL_SECONDS = 0.2
GRACE_SECONDS = 10.0  # after SIGTERM, before SIGKILL


def is_worker() -> bool:
    return WORKER_ENV in os.environ


def free_ports(count: int) -> List[int]:
    """Ports the OS hands out now (bound together so they differ); a tiny race remains, as
    with every launcher that picks ports this way."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child before exec: own process group (Ctrl-C reaches only the launcher, which
    forwards it once), and SIGKILL when the launcher dies, however it dies."""
    os.setpgrp()
    die_with_parent()


def _worker_env(cluster: List[str], index: int, threads: int, scratch: Path) -> dict:
    env = dict(os.environ)
    # Every temporary file of a worker (autograph's generated code, its scratch copy of the
    # run) under one directory the launcher removes, however the worker ended.
    env["TMPDIR"] = str(scratch)
    if not ui.verbose():
        # When a peer dies, TensorFlow's C++ runtime logs the aborted collectives at ERROR
        # level in each survivor; the launcher's one line says what happened instead.
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
    )
    env[WORKER_ENV] = str(index)
    # N processes share the cores: without this each would start a thread per core.
    env.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    env.setdefault("TF_NUM_INTEROP_THREADS", "2")
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


class _Workers:
    def __init__(self, argv: List[str], workers: int, log_dir: Path):
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.scratch = Path(tempfile.mkdtemp(prefix="enet-workers-"))
        self.logs: List[Optional[Path]] = []
        self.procs: List[subprocess.Popen] = []
        files: List[IO] = []
        try:
            for index in range(workers):
                log = None if index == 0 else log_dir / f"worker-{index}.log"
                out = open(log, "w") if log else None  # noqa: SIM115 (closed below)
                if out:
                    files.append(out)
                self.logs.append(log)
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "enet_cli", *argv],
                        env=_worker_env(cluster, index, threads, self.scratch),
                        stdout=out,
                        stderr=subprocess.STDOUT if out else None,
                        preexec_fn=_die_with_parent,
                    )
                )
        finally:
            for out in files:
                out.close()  # the children hold their own descriptors
        ui.info(
            f"started {workers} workers on {', '.join(cluster)} (pids "
            f"{', '.join(str(p.pid) for p in self.procs)}); worker 0 is the chief and "
            f"writes here, the others to {log_dir}/worker-<i>.log"
        )

    def signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def stop_all(self, asked: bool = False, at_once: bool = False) -> None:
        """SIGTERM (unless `asked`: they have had it), wait up to GRACE_SECONDS, then SIGKILL
        whatever is left; reap all. A second SIGTERM would make a worker that is still
        saving the step it was asked to stop at say so twice. `at_once`: a peer died, so
        the others are blocked in a collective and can save nothing: SIGKILL them now, and
        none says "SIGTERM received" about a signal nobody sent."""
        if not (asked or at_once):
            self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + (0 if at_once else GRACE_SECONDS)
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(POLL_SECONDS)
        self.signal_all(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def last_line(self, index: int) -> str:
        log = self.logs[index]
        if log is None or not log.is_file():
            return ""
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip()[:200] if lines else ""


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch_local_workers(argv: List[str], workers: int, log_dir: Path) -> int:
    """Run `enet <argv>` as `workers` local processes; return the chief's exit code."""
    group = _Workers(argv, workers, log_dir)
    stops = []

    def forward(signum, frame):
        stops.append(signum)
        group.signal_all(signal.SIGTERM if len(stops) == 1 else signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            chief = group.procs[0].poll()
            if chief is not None:
                # The others finish the same step and exit on their own; stragglers are stopped.
                deadline = time.monotonic() + GRACE_SECONDS
                while time.monotonic() < deadline and any(p.poll() is None for p in group.procs):
                    time.sleep(POLL_SECONDS)
                group.stop_all(asked=bool(stops))
                if chief < 0 and not stops:  # killed from outside: it could say nothing
                    raise TrainingError(
                        f"worker 0 (the chief) {_describe_exit(chief)}; stopped the other "
                        f"workers. Run the same command again to resume from the last checkpoint"
                    )
                return chief
            for index, proc in enumerate(group.procs[1:], start=1):
                code = proc.poll()
                if code is not None and code != 0 and not stops:
                    return _worker_failed(group, index, code)
            time.sleep(POLL_SECONDS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in group.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(group.scratch, ignore_errors=True)


def _worker_failed(group: _Workers, index: int, code: int) -> int:
    """A worker died: give the chief a moment to exit with its own (clearer) error, e.g. for
    bad data every worker fails alike; otherwise the chief is blocked in a collective."""
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and group.procs[0].poll() is None:
        time.sleep(POLL_SECONDS)
    chief = group.procs[0].poll()
    last = group.last_line(index)
    group.stop_all(at_once=True)
    if chief not in (None, 0, PeerLost.exit_code):  # its own error (e.g. bad data), said
        return chief
    detail = f" (its last line: {last})" if last else ""
    raise TrainingError(
        f"worker {index} {_describe_exit(code)}{detail}; stopped the other workers. Its log: "
        f"{group.logs[index]}. Run the same command again to resume from the last checkpoint"
    )
