"""`enet jobs list|describe|logs|stop|download`: this tool's SageMaker training jobs after
`enet launch` (or `enet tune`) submitted them. "This tool's" = tagged aws.TAG_KEY at
submission; `describe`, `logs`, `stop` and `download` take any training job by name.
"""

import time
from pathlib import Path
from typing import Dict, List, Optional

from enet_cli.cloud import aws
from enet_cli.cloud.deploy import download_model, job_model_uri
from enet_cli.cloud.settings import AwsConfig
from enet_cli.core import outputs, ui
from enet_cli.core.errors import DataError

LOG_GROUP = "/aws/sagemaker/TrainingJobs"  # where SageMaker sends a job's stdout/stderr
ENDED = ("Completed", "Failed", "Stopped")


def _describe(sm, name: str) -> dict:
    try:
        return sm.describe_training_job(TrainingJobName=name)
    except Exception as err:
        if "ValidationException" in str(err) or "ResourceNotFound" in str(err):
            raise DataError(
                f"no training job {name} in this region; list them with: enet jobs list"
            ) from None
        raise


def list_jobs(cfg: AwsConfig, limit: int = 50) -> List[Dict]:
    """This tool's training jobs, newest first: name, status, created, instance, metric."""
    rows = []
    with aws.aws_errors():
        sm = aws.boto_session(cfg).client("sagemaker")
        pages = sm.get_paginator("list_training_jobs").paginate(
            SortBy="CreationTime", SortOrder="Descending"
        )
        for page in pages:
            for job in page["TrainingJobSummaries"]:
                found = sm.list_tags(ResourceArn=job["TrainingJobArn"]).get("Tags", [])
                if not any(t["Key"] == aws.TAG_KEY for t in found):
                    continue
                rows.append(
                    {
                        "name": job["TrainingJobName"],
                        "status": job["TrainingJobStatus"],
                        "created": str(job["CreationTime"])[:19],
                    }
                )
                if len(rows) >= limit:
                    return rows
    return rows


def print_jobs(rows: List[Dict]) -> None:
    from rich.table import Table

    if not rows:
        ui.info("no training jobs of enet-cli in this region (enet launch submits them)")
        return
    table = Table(title="enet-cli training jobs (newest first)")
    for column in ("name", "status", "created"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["status"], row["created"])
    ui.stdout.print(table)


def describe(name: str, cfg: AwsConfig) -> dict:
    """One job: status, times, instances, metrics, hyperparameters, model, failure."""
    with aws.aws_errors():
        sm = aws.boto_session(cfg).client("sagemaker")
        job = _describe(sm, name)
    resources = job.get("ResourceConfig", {})
    rows = [
        ("status", f"{job['TrainingJobStatus']} ({job.get('SecondaryStatus', '-')})"),
        ("created", str(job.get("CreationTime", "-"))[:19]),
        ("instances", f"{resources.get('InstanceCount', '?')} x {resources.get('InstanceType')}"),
        ("seconds billed", str(job.get("BillableTimeInSeconds", "-"))),
    ]
    for metric in job.get("FinalMetricDataList", []):
        rows.append((f"metric {metric['MetricName']}", f"{metric['Value']:.6g}"))
    hyper = {
        k: v for k, v in job.get("HyperParameters", {}).items() if not k.startswith("sagemaker_")
    }
    rows += [(f"hp {k}", v) for k, v in sorted(hyper.items())]
    model = job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    rows.append(("model", model or "none yet"))
    if job.get("FailureReason"):
        rows.append(("failure", job["FailureReason"]))
    aws.print_rows(f"training job {name}", rows)
    return job


def logs(name: str, cfg: AwsConfig, follow: bool = False, poll: float = 5.0) -> int:
    """The job's CloudWatch log lines (every host's stream, by time) on stdout; with
    `follow`, until the job ends. Returns the lines printed."""
    printed = 0
    with aws.aws_errors():
        boto = aws.boto_session(cfg)
        sm, cw = boto.client("sagemaker"), boto.client("logs")
        _describe(sm, name)
        tokens: Dict[str, Optional[str]] = {}
        ended = False
        while True:
            ended = _describe(sm, name)["TrainingJobStatus"] in ENDED
            printed += _print_new_events(cw, name, tokens)
            if ended or not follow:
                break
            time.sleep(poll)
    if printed == 0 and ended:
        ui.info(f"no log lines for {name}: the job ended without writing any to CloudWatch")
    elif printed == 0:
        ui.info(f"no log lines for {name} yet (SageMaker sends them once the job starts)")
    return printed


def _print_new_events(cw, name: str, tokens: Dict[str, Optional[str]]) -> int:
    try:
        streams = cw.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/")
    except cw.exceptions.ResourceNotFoundException:
        return 0
    events = []
    for stream in streams.get("logStreams", []):
        stream_name = stream["logStreamName"]
        options = dict(logGroupName=LOG_GROUP, logStreamName=stream_name, startFromHead=True)
        if tokens.get(stream_name):
            options["nextToken"] = tokens[stream_name]
        while True:
            page = cw.get_log_events(**options)
            events += [(e["timestamp"], stream_name, e["message"]) for e in page["events"]]
            if not page["events"] or page.get("nextForwardToken") == options.get("nextToken"):
                tokens[stream_name] = page.get("nextForwardToken")
                break
            options["nextToken"] = page["nextForwardToken"]
    hosts = {s for _, s, _ in events}
    for _, stream_name, message in sorted(events, key=lambda e: (e[0], e[1])):
        host = stream_name.split("/", 1)[-1]
        line = f"[{host}] {message}" if len(hosts) > 1 else message
        ui.stdout.print(line, markup=False, highlight=False, soft_wrap=True)
    return len(events)


def stop(name: str, cfg: AwsConfig) -> None:
    with aws.aws_errors():
        sm = aws.boto_session(cfg).client("sagemaker")
        status = _describe(sm, name)["TrainingJobStatus"]
        if status in ENDED:
            ui.info(f"training job {name} already ended ({status}); nothing to stop")
            return
        sm.stop_training_job(TrainingJobName=name)
    ui.info(
        f"stopping {name}: SageMaker saves its model and last checkpoints first "
        f"(enet jobs describe {name} shows when it is Stopped)"
    )


def download(
    name: str, out: Optional[Path], cfg: AwsConfig, force: bool = False, hint: bool = True
) -> Path:
    """The job's model.tar.gz, unpacked (every member checked) into `out` (default:
    ./NAME), published only once whole; `enet evaluate/predict/export OUT` read it."""
    target = Path(out) if out is not None else Path(name)
    with outputs.claim(target, "download", force, (), "--out") as staged, aws.aws_errors():
        boto = aws.boto_session(cfg)
        uri = job_model_uri(boto.client("sagemaker"), name)
        download_model(boto.client("s3"), uri, staged.path)
        published = staged.publish()
    if hint:
        ui.info(
            f"model of {name} in {published}; try: enet evaluate {published} DATA, "
            f"enet predict {published} IMAGE"
        )
    return published


def cache_dir() -> Path:
    """Where a job's model is kept when a command is given the job's name."""
    from enet_cli.core.cache import user_cache

    return user_cache("jobs")


def model_of(argument: Path) -> Path:
    """MODEL for evaluate, predict and export: a path as it is; a name that is no path but
    a training job's is that job's model, downloaded once into cache_dir(). Without the
    boto3 or credentials, the path is returned for the usual "does not exist" line."""
    from enet_cli.artifacts.model_ref import ModelRef, RefKind
    from enet_cli.core.errors import ConfigError, EnvironmentProblem

    text = str(argument)
    if ModelRef.parse(text).kind is not RefKind.job:
        return argument
    cached = cache_dir() / text
    if (cached / "enet.json").is_file():
        ui.info(f"model: training job {text}'s, downloaded earlier to {cached}")
        return cached
    try:
        found = download(text, cached, AwsConfig(), hint=False)
        ui.info(f"model: training job {text}'s, downloaded to {found}")
    except (EnvironmentProblem, ConfigError):
        return argument  # no boto3 or no AWS: it was meant as a path
    except DataError as err:
        raise DataError(f"model {text} is no path here; as a training job: {err}") from None
    return found
