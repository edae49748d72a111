"""What each engine can do: the one table `enet train`, `get_engine`, `enet launch`'s plan and
the config check all read, so a combination is refused the same way everywhere, before
anything is built or uploaded. Importable without TensorFlow.

The batch, in one place (`--batch-size` is always images per *replica*):

| mode   | a replica is                          | global batch per step            |
|--------|---------------------------------------|----------------------------------|
| single | the process                           | batch                            |
| ddp    | one GPU (one process per GPU, SMDDP)  | batch x replicas (all hosts)     |
|        | or one local worker on CPU            |                                  |
| mp     | the whole pipeline of partitions      | batch, cut into --microbatches   |

Per replica is what SMDDP and Horovod users pass, and it makes every default valid: a ddp
job's batch never has to divide by a replica count the user may not know. The loop reports
the global batch; `--scale-lr` scales the learning rate with the replicas.
"""

import importlib.util
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from enet_cli.core.config import EngineChoice, Mode, RuntimeConfig, global_batch
from enet_cli.core.errors import ConfigError

NEWEST_TF = ("2.19.0", "py312")


class EngineSpec(NamedTuple):
    mode: Mode
    engine: EngineChoice
    library: Optional[str]  # the module it needs beside TensorFlow (None: TF alone)
    sync_batchnorm: bool  # can it normalise batch norm over the global batch?
    microbatched: bool  # is a replica's batch cut into --microbatches?
    local_workers: bool  # can `enet train --local-workers N` start its processes?
    instance_types: Optional[Tuple[str, ...]]  # SageMaker types it runs on (None: any)
    max_instances: Optional[int]  # hosts a job may have (None: any)
    framework_version: str  # SageMaker's TensorFlow container: the newest that has `library`
    py_version: str
    default_instance_type: str
    default_instance_count: int

    def label(self) -> str:
        return f"--mode {self.mode.value} --engine {self.engine.value}"


# Instance types each library runs on (SMDDP: the SDK's own list; SMP v1: its documentation).
SMDDP_INSTANCES = ("ml.p3.16xlarge", "ml.p3dn.24xlarge", "ml.p4d.24xlarge", "ml.p4de.24xlarge")
SMP_INSTANCES = ("ml.p3.16xlarge", "ml.p3dn.24xlarge", "ml.p4d.24xlarge", "ml.g4dn.12xlarge")

# Per mode, in the order `--engine auto` tries them: SageMaker's library first when it imports.
# A job's default instances (cloud/plan.py DEFAULT_WHY says why): one host of the smallest
# type the mode's library runs on. ENet and CamVid (367 training images) need no more: 8
# GPUs at batch 10 already make 4 steps an epoch, and 2 hosts would make 2.
ENGINE_TABLE: Dict[Mode, Tuple[EngineSpec, ...]] = {
    Mode.single: (
        EngineSpec(
            Mode.single, EngineChoice.tf, None, False, False, False, None, 1,
            *NEWEST_TF, "ml.g5.xlarge", 1,
        ),
    ),
    Mode.ddp: (
        EngineSpec(
            Mode.ddp, EngineChoice.smddp, "smdistributed.dataparallel.tensorflow",
            False, False, False, SMDDP_INSTANCES, None, "2.11.0", "py39", "ml.p3.16xlarge", 1,
        ),
        EngineSpec(
            Mode.ddp, EngineChoice.tf, None, True, False, True, None, None,
            *NEWEST_TF, "ml.p3.16xlarge", 1,
        ),
    ),
    Mode.mp: (
        EngineSpec(
            Mode.mp, EngineChoice.smp, "smdistributed.modelparallel.tensorflow",
            False, True, False, SMP_INSTANCES, 1, "2.6.0", "py38", "ml.g4dn.12xlarge", 1,
        ),
        EngineSpec(
            Mode.mp, EngineChoice.tf, None, False, True, False, None, 1,
            *NEWEST_TF, "ml.g4dn.12xlarge", 1,
        ),
    ),
}  # fmt: skip


def all_specs() -> Tuple[EngineSpec, ...]:
    return tuple(spec for specs in ENGINE_TABLE.values() for spec in specs)


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def _installed(spec: EngineSpec) -> bool:
    return spec.library is None or importable(spec.library)


def _in_container(spec: EngineSpec) -> bool:
    return True  # a SageMaker job runs in its engine's container, which has the library


def candidates(runtime: RuntimeConfig) -> Tuple[EngineSpec, ...]:
    """The engines `--mode` with `--engine` may mean (all of the mode's for auto)."""
    specs = ENGINE_TABLE[runtime.mode]
    if runtime.engine == EngineChoice.auto:
        return specs
    found = tuple(s for s in specs if s.engine == runtime.engine)
    if not found:
        names = ", ".join(["auto"] + [s.engine.value for s in specs])
        raise ConfigError(
            f"--engine {runtime.engine.value} does not run --mode {runtime.mode.value}; "
            f"use one of: {names}"
        )
    return found


def refusal(spec: EngineSpec, runtime: RuntimeConfig, batch_size: Optional[int]) -> Optional[str]:
    """Why `spec` cannot run these options (one line naming the option), or None."""
    if runtime.sync_batchnorm and not spec.sync_batchnorm:
        able = " or ".join(s.label() for s in all_specs() if s.sync_batchnorm)
        return (
            f"--sync-batchnorm does not work with {spec.label()} (it has no cross-replica "
            f"batch norm); use {able}, or drop --sync-batchnorm"
        )
    if runtime.local_workers > 1 and not spec.local_workers:
        able = " or ".join(s.label() for s in all_specs() if s.local_workers)
        return (
            f"--local-workers {runtime.local_workers} does not work with {spec.label()} "
            f"(its processes are started by SageMaker); use {able}"
        )
    if batch_size is not None and spec.microbatched:
        return microbatch_refusal(batch_size, runtime.microbatches)
    return None


def microbatch_refusal(batch_size: int, microbatches: int) -> Optional[str]:
    if batch_size % microbatches == 0:
        return None
    return (
        f"--batch-size {batch_size} is not divisible by --microbatches {microbatches}; use "
        f"a multiple of {microbatches}"
    )


def check_microbatches(batch_size: int, microbatches: int) -> None:
    reason = microbatch_refusal(batch_size, microbatches)
    if reason:
        raise ConfigError(reason)


def check_settings(runtime: RuntimeConfig, batch_size: Optional[int]) -> None:
    """The config check, before it is known where the run happens: refuse options that
    no engine `--mode`/`--engine` may mean can run."""
    resolve(runtime, batch_size, lambda spec: True)


def resolve(
    runtime: RuntimeConfig,
    batch_size: Optional[int] = None,
    available: Callable[[EngineSpec], bool] = _installed,
) -> EngineSpec:
    """The engine for `runtime`, or a ConfigError naming the option it cannot run.

    `--engine auto` takes the mode's first engine that is `available` (here: its library
    imports; for a SageMaker job: always, the job gets its container) and runs the options:
    `--mode ddp --sync-batchnorm` is the tf engine, since SMDDP has no cross-replica batch
    norm. An explicit `--engine` is taken as asked, or refused."""
    specs = candidates(runtime)
    usable = [s for s in specs if available(s)] or [specs[-1]]
    reasons = [refusal(s, runtime, batch_size) for s in usable]
    for spec, reason in zip(usable, reasons):
        if reason is None:
            return spec
    raise ConfigError(str(reasons[0]))


def resolve_for_job(runtime: RuntimeConfig, batch_size: int) -> EngineSpec:
    return resolve(runtime, batch_size, _in_container)


def describe_batch(batch_size: int, replicas: int) -> str:
    if replicas == 1:
        return f"batch {batch_size}"
    return (
        f"global batch {global_batch(batch_size, replicas)} ({batch_size} per replica x "
        f"{replicas} replicas)"
    )
