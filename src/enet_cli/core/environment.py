"""What a measurement or a training run ran on: the machine and the packages. Benchmarks
record it beside their figures and training beside its metrics (metrics.json), so that
`enet report` can say where a run's numbers came from."""

import contextlib
import os
import platform
from pathlib import Path
from typing import Dict, List, Sequence

# The CPU features TensorFlow's and XNNPACK's fast paths depend on (16-bit and 8-bit math).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# What training's numbers depend on, read from the installed distributions' metadata
# (nothing is imported for it).
TRAINING_PACKAGES = ("tensorflow", "tensorflow-cpu", "tf-keras", "keras", "numpy")


def machine() -> Dict[str, object]:
    flags: List[str] = []
    model_name = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model_name = value.strip()
        elif key.strip() == "flags" and not flags:
            present = set(value.split())
            flags = [flag for flag in CPU_FLAGS if flag in present]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    usable = getattr(os, "sched_getaffinity", None)
    return {
        # The cores this process may run on (taskset, a container's cpuset), which is what
        # the timings depend on; the machine may have more.
        "cores": len(usable(0)) if usable else os.cpu_count(),
        "machine_cores": os.cpu_count(),
        "cpu": model_name,
        "cpu_flags": flags,
        "load_average": [round(v, 2) for v in load],
        "platform": platform.platform(),
    }


def package_versions(names: Sequence[str] = TRAINING_PACKAGES) -> Dict[str, str]:
    """enet-cli's and Python's versions, and those of `names` that are installed."""
    from importlib import metadata

    from enet_cli import __version__

    found = {"enet-cli": __version__, "python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def environment() -> Dict[str, object]:
    return {"machine": machine(), "versions": package_versions()}
