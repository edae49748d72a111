"""The job's entry point in AWS's TensorFlow training container (copied there as
enet_entry.py beside this package's wheel).

The training toolkit runs it - through mpirun/smddprun for the distributed libraries, so
once per GPU process - as `python enet_entry.py --model_dir s3://... [--mp_parameters
k=v,...] --<hyperparameter> <value> ...`. It:

1. installs the wheel beside it once per host (a file lock serialises the processes),
   with the container's TensorFlow pinned, so pip can never swap in a second TensorFlow;
   an image built from the Dockerfile already has this version and skips the install;
2. hands SMP its parameters (SM_HP_MP_PARAMETERS, from --mp_parameters when the toolkit
   did not export them);
3. replaces itself with `python -m enet_cli train`, which reads the job's settings from
   /opt/ml/input/config/hyperparameters.json through the same config models as the CLI.

`python enet_entry.py --install-only` only installs (the Dockerfile runs that).
Standard library only, Python 3.8: it runs before enet-cli is installed.
"""

import contextlib
import fcntl
import glob
import json
import os
import subprocess
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-gpu", "tensorflow-cpu", "intel-tensorflow")


def parse_arguments(argv: List[str]) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(hyperparameters, toolkit arguments) from `--key value` pairs; the toolkit's own keys
    are model_dir and mp_parameters."""
    pairs: Dict[str, str] = {}
    key = None
    for item in argv:
        if item.startswith("--"):
            if key is not None:
                pairs[key] = "true"  # a flag without a value
            key = item[2:].replace("-", "_")
        elif key is not None:
            pairs[key] = item
            key = None
        else:
            raise SystemExit(f"enet_entry.py: unexpected argument {item!r}")
    if key is not None:
        pairs[key] = "true"
    toolkit = {k: pairs.pop(k) for k in ("model_dir", "mp_parameters") if k in pairs}
    return pairs, toolkit


def mp_parameters_json(text: str) -> str:
    """`partitions=2,microbatches=4,pipeline=interleaved` -> the JSON SMP reads."""
    params = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            params[name] = json.loads(value)
        except ValueError:
            params[name] = value
    return json.dumps(params)


def installed_version(distribution: str):
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def wheel_version(wheel: str) -> str:
    return os.path.basename(wheel).split("-")[1]


def install_command(wheel: str) -> List[str]:
    """pip install the wheel with every installed TensorFlow pinned to its version."""
    pins = [
        f"{name}=={version}"
        for name, version in ((n, installed_version(n)) for n in TENSORFLOW_DISTRIBUTIONS)
        if version
    ]
    constraints = os.path.join(os.path.dirname(wheel), "constraints.txt")
    with open(constraints, "w") as handle:
        handle.write("\n".join(pins) + "\n")
    return [
        sys.executable, "-m", "pip", "install", "--no-cache-dir",
        "--disable-pip-version-check", "--constraint", constraints, wheel,
    ]  # fmt: skip


def install(here: str = HERE) -> None:
    wheels = sorted(glob.glob(os.path.join(here, "enet_cli-*.whl")))
    if not wheels:
        raise SystemExit(f"enet_entry.py: no enet_cli wheel beside it in {here}")
    wheel = wheels[-1]
    lock_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "enet-cli-install.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install per host; the others wait for it
        with contextlib.suppress(Exception):
            if installed_version("enet-cli") == wheel_version(wheel):
                return
        subprocess.run(install_command(wheel), check=True)


def main(argv: List[str]) -> None:
    if argv == ["--install-only"]:  # the Dockerfile's install: the same command as a job's
        install()
        return
    _, toolkit = parse_arguments(argv)
    if "mp_parameters" in toolkit and not os.environ.get("SM_HP_MP_PARAMETERS"):
        os.environ["SM_HP_MP_PARAMETERS"] = mp_parameters_json(toolkit["mp_parameters"])
    install()
    command = [sys.executable, "-m", "enet_cli", "train"]
    sys.stdout.flush()
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main(sys.argv[1:])
