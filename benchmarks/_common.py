"""Helpers for the benchmark scripts: the bundled CamVid sample and honest timing."""
# Run as scripts: python puts this folder on sys.path, so `_common` imports directly.

import datetime
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"  # what the results page includes
FIXTURES = ROOT / "tests" / "fixtures"
COPIES = 4  # each sample image 4 times: start-up costs stop dominating


# The CPU features TensorFlow's and XNNPACK's fast paths depend on (16-bit and 8-bit math).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu() -> str:
    """The CPU model and which of CPU_FLAGS it has (Linux's /proc/cpuinfo), e.g. `AMD EPYC
    (avx2 fma)`: the same script gives other figures on another CPU."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    has = " ".join(f for f in CPU_FLAGS if f in flags) or "none of " + "/".join(CPU_FLAGS)
    return f"{model} ({has})"


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores, {cpu()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def repeat(fn: Callable[[], float], times: int) -> List[float]:
    """Run `fn` (which returns a rate) several times; report all, compare medians."""
    return [fn() for _ in range(times)]


def describe(rates: List[float]) -> str:
    spread = f"{min(rates):.1f}-{max(rates):.1f}" if len(rates) > 1 else f"{rates[0]:.1f}"
    return f"median {statistics.median(rates):.1f} (range {spread}, n={len(rates)})"


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def segnet_copies(dest: Path) -> Path:
    src = FIXTURES / "camvid-segnet-mini"
    for folder in ("train", "val", "test"):
        for sub in (folder, f"{folder}annot"):
            (dest / sub).mkdir(parents=True)
            for png in sorted((src / sub).glob("*.png")):
                for k in range(COPIES):
                    shutil.copy(png, dest / sub / f"{png.stem}x{k}.png")
    return dest


def publish(
    name: str,
    command: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    note: str,
    machine_at_start: str,
    measured: Optional[dict] = None,
) -> Path:
    """Write `docs/results/<name>.json` and `.md` (the table the results page includes):
    the rows, the command that measured them, the machine, the versions and the date, so a
    figure on the site always says where it came from; `measured`, the unrounded figures,
    goes into the JSON for whatever must equal them."""
    import tensorflow as tf

    from enet_cli import __version__

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = (
        f"{machine_at_start} at the start; Python {platform.python_version()}, TensorFlow "
        f"{tf.__version__}, "
        f"enet-cli {__version__}; {stamp}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "machine": where, "header": list(header), "rows": rows}
    if measured is not None:
        record["measured"] = measured
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"`{command}` ({where}):",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(map(str, row)) + " |" for row in rows),
        "",
        note,
    ]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
