"""Engines by mode: `get_engine(runtime)` turns the table's choice (table.py) into an engine.

| mode   | --engine auto                                   | explicit       |
|--------|-------------------------------------------------|----------------|
| single | TensorFlow's default strategy                   | tf             |
| ddp    | smddp when smdistributed.dataparallel imports   | smddp, tf      |
| mp     | smp when smdistributed.modelparallel imports    | smp, tf        |
"""

from enet_cli.core.config import EngineChoice, Mode, RuntimeConfig
from enet_cli.train.engines.table import resolve


def resolve_engine(runtime: RuntimeConfig) -> EngineChoice:
    """The engine `--engine auto` means here, or the explicit one if it fits the mode."""
    return resolve(runtime).engine


def get_engine(runtime: RuntimeConfig):
    """The engine object (imports TensorFlow; the table does not)."""
    spec = resolve(runtime)
    if spec.mode == Mode.single:
        from enet_cli.train.engines.single import SingleEngine

        return SingleEngine()
    if spec.mode == Mode.ddp:
        if spec.engine == EngineChoice.smddp:
            from enet_cli.train.engines.smddp import SMDDPEngine

            return SMDDPEngine()
        from enet_cli.train.engines.mirrored import MirroredEngine

        return MirroredEngine(runtime)
    if spec.engine == EngineChoice.smp:
        from enet_cli.train.engines.smp import SMPEngine

        return SMPEngine(runtime)
    from enet_cli.train.engines.pipeline import PipelineEngine

    return PipelineEngine(runtime)
