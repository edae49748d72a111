"""What `enet launch` submits, decided before any AWS call: the container, the instances,
the distribution, the hyperparameters, spot and checkpoints - and every refusal.

Which engines exist, what each can run, its container and its default instances are the
engine table's (train/engines/table.py): the same table `enet train` reads. They follow
where AWS's libraries still exist: SMDDP's last TensorFlow container is 2.11 (Python 3.9),
SMP v1's is 2.6 (Python 3.8); TensorFlow's own engines take the newest TensorFlow container.
"""

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from enet_cli.cloud.settings import LaunchConfig, check_instance_type
from enet_cli.core.config import LOCAL_SETTINGS, EnetConfig, EngineChoice, Mode
from enet_cli.core.errors import ConfigError
from enet_cli.core.metrics import metric_definitions
from enet_cli.train.engines.table import EngineSpec, describe_batch, resolve_for_job

# GPUs per instance, for the types these defaults and libraries use (AWS's instance pages).
GPUS = {
    "ml.g4dn.xlarge": 1, "ml.g4dn.2xlarge": 1, "ml.g4dn.12xlarge": 4, "ml.g4dn.metal": 8,
    "ml.g5.xlarge": 1, "ml.g5.2xlarge": 1, "ml.g5.4xlarge": 1, "ml.g5.12xlarge": 4,
    "ml.g5.24xlarge": 4, "ml.g5.48xlarge": 8, "ml.g6.xlarge": 1, "ml.g6.12xlarge": 4,
    "ml.p3.2xlarge": 1, "ml.p3.8xlarge": 4, "ml.p3.16xlarge": 8, "ml.p3dn.24xlarge": 8,
    "ml.p4d.24xlarge": 8, "ml.p4de.24xlarge": 8, "ml.p5.48xlarge": 8,
}  # fmt: skip
ENTRY_POINT = "enet_entry.py"
# Why each mode's default instances are what they are (engines/table.py holds them).
DEFAULT_WHY = {
    Mode.single: "one A10G GPU: ENet trains in real time on one GPU",
    Mode.ddp: "one host of the smallest type SMDDP runs on: 8 GPUs x --batch-size is "
    "already a large step for CamVid-sized data",
    Mode.mp: "one host of the smallest type SMP runs on: 4 GPUs for up to 4 partitions",
}


class LaunchPlan(NamedTuple):
    mode: Mode
    engine: EngineChoice
    framework_version: str
    py_version: str
    image_uri: Optional[str]  # None: the SDK picks AWS's TensorFlow training image
    instance_type: str
    instance_count: int
    processes_per_host: int
    distribution: Optional[Dict[str, Any]]
    hyperparameters: Dict[str, Any]
    metric_definitions: List[Dict[str, str]]
    spot: bool
    max_run: int
    max_wait: Optional[int]
    volume_size: int
    replicas: int  # data-parallel replicas: the global batch is --batch-size x replicas
    instances_why: str = ""  # why these instances, when they are the mode's default

    def describe(self) -> List[Tuple[str, str]]:
        """(what, value) rows for `--dry-run` and the launch summary."""
        import json

        image = self.image_uri or (
            f"AWS TensorFlow {self.framework_version} training image ({self.py_version})"
        )
        rows = [
            ("mode / engine", f"{self.mode.value} / {self.engine.value}"),
            ("image", image),
            (
                "instances",
                f"{self.instance_count} x {self.instance_type}"
                + (f" ({self.instances_why})" if self.instances_why else ""),
            ),
            ("processes per host", str(self.processes_per_host)),
            ("distribution", json.dumps(self.distribution) if self.distribution else "none"),
            ("batch", describe_batch(self.hyperparameters["batch_size"], self.replicas)),
            ("hyperparameters", json.dumps(self.hyperparameters, sort_keys=True)),
            (
                "spot",
                f"on, max_run {self.max_run} s, max_wait {self.max_wait} s"
                if self.spot
                else f"off, max_run {self.max_run} s",
            ),
        ]
        rows += [(f"metric {m['Name']}", m["Regex"]) for m in self.metric_definitions]
        return rows


def hyperparameters(cfg: EnetConfig, engine: EngineChoice) -> Dict[str, Any]:
    """Every training setting, flat, as the container's `enet train` reads them back
    (config.sort_settings + the same pydantic models); the engine explicitly chosen."""
    flat: Dict[str, Any] = {}
    for section in ("model", "data", "train", "runtime"):
        values = getattr(cfg, section).model_dump(mode="json")
        flat.update({k: v for k, v in values.items() if k not in LOCAL_SETTINGS and v is not None})
    flat["engine"] = engine.value
    return flat


def make_plan(cfg: EnetConfig, launch: LaunchConfig) -> LaunchPlan:
    """The job for `cfg` (the training settings) and `launch`, or a ConfigError naming the
    option to change - before anything is uploaded."""
    spec = resolve_for_job(cfg.runtime, cfg.train.batch_size)
    mode, engine = spec.mode, spec.engine
    instance_type = launch.instance_type or spec.default_instance_type
    count = launch.instance_count or spec.default_instance_count
    chosen = launch.instance_type is not None or launch.instance_count is not None
    more = "more with --instance-type/--instance-count"
    why = "" if chosen else f"the {mode.value} default, {DEFAULT_WHY[mode]}; {more}"
    gpus = GPUS.get(instance_type)
    _check_instance(spec, instance_type, count, gpus)
    distribution, processes = _distribution(cfg, engine, gpus)
    _check_init_from(cfg.train.init_from, engine)
    max_wait = None
    if launch.spot:
        max_wait = launch.max_wait if launch.max_wait is not None else 2 * launch.max_run
        if max_wait < launch.max_run:
            raise ConfigError(
                f"--max-wait {max_wait} is shorter than --max-run {launch.max_run}; spot "
                f"jobs wait for capacity within max_wait, so use --max-wait >= "
                f"{launch.max_run} (or --no-spot)"
            )
    elif launch.max_wait is not None:
        raise ConfigError("--max-wait applies to spot jobs only; drop it or drop --no-spot")
    return LaunchPlan(
        mode=mode,
        engine=engine,
        framework_version=launch.framework_version or spec.framework_version,
        py_version=launch.py_version or spec.py_version,
        image_uri=launch.image_uri,
        instance_type=instance_type,
        instance_count=count,
        processes_per_host=processes,
        distribution=distribution,
        hyperparameters=hyperparameters(cfg, engine),
        metric_definitions=metric_definitions(),
        spot=launch.spot,
        max_run=launch.max_run,
        max_wait=max_wait,
        volume_size=launch.volume_size,
        replicas=count * (gpus or 1) if mode == Mode.ddp else 1,
        instances_why=why,
    )


def _check_init_from(init_from: Optional[str], engine) -> None:
    """A job starts only from what its container has: the presets in the package."""
    if init_from is None:
        return
    from enet_cli.artifacts.model_ref import ModelRef, RefKind
    from enet_cli.artifacts.presets import names

    if ModelRef.parse(init_from).kind is not RefKind.preset:
        raise ConfigError(
            f"--init-from {init_from}: a SageMaker job starts only from a preset in the "
            f"package ({', '.join(names())}); it cannot read a path on this machine"
        )
    if engine.value == "smp":
        raise ConfigError("--init-from is not supported by the smp engine yet; use --engine tf")


def _check_instance(spec: EngineSpec, instance_type: str, count: int, gpus: Optional[int]):
    check_instance_type("--instance-type", instance_type, "ml.g5.xlarge")
    engine, mode = spec.engine.value, spec.mode
    if spec.instance_types is not None and instance_type not in spec.instance_types:
        family = instance_type.split(".")[1]
        why = (
            "smdistributed's TensorFlow containers predate p5 instances"
            if family.startswith("p5")
            else f"{engine} does not support it"
        )
        raise ConfigError(
            f"--instance-type {instance_type} cannot run --engine {engine} ({why}); use "
            f"one of: {', '.join(spec.instance_types)}"
        )
    if spec.max_instances is not None and count > spec.max_instances:
        why = (
            "trains on one instance; use --mode ddp"
            if mode == Mode.single
            else "splits the model across one instance's GPUs; use --instance-count 1 (or "
            "--mode ddp to add instances)"
        )
        raise ConfigError(f"--instance-count {count}: --mode {mode.value} {why}")
    if mode != Mode.single and gpus == 1 and count == 1:
        raise ConfigError(
            f"--instance-type {instance_type} has 1 GPU: --mode {mode.value} needs several; "
            f"use a multi-GPU type such as {spec.default_instance_type}"
        )


def _distribution(cfg: EnetConfig, engine, gpus: Optional[int]):
    """(the SDK's `distribution` argument, processes per host)."""
    if engine == EngineChoice.smddp:
        return {"smdistributed": {"dataparallel": {"enabled": True}}}, gpus or 1
    if engine == EngineChoice.tf and cfg.runtime.mode == Mode.ddp:
        return {"multi_worker_mirrored_strategy": {"enabled": True}}, 1
    if engine == EngineChoice.smp:
        partitions = cfg.runtime.partitions
        if gpus is not None and partitions > gpus:
            raise ConfigError(
                f"--partitions {partitions} needs {partitions} GPUs on one instance; the "
                f"instance type has {gpus}: use --partitions <= {gpus} or a larger type"
            )
        parameters = {
            "partitions": partitions,
            "microbatches": cfg.runtime.microbatches,
            "pipeline": cfg.runtime.pipeline.value,
        }
        return {
            "smdistributed": {"modelparallel": {"enabled": True, "parameters": parameters}},
            "mpi": {"enabled": True, "processes_per_host": partitions},
        }, partitions
    if cfg.runtime.mode == Mode.mp and gpus is not None and cfg.runtime.partitions > gpus:
        raise ConfigError(
            f"--partitions {cfg.runtime.partitions} needs as many GPUs; the instance type has "
            f"{gpus}: use --partitions <= {gpus} or a larger type"
        )
    return None, 1
