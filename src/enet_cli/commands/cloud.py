"""The SageMaker commands, run on the user's machine: launch and tune training jobs, deploy
and call endpoints, batch transform, and the jobs already run. None imports TensorFlow
unless it packs a local model (deploy, transform)."""

from pathlib import Path
from typing import Any, List, Optional

import typer

from enet_cli.cloud.settings import (
    AwsConfig,
    DeployConfig,
    LaunchConfig,
    TransformConfig,
    TuneConfig,
)
from enet_cli.commands.options import (
    CONFIG_OPTION,
    PANEL_AWS,
    PANEL_LAUNCH,
    PANEL_SERVE,
    PANEL_TUNE,
    argument,
    command_with,
    flag,
    keyword,
    overrides,
    pick,
    settings_parameters,
    training_parameters,
)
from enet_cli.core.config import LOCAL_SETTINGS, make_options

DATA_ARGUMENT = ("data", "s3:// URI or a local preprocessed directory.")
MODEL_ARGUMENT = (
    "model",
    "A training job name, an s3:// model.tar.gz, or a local run / SavedModel directory.",
)
# What undeploy, invoke and jobs need of AwsConfig: where, not who.
AWS_WHERE = ("region",)


def _job_options() -> List:
    """What a training job takes: train's options but the local ones, and the job's own."""
    return [
        keyword("config", CONFIG_OPTION, Optional[Path]),
        *training_parameters(leave_out=LOCAL_SETTINGS),
        *settings_parameters(LaunchConfig, "launch", PANEL_LAUNCH),
    ]


def launch(**options: Any) -> None:
    """Submit this package's `enet train` as an Amazon SageMaker training job.

    DATA is an s3:// URI or a local preprocessed directory (uploaded, skipping files already
    there). Every training option passes through as a hyperparameter.

    Example: enet launch data/camvid --mode ddp --epochs 300 --dry-run
    """
    from enet_cli.cloud.launch import launch as submit
    from enet_cli.train.settings import load_config

    data = options.pop("data")
    launch_cfg = make_options(LaunchConfig, pick(options, LaunchConfig))
    cfg = load_config(options.pop("config"), overrides(options))
    submit(cfg, launch_cfg, data)


def tune(**options: Any) -> None:
    """Tune enet train's options with a SageMaker hyperparameter tuning job.

    Each training job is what enet launch would submit; the tuner varies learning rate,
    weight decay, dropout, class weighting and batch size (or --ranges FILE) to maximize the
    validation mean IoU. Every value is checked before anything is uploaded.

    Example: enet tune data/camvid --epochs 100 --max-jobs 12 --dry-run
    """
    from enet_cli.cloud.tune import tune as submit
    from enet_cli.train.settings import load_config

    data = options.pop("data")
    tune_cfg = make_options(TuneConfig, pick(options, TuneConfig))
    launch_cfg = make_options(LaunchConfig, pick(options, LaunchConfig))
    if launch_cfg.job_name:
        raise typer.BadParameter("--job-name: name the tuning job with --tuning-job-name")
    cfg = load_config(options.pop("config"), overrides(options))
    submit(cfg, launch_cfg, tune_cfg, data)


def deploy(**options: Any) -> None:
    """Serve a trained ENet on a SageMaker endpoint (TensorFlow Serving + enet's handler).

    The endpoint takes image/png, image/jpeg or application/x-npy and answers with the class
    map as image/png, application/json (with per-class shares) or float16 probabilities
    (application/x-npy), by the Accept header. It bills while it exists: enet undeploy NAME.

    Example: enet deploy runs/camvid --wait, then enet invoke NAME photo.png --out out/
    """
    from enet_cli.cloud.deploy import deploy as create

    model = options.pop("model")
    create(model, make_options(DeployConfig, options))


def transform(**options: Any) -> None:
    """Segment every image under an S3 prefix with a SageMaker batch transform job.

    Each object under INPUT is one request to the same handler as enet deploy's endpoint;
    OUTPUT receives <key>.out with the reply (--accept). Billed for the job's duration only.

    Example: enet transform runs/camvid s3://bucket/frames/ s3://bucket/masks/ --wait
    """
    from enet_cli.cloud.deploy import transform as start

    model, source, target = options.pop("model"), options.pop("input"), options.pop("output")
    start(model, source, target, make_options(TransformConfig, options))


def undeploy(**options: Any) -> None:
    """Delete an endpoint, its endpoint configuration and its model (billing stops)."""
    from enet_cli.cloud.deploy import undeploy as delete

    name = options.pop("name")
    delete(name, make_options(AwsConfig, options))


def invoke(**options: Any) -> None:
    """Send images to an enet endpoint; write the PNGs enet predict writes.

    Each image's class map and overlay come from the endpoint's JSON reply. ENDPOINT may
    also be the URL enet serve printed: the same contract on this machine.

    Example: enet invoke enet-2026-12-04-11-30-00-123 photo.png --out out/
    """
    from enet_cli.cloud.deploy import invoke as call

    endpoint, images, out = options.pop("endpoint"), options.pop("images"), options.pop("out")
    call(endpoint, [Path(p) for p in images], Path(out), make_options(AwsConfig, options))


REGION_OPTION = typer.Option(None, "--region", help="AWS region (default: the AWS config's).")
JOB_ARGUMENT = typer.Argument(..., help="The training job's name.", show_default=False)


def jobs_list(
    region: Optional[str] = REGION_OPTION,
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many, newest first."),
) -> None:
    """The training jobs enet launch and enet tune submitted (tagged enet-cli)."""
    from enet_cli.cloud.jobs import list_jobs, print_jobs

    print_jobs(list_jobs(AwsConfig(region=region), limit))


def jobs_describe(name: str = JOB_ARGUMENT, region: Optional[str] = REGION_OPTION) -> None:
    """Status, instances, final metrics, hyperparameters, model and failure of a job."""
    from enet_cli.cloud.jobs import describe

    describe(name, AwsConfig(region=region))


def jobs_logs(
    name: str = JOB_ARGUMENT,
    follow: bool = flag(False, "--follow", "-f", help="Until the job ends."),
    region: Optional[str] = REGION_OPTION,
) -> None:
    """The job's log lines from CloudWatch (every host's, by time)."""
    from enet_cli.cloud.jobs import logs

    logs(name, AwsConfig(region=region), follow)


def jobs_stop(name: str = JOB_ARGUMENT, region: Optional[str] = REGION_OPTION) -> None:
    """Stop a running job (SageMaker keeps its model and checkpoints)."""
    from enet_cli.cloud.jobs import stop

    stop(name, AwsConfig(region=region))


def jobs_download(
    name: str = JOB_ARGUMENT,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory (default: ./NAME)."),
    force: bool = flag(False, "--force", help="Replace an earlier download there."),
    region: Optional[str] = REGION_OPTION,
) -> None:
    """Download a finished job's model for enet evaluate, predict and export."""
    from enet_cli.cloud.jobs import download

    download(name, out, AwsConfig(region=region), force)


def register(app: typer.Typer) -> None:
    data = argument(*DATA_ARGUMENT)
    model = argument(*MODEL_ARGUMENT)
    where = settings_parameters(AwsConfig, "aws", PANEL_AWS, only=AWS_WHERE)
    app.command("launch")(command_with(launch, [data, *_job_options()]))
    tune_options = settings_parameters(TuneConfig, "tune", PANEL_TUNE)
    app.command("tune")(command_with(tune, [data, *_job_options(), *tune_options]))
    serve = settings_parameters(DeployConfig, "deploy", PANEL_SERVE)
    app.command("deploy")(command_with(deploy, [model, *serve]))
    targets = [
        argument("input", "s3:// prefix of the images."),
        argument("output", "s3:// prefix for the class maps (outside INPUT)."),
    ]
    batch = settings_parameters(TransformConfig, "transform", PANEL_SERVE)
    app.command("transform")(command_with(transform, [model, *targets, *batch]))
    name = argument("name", "The endpoint's name.")
    app.command("undeploy")(command_with(undeploy, [name, *where]))
    invoke_leading = [
        argument(
            "endpoint",
            "The endpoint's name (enet deploy printed it), or the URL of enet serve "
            "(http://127.0.0.1:8080).",
        ),
        argument("images", "PNG or JPEG images (others are sent as PNG).", List[Path]),
        keyword(
            "out",
            typer.Option("predictions", "--out", "-o", help="Directory for the PNGs."),
            Path,
        ),
    ]
    app.command("invoke")(command_with(invoke, [*invoke_leading, *where]))

    jobs_app = typer.Typer(
        help="This tool's SageMaker training jobs: list, describe, logs, stop, download.",
        no_args_is_help=True,
        rich_markup_mode="rich",
    )
    for verb, command in (
        ("list", jobs_list),
        ("describe", jobs_describe),
        ("logs", jobs_logs),
        ("stop", jobs_stop),
        ("download", jobs_download),
    ):
        jobs_app.command(verb)(command)
    app.add_typer(jobs_app, name="jobs")
