"""From settings to a finished run: where things go (local or SageMaker), then `fit()`.

Inside a SageMaker training container the contract decides: data from the `train` channel,
checkpoints in /opt/ml/checkpoints (synced to S3 for spot resume), the SavedModel in
/opt/ml/model/1, TensorBoard logs in /opt/ml/output/tensorboard, hyperparameters.json as a
settings layer, and a one-line failure reason in /opt/ml/output/failure.
"""

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from enet_cli.config import EnetConfig, load_config
from enet_cli.errors import EnetError
from enet_cli.sagemaker import contract
from enet_cli.sagemaker.contract import RunPaths


def prepare_run(
    config_file: Optional[Path], overrides: Dict[str, Dict[str, Any]]
) -> Tuple[EnetConfig, RunPaths]:
    """Resolve settings and output paths for this environment."""
    if contract.in_sagemaker():
        cfg = load_config(config_file, overrides, hyperparameters=contract.hyperparameters())
        if cfg.data.data_dir is None:
            cfg.data.data_dir = contract.channel_dir()
        return cfg, contract.sagemaker_paths()
    cfg = load_config(config_file, overrides)
    return cfg, contract.local_paths(cfg.runtime.run_dir)


def run_training(cfg: EnetConfig, paths: RunPaths) -> Dict[str, object]:
    """Pick the engine for the mode and train; in SageMaker, report failures as it reads them."""
    from enet_cli.train.engines import get_engine
    from enet_cli.train.loop import fit

    try:
        for directory in (paths.checkpoints, paths.logs, paths.outputs):
            directory.mkdir(parents=True, exist_ok=True)
        return fit(cfg, paths, get_engine(cfg.runtime))
    except EnetError as err:
        if contract.in_sagemaker():
            contract.write_failure(f"{type(err).__name__}: {err}")
        raise


def train_from_settings(
    config_file: Optional[Path], overrides: Dict[str, Dict[str, Any]]
) -> Tuple[Dict[str, object], RunPaths]:
    """`enet train`: settings -> run; in SageMaker every user error also goes to the failure file.

    (Config errors happen before run_training, so they are caught here too.)
    """
    try:
        cfg, paths = prepare_run(config_file, overrides)
    except EnetError as err:
        if contract.in_sagemaker():
            contract.write_failure(f"{type(err).__name__}: {err}")
        raise
    return run_training(cfg, paths), paths
