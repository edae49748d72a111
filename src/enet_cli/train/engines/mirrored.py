"""ddp on TensorFlow's own machinery: MirroredStrategy on one host, MultiWorkerMirroredStrategy
across processes or hosts.

The cluster comes from TF_CONFIG (set by `enet train --local-workers N`, by SageMaker's
toolkit, or by the user), else from SageMaker's resourceconfig.json when the job has
several hosts. Without a cluster, MirroredStrategy uses this host's GPUs (or its CPU).
"""

import json
import os
from typing import Any, Dict, Optional

from enet_cli.container import contract
from enet_cli.core import ui
from enet_cli.core.backend import tf
from enet_cli.core.config import RuntimeConfig
from enet_cli.train.engines.base import StrategyEngine


def cluster_from_environment() -> Optional[Dict[str, Any]]:
    """The multi-worker TF_CONFIG for this process, or None when it runs alone.

    A TF_CONFIG from SageMaker's resourceconfig.json is also exported, since
    MultiWorkerMirroredStrategy reads the environment itself.
    """
    raw = os.environ.get("TF_CONFIG")
    if raw:
        config = json.loads(raw)
    else:
        config = contract.tf_config_from_resource_config()
        if config is None:
            return None
        os.environ["TF_CONFIG"] = json.dumps(config)
    return config if _workers(config) > 1 else None


def is_chief_task(config: Dict[str, Any]) -> bool:
    """TensorFlow's convention: the "chief" task, or worker 0 when there is no chief."""
    task = config.get("task", {})
    if task.get("type") == "chief":
        return True
    return (
        task.get("type") == "worker"
        and int(task.get("index", 0)) == 0
        and "chief" not in config.get("cluster", {})
    )


class MirroredEngine(StrategyEngine):
    def __init__(self, runtime: RuntimeConfig):
        cluster = cluster_from_environment()
        if cluster is not None:
            # First TF call of the process: collectives must be configured before TF's
            # runtime starts (even listing logical devices starts it).
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            kind = f"MultiWorkerMirroredStrategy over {_workers(cluster)} workers"
        else:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["/cpu:0"]
            strategy = tf.distribute.MirroredStrategy(devices)
            kind = f"MirroredStrategy on {len(devices)} device(s)"
        super().__init__(strategy, name="tf", sync_batchnorm=runtime.sync_batchnorm)
        self.is_chief = cluster is None or is_chief_task(cluster)
        self.kind = kind
        if self.num_replicas == 1:
            ui.warn(
                "--mode ddp has one replica here (no GPUs, no cluster): it trains like --mode "
                "single; use --local-workers N for several processes on this machine"
            )

    def describe(self) -> str:
        devices = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        bn = "synchronised" if self.sync_batchnorm else "per replica"
        return f"tf engine, {self.kind}, {self.num_replicas} {devices} replica(s), batch norm {bn}"


def _workers(cluster: Dict[str, Any]) -> int:
    return sum(len(tasks) for tasks in cluster.get("cluster", {}).values())
