"""Engines by mode: `get_engine(runtime)` is the one place that maps a mode to an engine."""

from enet_cli.config import Mode, RuntimeConfig
from enet_cli.errors import ConfigError
from enet_cli.train.engines.base import Engine, StrategyEngine


def get_engine(runtime: RuntimeConfig) -> Engine:
    if runtime.mode == Mode.single:
        from enet_cli.train.engines.single import SingleEngine

        return SingleEngine()
    raise ConfigError(
        f"--mode {runtime.mode.value} is not available yet in this version; use --mode single"
    )


__all__ = ["Engine", "StrategyEngine", "get_engine"]
