"""How long the test suite takes: wall clock, the sum of the tests' own times, the slowest.

Runs README's test command (`python -m pytest`, the suite's own options: two xdist
processes) on a fresh clone of HEAD, so nothing local (a cache, an uncommitted file) helps,
and reads pytest's `--durations=0` report. Issue 29's target: the main suite at most 12
minutes on a 2-core machine. Check `uptime` first: these machines are shared.
Run: python benchmarks/test_suite.py [--write] [--report FILE]
(--write: also docs/results/test_suite.{json,md}, the table the design page shows, and
tests/durations.json, each test file's seconds: conftest hands out the longest first)
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import ROOT, machine, publish

DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", re.M)
SUMMARY = re.compile(r"=+ (.*) in [\d.]+s")
DURATIONS = ROOT / "tests" / "durations.json"  # each test file's seconds, for conftest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write docs/results/test_suite.*")
    parser.add_argument("--report", type=Path, help="also keep pytest's whole output here")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    at_start = machine()
    print(f"machine: {at_start}; commit {commit}")
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {**os.environ, "PYTHONPATH": str(clone / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
        start = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "--durations=0", "-p", "no:cacheprovider"],
            cwd=clone, env=env, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - start
    report = run.stdout
    if args.report:
        args.report.write_text(report + run.stderr)
    summary = SUMMARY.findall(report)
    outcome = summary[-1] if summary else "no summary (see the output above)"
    per_test = defaultdict(float)
    for seconds, _phase, test in DURATION.findall(report):
        per_test[test] += float(seconds)
    total = sum(per_test.values())
    print(f"{outcome}; wall clock {wall / 60:.1f} min; the tests' own times {total:.0f} s")
    slowest = sorted(per_test.items(), key=lambda kv: -kv[1])[:10]
    for test, seconds in slowest:
        print(f"{seconds:7.1f} s  {test}")
    if run.returncode:
        print(report[-3000:])
        raise SystemExit(f"the suite failed ({outcome}): no table written")
    if args.write:
        header = ("test (setup + call + teardown)", "seconds")
        rows = [(f"`{test}`", f"{seconds:.1f}") for test, seconds in slowest]
        target = "met" if wall <= 12 * 60 else "not met"
        note = (
            f"Commit {commit}: {outcome}, wall clock {wall / 60:.1f} min, the tests' own "
            f"times {total:.0f} s (two xdist processes overlap them); the ten slowest above. "
            f"Target, the main suite in at most 12 minutes on 2 cores: {target}."
        )
        command = "python benchmarks/test_suite.py --write"
        print(f"wrote {publish('test_suite', command, header, rows, note, at_start)}")
        per_file = defaultdict(float)
        for test, seconds in per_test.items():
            per_file[test.split("::")[0]] += seconds
        ordered = {name: round(per_file[name], 1) for name in sorted(per_file)}
        DURATIONS.write_text(json.dumps(ordered, indent=1) + "\n")
        print(f"wrote {DURATIONS.relative_to(ROOT)} (conftest hands out the longest files first)")


if __name__ == "__main__":
    main()
