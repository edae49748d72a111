"""The SageMaker training-container contract, as pure functions over an overridable root.

Inside a training job SageMaker mounts data at /opt/ml/input/data/<channel>, reads the model
from /opt/ml/model (shipped as model.tar.gz), syncs /opt/ml/checkpoints with S3 when
checkpointing is configured, shows /opt/ml/output/failure as the job's failure reason, and
describes the job in /opt/ml/input/config/*.json. A custom entry point that bypasses the
training toolkit gets no SM_* variables, so everything is read from those files, with the
SM_* variables only as overrides. ENET_SAGEMAKER_ROOT replaces /opt/ml (for tests).
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from enet_cli.artifacts.run import RunPaths

ROOT_ENV = "ENET_SAGEMAKER_ROOT"
DEFAULT_ROOT = "/opt/ml"
TRAIN_CHANNEL = "train"
# Hyperparameters SageMaker or its libraries add on their own; not enet settings.
FOREIGN_HYPERPARAMETERS = ("model_dir", "mp_parameters")


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT))


def in_sagemaker() -> bool:
    """True inside a SageMaker training container (its job description is mounted)."""
    return (root() / "input" / "config").is_dir()


def sagemaker_paths() -> RunPaths:
    base = root()
    model_dir = Path(os.environ.get("SM_MODEL_DIR", base / "model"))
    # TensorFlow Serving (and SageMaker's TF endpoints) expect <model>/<version>/saved_model.pb
    return RunPaths(
        base / "checkpoints", base / "output" / "tensorboard", model_dir / "1", model_dir
    )


def channel_dir(channel: str = TRAIN_CHANNEL) -> Path:
    env = os.environ.get(f"SM_CHANNEL_{channel.upper()}")
    return Path(env) if env else root() / "input" / "data" / channel


def _decode(value: Any) -> Any:
    """SageMaker SDK 2 JSON-encodes each hyperparameter value into a string; undo that."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _raw_hyperparameters() -> Dict[str, Any]:
    path = root() / "input" / "config" / "hyperparameters.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text() or "{}")


def hyperparameters() -> Dict[str, Any]:
    """hyperparameters.json as enet settings (settings_from)."""
    return settings_from(_raw_hyperparameters())


def settings_from(raw: Dict[str, Any]) -> Dict[str, Any]:
    """SageMaker hyperparameters as enet settings: snake_case keys, decoded values, no
    foreign keys."""
    out = {}
    for key, value in raw.items():
        key = key.replace("-", "_")
        if key in FOREIGN_HYPERPARAMETERS or key.startswith(("sagemaker_", "_")):
            continue
        out[key] = _decode(value)
    return out


MP_PARAMETERS_ENV = "SM_HP_MP_PARAMETERS"


def mp_parameters() -> Optional[Dict[str, Any]]:
    """The job's SMP parameters (distribution's modelparallel "parameters"), or None.

    The training toolkit exports them as SM_HP_MP_PARAMETERS, which SMP itself reads; an
    entry point started without the toolkit finds them in hyperparameters.json.
    """
    raw = os.environ.get(MP_PARAMETERS_ENV) or _raw_hyperparameters().get("mp_parameters")
    if not raw:
        return None
    value = _decode(raw) if isinstance(raw, str) else raw
    return dict(value) if isinstance(value, dict) else None


def write_failure(message: str) -> None:
    """SageMaker shows the first 1024 characters of this file as the job's FailureReason."""
    path = root() / "output" / "failure"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message[:1024] + "\n")
    except OSError:
        pass


# SageMaker's MultiWorkerMirroredStrategy support puts every host's worker on this port.
MWMS_PORT = 8890


def resource_config() -> Optional[Dict[str, Any]]:
    """resourceconfig.json: {"current_host": "algo-1", "hosts": ["algo-1", ...], ...}."""
    path = root() / "input" / "config" / "resourceconfig.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def tf_config_from_resource_config() -> Optional[Dict[str, Any]]:
    """The TF_CONFIG a multi-host job needs, built from resourceconfig.json as SageMaker's
    toolkit builds it (workers `algo-N:8890`, this host's index); None on one host."""
    config = resource_config()
    if not config or len(config.get("hosts", [])) < 2:
        return None
    hosts = list(config["hosts"])  # the same order on every host
    return {
        "cluster": {"worker": [f"{host}:{MWMS_PORT}" for host in hosts]},
        "task": {"type": "worker", "index": hosts.index(config["current_host"])},
    }
