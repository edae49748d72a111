"""Engines by mode: `get_engine(runtime)` is the one place that maps (mode, engine) to an engine.

| mode   | --engine auto                                   | explicit       |
|--------|-------------------------------------------------|----------------|
| single | TensorFlow's default strategy                   | tf             |
| ddp    | smddp when smdistributed.dataparallel imports   | smddp, tf      |
| mp     | smp when smdistributed.modelparallel imports    | smp, tf        |
"""

import importlib.util

from enet_cli.config import EngineChoice, Mode, RuntimeConfig
from enet_cli.errors import ConfigError

ENGINES = {
    Mode.single: (EngineChoice.tf,),
    Mode.ddp: (EngineChoice.smddp, EngineChoice.tf),
    Mode.mp: (EngineChoice.smp, EngineChoice.tf),
}
LIBRARY = {
    EngineChoice.smddp: "smdistributed.dataparallel.tensorflow",
    EngineChoice.smp: "smdistributed.modelparallel.tensorflow",
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def resolve_engine(runtime: RuntimeConfig) -> EngineChoice:
    """The engine `--engine auto` means here, or the explicit one if it fits the mode."""
    allowed = ENGINES[runtime.mode]
    if runtime.engine == EngineChoice.auto:
        library = allowed[0]
        return library if library in LIBRARY and _importable(LIBRARY[library]) else allowed[-1]
    if runtime.engine not in allowed:
        names = ", ".join(["auto"] + [e.value for e in allowed])
        raise ConfigError(
            f"--engine {runtime.engine.value} does not run --mode {runtime.mode.value}; "
            f"use one of: {names}"
        )
    return runtime.engine


def get_engine(runtime: RuntimeConfig):
    """The engine object (imports TensorFlow; resolve_engine above does not)."""
    engine = resolve_engine(runtime)
    if runtime.sync_batchnorm and not (runtime.mode == Mode.ddp and engine == EngineChoice.tf):
        raise ConfigError(
            "--sync-batchnorm works with --mode ddp --engine tf only (SMDDP has no "
            "cross-rank batch norm); drop --sync-batchnorm"
        )
    if runtime.mode == Mode.single:
        from enet_cli.train.engines.single import SingleEngine

        return SingleEngine()
    if runtime.mode == Mode.ddp:
        if engine == EngineChoice.smddp:
            from enet_cli.train.engines.smddp import SMDDPEngine

            return SMDDPEngine()
        from enet_cli.train.engines.mirrored import MirroredEngine

        return MirroredEngine(runtime)
    if engine == EngineChoice.smp:
        from enet_cli.train.engines.smp import SMPEngine

        return SMPEngine(runtime)
    from enet_cli.train.engines.pipeline import PipelineEngine

    return PipelineEngine(runtime)
