"""`enet tune`: a SageMaker hyperparameter tuning job over `enet launch`'s training job.

The training job is exactly launch's (plan.py, launch.estimator): the same container,
instances, distribution and static hyperparameters; the tuner varies some of `enet train`'s
own options and maximizes the validation mean IoU that the one metrics module prints and
its regex reads. Every value a range can take is checked as launch checks one job (the
settings' own limits, the engine table, enough records for the batch) before anything is
uploaded.
"""

import tempfile
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from enet_cli.cloud import aws
from enet_cli.cloud.launch import check_local_data, confirm_cost, estimator, upload_data
from enet_cli.cloud.plan import make_plan
from enet_cli.cloud.settings import LaunchConfig, TuneConfig, TuneStrategy
from enet_cli.cloud.source import stage_source
from enet_cli.core import ui
from enet_cli.core.config import EnetConfig, read_text_file
from enet_cli.core.errors import AwsError, ConfigError, EnetError
from enet_cli.core.metrics import metric_definitions

OBJECTIVE_KEY = "val_mean_iou"  # the metrics line's key; its SageMaker name comes from metrics
SCALINGS = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")


class Range(NamedTuple):
    kind: str  # "continuous", "integer" or "categorical"
    values: Sequence[Any]  # (min, max), or the categories
    scaling: str = "Auto"

    def describe(self) -> str:
        if self.kind == "categorical":
            return ", ".join(str(v) for v in self.values)
        return f"{self.kind} {self.values[0]} .. {self.values[1]} ({self.scaling})"


# Sensible first searches for ENet on a CamVid-sized set (the paper trains at lr 5e-4, weight
# decay 2e-4, dropout 0.1, ENet class weights); replaced as a whole by --ranges.
DEFAULT_RANGES: Dict[str, Range] = {
    "learning_rate": Range("continuous", (1e-4, 5e-3), "Logarithmic"),
    "weight_decay": Range("continuous", (1e-5, 1e-3), "Logarithmic"),
    "dropout": Range("continuous", (0.0, 0.3), "Linear"),
    "class_weighting": Range("categorical", ("enet", "median")),
    "batch_size": Range("categorical", (8, 16)),
}


def objective() -> Dict[str, str]:
    """The objective's SageMaker name and regex, from the metrics module."""
    (found,) = metric_definitions([OBJECTIVE_KEY])
    return found


def load_ranges(path: Optional[Path]) -> Dict[str, Range]:
    """--ranges FILE (YAML or JSON): {name: {min, max[, scaling, type: integer]} or
    {values: [...]}}; the defaults without one."""
    if path is None:
        return dict(DEFAULT_RANGES)
    import yaml

    text = read_text_file(path, "--ranges")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--ranges {path} is not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"--ranges {path} must map option names to ranges")
    ranges = {}
    for name, spec in data.items():
        where = f"--ranges {path}: {name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be {{min: .., max: ..}} or {{values: [..]}}")
        if "values" in spec:
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: values must be a non-empty list")
            ranges[name] = Range("categorical", tuple(values))
            continue
        if "min" not in spec or "max" not in spec:
            raise ConfigError(f"{where} needs min and max (or values)")
        low, high = spec["min"], spec["max"]
        if not all(isinstance(v, (int, float)) for v in (low, high)) or low >= high:
            raise ConfigError(f"{where}: min {low!r} must be a number below max {high!r}")
        scaling = str(spec.get("scaling", "Auto"))
        if scaling not in SCALINGS:
            raise ConfigError(f"{where}: scaling {scaling!r} is not one of {', '.join(SCALINGS)}")
        if scaling == "Logarithmic" and low <= 0:
            raise ConfigError(f"{where}: Logarithmic scaling needs min > 0")
        kind = "integer" if spec.get("type") == "integer" else "continuous"
        ranges[name] = Range(kind, (low, high), scaling)
    return ranges


def _with(cfg: EnetConfig, name: str, value: Any) -> EnetConfig:
    from enet_cli.core.config import sort_settings
    from enet_cli.train.settings import load_config

    flat = {}
    for section in ("model", "data", "train", "runtime"):
        flat.update(getattr(cfg, section).model_dump(mode="json", exclude_none=True))
    flat[name] = value
    try:
        return load_config(None, sort_settings(flat))
    except EnetError as err:
        raise ConfigError(f"tuning range of {name}: {err}") from None


def check_ranges(
    cfg: EnetConfig, launch_cfg: LaunchConfig, ranges: Dict[str, Range], data: str
) -> None:
    """Each range's every bound or category as one launch would check it."""
    from enet_cli.core.config import LOCAL_SETTINGS, SECTIONS

    settings = {f for model in SECTIONS.values() for f in model.model_fields}
    tunable = sorted(settings - set(LOCAL_SETTINGS) - {"engine", "mode"})
    for name, spec in ranges.items():
        if name not in tunable:
            raise ConfigError(
                f"tuning range {name!r} is not an enet train option that a job can vary; "
                f"use one of: {', '.join(tunable)}"
            )
        for value in spec.values:
            varied = _with(cfg, name, value)
            try:
                plan = make_plan(varied, launch_cfg)
                check_local_data(varied, data, plan.replicas)
            except EnetError as err:
                raise ConfigError(f"tuning range {name}={value!r}: {err}") from None


def _sdk_ranges(ranges: Dict[str, Range]):
    from sagemaker.tuner import CategoricalParameter, ContinuousParameter, IntegerParameter

    made = {}
    for name, spec in ranges.items():
        if spec.kind == "categorical":
            made[name] = CategoricalParameter(list(spec.values))
        elif spec.kind == "integer":
            made[name] = IntegerParameter(*spec.values, scaling_type=spec.scaling)
        else:
            made[name] = ContinuousParameter(*spec.values, scaling_type=spec.scaling)
    return made


def _check_search(tune_cfg: TuneConfig, ranges: Dict[str, Range]) -> None:
    if tune_cfg.max_parallel > tune_cfg.max_jobs:
        raise ConfigError(
            f"--max-parallel {tune_cfg.max_parallel} exceeds --max-jobs {tune_cfg.max_jobs}"
        )
    if tune_cfg.strategy == TuneStrategy.grid:
        continuous = [n for n, r in ranges.items() if r.kind != "categorical"]
        if continuous:
            raise ConfigError(
                f"--strategy Grid takes categorical ranges only; {', '.join(continuous)} "
                f"have min/max: give them values lists in --ranges"
            )
    if tune_cfg.tuning_job_name and len(tune_cfg.tuning_job_name) > 32:
        raise ConfigError(
            f"--tuning-job-name {tune_cfg.tuning_job_name!r} is longer than SageMaker's 32 "
            f"characters for tuning jobs"
        )


def _early_stopping(tune_cfg: TuneConfig) -> str:
    # Hyperband stops jobs itself; SageMaker refuses it together with Auto early stopping.
    if tune_cfg.early_stopping and tune_cfg.strategy != TuneStrategy.hyperband:
        return "Auto"
    return "Off"


def tune(
    cfg: EnetConfig, launch_cfg: LaunchConfig, tune_cfg: TuneConfig, data: str
) -> Optional[str]:
    """Submit (or with --dry-run, print) the tuning job; returns its name when submitted."""
    ranges = load_ranges(tune_cfg.ranges)
    _check_search(tune_cfg, ranges)
    plan = make_plan(cfg, launch_cfg)
    check_local_data(cfg, data, plan.replicas)
    check_ranges(cfg, launch_cfg, ranges, data)
    goal = objective()
    rows = [
        ("objective", f"maximize {goal['Name']} (regex {goal['Regex']})"),
        ("strategy", f"{tune_cfg.strategy.value}, early stopping {_early_stopping(tune_cfg)}"),
        ("jobs", f"{tune_cfg.max_jobs} in all, {tune_cfg.max_parallel} at once"),
        *[(f"range {name}", spec.describe()) for name, spec in ranges.items()],
        *[r for r in plan.describe() if r[0] != "hyperparameters"],
        ("static hyperparameters", _static(plan.hyperparameters, ranges)),
    ]
    if launch_cfg.dry_run:
        aws.print_rows("SageMaker hyperparameter tuning job", rows)
        return None
    with aws.aws_errors():
        return _submit(plan, launch_cfg, tune_cfg, ranges, data)


def _static(hyperparameters: Dict[str, Any], ranges: Dict[str, Range]) -> str:
    import json

    return json.dumps({k: v for k, v in hyperparameters.items() if k not in ranges}, sort_keys=True)


def _submit(plan, launch_cfg, tune_cfg: TuneConfig, ranges, data: str) -> str:
    sagemaker = aws.sdk()
    from sagemaker.tuner import HyperparameterTuner

    where = aws.connect(launch_cfg)
    name = tune_cfg.tuning_job_name or sagemaker.utils.name_from_base("enet-tune", short=True)
    confirm_cost(plan, launch_cfg, where, jobs=tune_cfg.max_jobs)
    channel = upload_data(data, where)
    goal = objective()
    with tempfile.TemporaryDirectory(prefix="enet-source-") as tmp:
        job = estimator(plan, launch_cfg, where, name, stage_source(Path(tmp) / "source"))
        tuner = HyperparameterTuner(
            job,
            objective_metric_name=goal["Name"],
            hyperparameter_ranges=_sdk_ranges(ranges),
            metric_definitions=plan.metric_definitions,
            strategy=tune_cfg.strategy.value,
            objective_type="Maximize",
            max_jobs=tune_cfg.max_jobs,
            max_parallel_jobs=tune_cfg.max_parallel,
            tags=aws.tags(),
            early_stopping_type=_early_stopping(tune_cfg),
        )
        ui.info(f"submitting tuning job {name}: up to {tune_cfg.max_jobs} training jobs")
        import logging

        # The tuner asks the estimator for a model it never trained; the SDK warns about it.
        estimator_log = logging.getLogger("sagemaker.estimator")
        level = estimator_log.level
        estimator_log.setLevel(logging.ERROR)
        try:
            tuner.fit({"train": channel}, job_name=name, wait=False)
        finally:
            estimator_log.setLevel(level)
    if not launch_cfg.wait:
        ui.info(
            f"tuning job {name} submitted; follow it with: aws sagemaker "
            f"describe-hyper-parameter-tuning-job --hyper-parameter-tuning-job-name {name}"
        )
        return name
    aws.wait_for(where, "tuning job", name)
    _print_best(where, name, list(ranges))
    return name


def _print_best(where: aws.Aws, name: str, tuned: List[str]) -> None:
    sm = where.client("sagemaker")
    found = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    status = found["HyperParameterTuningJobStatus"]
    best = found.get("BestTrainingJob")
    if not best:
        raise AwsError(f"tuning job {name} ended {status} without a best training job")
    value = best.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
    settings = best.get("TunedHyperParameters", {})
    shown = ", ".join(f"{k}={settings[k]}" for k in tuned if k in settings) or "(not reported)"
    ui.info(
        f"tuning job {name} {status}: best {best['TrainingJobName']}"
        + (f" ({objective()['Name']} {value:.4g})" if value is not None else "")
        + f" with {shown}; its model: enet jobs download {best['TrainingJobName']}"
    )
