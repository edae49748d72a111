"""Training settings as every command reads them: the sources merged by `core.config`, then
checked against what the engines can run (train/engines/table.py), so an impossible
combination is refused before anything is built or uploaded."""

from pathlib import Path
from typing import Any, Dict, Optional

from enet_cli.core.config import EnetConfig, read_settings
from enet_cli.train.engines.table import check_settings


def load_config(
    path: Optional[Path] = None,
    overrides: Optional[Dict[str, Dict[str, Any]]] = None,
    hyperparameters: Optional[Dict[str, Any]] = None,
) -> EnetConfig:
    """defaults < the file at `path` < SageMaker `hyperparameters` < `overrides` (CLI
    options), validated, then checked against the engine table."""
    cfg = read_settings(path, overrides, hyperparameters)
    check_settings(cfg.runtime, cfg.train.batch_size)
    return cfg
