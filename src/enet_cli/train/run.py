"""From settings to a finished run: where things go (local or SageMaker), then `fit()`.

Inside a SageMaker training container the contract decides: data from the `train` channel,
checkpoints in /opt/ml/checkpoints (synced to S3 for spot resume), the SavedModel in
/opt/ml/model/1, TensorBoard logs in /opt/ml/output/tensorboard, hyperparameters.json as a
settings layer, and a one-line failure reason in /opt/ml/output/failure.
"""

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from enet_cli.artifacts.run import RunMeta, RunPaths, check_resumable, local_paths
from enet_cli.container import contract
from enet_cli.core import outputs
from enet_cli.core.config import EnetConfig
from enet_cli.core.errors import ConfigError, EnetError
from enet_cli.data.manifest import check_batch_size, check_data, load_manifest
from enet_cli.train.settings import load_config


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
    # The refusals that need no model, before TensorFlow loads (seconds); training makes
    # them again, with the engine's replicas, before it touches the run.
    run_dir = cfg.runtime.run_dir
    outputs.check_path_length(run_dir, "--run-dir")
    outputs.check_apart(run_dir, [cfg.data.data_dir], "--run-dir")
    if cfg.data.data_dir is not None:  # (None is refused by check_training)
        manifest = load_manifest(cfg.data.data_dir, splits=["train", "val"])
        check_data(cfg.data, manifest)
        workers = max(1, cfg.runtime.local_workers)
        check_batch_size(manifest, "train", cfg.train.batch_size, workers)
    paths = local_paths(run_dir)
    if cfg.runtime.resume and cfg.data.data_dir is not None:
        check_resumable(paths.checkpoints, RunMeta.from_manifest(cfg.model, manifest))
    outputs.check_replaceable(paths.export, "export", True, "the run's model directory")
    return cfg, paths


def run_training(cfg: EnetConfig, paths: RunPaths) -> Dict[str, object]:
    """Pick the engine for the mode and train; in SageMaker, report failures as it reads them."""
    from enet_cli.train.engines import get_engine
    from enet_cli.train.loop import check_training, fit

    def run():
        engine = get_engine(cfg.runtime)
        manifest = check_training(cfg, paths, engine)  # refusals before the run is touched
        lock = _own_run_dir(cfg, engine)
        made = [d for d in (paths.checkpoints, paths.logs, paths.outputs) if not d.exists()]
        refused = False
        try:
            for directory in made:
                directory.mkdir(parents=True, exist_ok=True)
            return fit(cfg, paths, engine, manifest)
        except EnetError:
            refused = lock is not None  # a refusal leaves the disk as it found it
            if refused:
                outputs.remove_untouched(made)
            raise
        finally:
            if lock is not None:
                lock.release(remove=refused)

    return _reporting_failures(run)


def _own_run_dir(cfg: EnetConfig, engine) -> Optional["outputs.Lock"]:
    """One process owns a local run directory: the chief, or the --local-workers launcher
    for its workers. A SageMaker container is the job's alone."""
    from enet_cli.train.launcher import is_worker

    if contract.in_sagemaker() or is_worker() or not engine.is_chief:
        return None
    return outputs.lock_run_dir(cfg.runtime.run_dir, [cfg.data.data_dir])


def _reporting_failures(fn, *args):
    """In SageMaker every user error also goes to the failure file (the job's reason)."""
    try:
        return fn(*args)
    except EnetError as err:
        if contract.in_sagemaker():
            contract.write_failure(f"{type(err).__name__}: {err}")
        raise


def settings_for_run(
    config_file: Optional[Path], overrides: Dict[str, Dict[str, Any]]
) -> Tuple[EnetConfig, RunPaths]:
    """`enet train`'s settings and paths, read and checked once for the whole command (in
    SageMaker a mistake also goes to the failure file)."""
    return _reporting_failures(prepare_run, config_file, overrides)


def launch_if_requested(cfg: EnetConfig, paths: RunPaths, argv: List[str]) -> Optional[int]:
    """`--local-workers N` (N > 1): start the workers, each running this same command, and
    return the chief's exit code; None when this process should train by itself."""
    return _reporting_failures(_launch, cfg, paths, argv)


def _launch(cfg: EnetConfig, paths: RunPaths, argv: List[str]) -> Optional[int]:
    from enet_cli.train import launcher
    from enet_cli.train.engines.table import resolve

    workers = cfg.runtime.local_workers
    if workers <= 1:
        return None
    resolve(cfg.runtime)  # the table: which engines start local workers
    if cfg.data.data_dir is None:
        raise ConfigError("no data directory given; pass DATA_DIR (the output of enet preprocess)")
    with outputs.lock_run_dir(cfg.runtime.run_dir, [cfg.data.data_dir]):
        return launcher.launch_local_workers([*argv, "--engine", "tf"], workers, paths.logs)
