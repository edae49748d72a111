"""What every command that talks to AWS shares: the SageMaker Python SDK 2.x (the line that
still runs TensorFlow framework jobs with smdistributed; 3.x dropped both), the session,
region, credentials and role checks, the S3 prefix, the tag that marks this tool's jobs and
endpoints, checksum-skip uploads, and one line for anything AWS refuses.
"""

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator, List, NamedTuple, Optional

from enet_cli import __version__
from enet_cli.cloud.settings import AwsConfig
from enet_cli.core import ui
from enet_cli.core.errors import AwsError, ConfigError, EnvironmentProblem

ROLE_ENV = "SAGEMAKER_ROLE"
DEFAULT_PREFIX = "enet"
DRY_RUN_PREFIX = f"s3://<the session's default bucket>/{DEFAULT_PREFIX}"  # what --dry-run says
# Every job, tuning job, model and endpoint this tool creates carries this tag; `enet jobs
# list` lists what carries it.
TAG_KEY = "enet-cli"


def tags() -> List[dict]:
    return [{"Key": TAG_KEY, "Value": __version__}]


def sdk():
    """The `sagemaker` module (SDK 2), or a one-line error naming the extra."""
    import logging

    # SDK 2 tells every user about SDK 3 on import; we are on 2 on purpose (module docstring).
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)  # "not applying ..." lines
    # sagemaker.experiments calls logging.basicConfig(level=INFO) when first imported (some
    # time into a job's submission): then every INFO line of the SDK and botocore would
    # reach the terminal. basicConfig does nothing once the root logger has a handler, so
    # give it one first, for warnings only.
    root = logging.getLogger()
    if not root.handlers:
        warnings_only = logging.StreamHandler()
        warnings_only.setLevel(logging.WARNING)
        root.addHandler(warnings_only)
    try:
        import boto3  # noqa: F401
        import sagemaker
        import sagemaker.tensorflow
    except ImportError as err:
        raise EnvironmentProblem(
            f"this command needs the SageMaker Python SDK 2.x ({err}); install it with: "
            f"pip install 'enet-cli[launch]'"
        ) from None
    return sagemaker


@contextlib.contextmanager
def aws_errors() -> Iterator[None]:
    """Anything AWS refuses (or cannot be reached for) as one line."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as err:
        first = str(err).strip().splitlines()[0][:300]
        raise AwsError(
            f"AWS refused or could not be reached ({first}); check the network, --region, "
            f"AWS_ENDPOINT_URL and your credentials, then try again"
        ) from None


def check_prefix(prefix: Optional[str]) -> str:
    prefix = (prefix or "").rstrip("/")
    if prefix and not prefix.startswith("s3://"):
        raise ConfigError(f"--s3-prefix {prefix!r} must be an s3:// URI, e.g. s3://bucket/enet")
    return prefix


def boto_session(cfg: AwsConfig):
    """A boto3 session with a region and credentials, or a one-line error saying how.

    Enough for the commands that only call AWS's APIs (jobs, invoke, undeploy, download):
    they do not import the SageMaker SDK, whose import alone takes longer than their work."""
    try:
        import boto3
    except ImportError as err:
        raise EnvironmentProblem(
            f"this command needs boto3 ({err}); install it with: pip install 'enet-cli[launch]'"
        ) from None

    session = boto3.Session(region_name=cfg.region)
    if not session.region_name:
        raise ConfigError(
            "no AWS region: pass --region, set AWS_DEFAULT_REGION, or run aws configure"
        )
    if session.get_credentials() is None:
        raise ConfigError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
            "or run aws configure"
        )
    return session


def role(cfg: AwsConfig) -> str:
    found = cfg.role or os.environ.get(ROLE_ENV)
    if not found:
        raise ConfigError(
            f"no IAM role for SageMaker: pass --role arn:aws:iam::<account>:role/<name> or "
            f"set {ROLE_ENV}"
        )
    return found


def _default_bucket(session) -> str:
    """The SDK's own default bucket name, sagemaker-<region>-<account>, but found with a
    client that honours AWS_ENDPOINT_URL (the SDK pins STS to its regional endpoint)."""
    account = session.client("sts").get_caller_identity()["Account"]
    return f"sagemaker-{session.region_name}-{account}"


def _sdk_config() -> dict:
    """The user's SageMaker SDK defaults (VPC, KMS, tags...), with the SDK's telemetry off
    unless they set it: a CLI should not report its users' jobs to anyone on its own."""
    from sagemaker.config import load_sagemaker_config

    config = load_sagemaker_config() or {}
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {})
    modules.setdefault("Modules", {}).setdefault("TelemetryOptOut", True)
    config.setdefault("SchemaVersion", "1.0")
    return config


class Aws(NamedTuple):
    """An SDK session and what goes with it for one command."""

    boto: object  # boto3.Session
    session: object  # sagemaker.Session
    prefix: str  # s3://bucket/prefix, no trailing slash
    role: str

    def client(self, name: str):
        return self.boto.client(name)  # type: ignore[attr-defined]


def connect(cfg: AwsConfig) -> Aws:
    """The SDK session for `cfg`, for the commands that create what SageMaker runs (jobs,
    models, endpoints): region, credentials and the role SageMaker will assume are checked
    first; the prefix defaults to the SDK's default bucket."""
    sagemaker = sdk()
    prefix = check_prefix(cfg.s3_prefix)
    boto = boto_session(cfg)
    assumed = role(cfg)
    # The bucket is always given: the SDK would otherwise ask STS at its pinned regional
    # endpoint (ignoring AWS_ENDPOINT_URL) whenever it wants a default bucket.
    session = sagemaker.Session(
        boto_session=boto,
        sagemaker_config=_sdk_config(),
        default_bucket=split_uri(prefix)[0] if prefix else _default_bucket(boto),
    )
    if not prefix:
        prefix = f"s3://{session.default_bucket()}/{DEFAULT_PREFIX}"
    return Aws(boto, session, prefix, assumed)


def split_uri(uri: str):
    """s3://bucket/key -> (bucket, key)."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def upload_file(s3, path: Path, uri: str, advance: Optional[Callable[[int], None]] = None) -> bool:
    """Upload `path` to `uri` unless an object with the same SHA-256 (kept in its metadata)
    is there already; True when uploaded."""
    from enet_cli.data.manifest import file_sha256

    bucket, key = split_uri(uri)
    digest = file_sha256(path)
    if _remote_sha256(s3, bucket, key) == digest:
        if advance:
            advance(path.stat().st_size)
        return False
    s3.upload_file(
        str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}}, Callback=advance
    )
    return True


def _remote_sha256(s3, bucket: str, key: str) -> Optional[str]:
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return None
    return head.get("Metadata", {}).get("sha256")


def print_rows(title: str, rows) -> None:
    """(what, value) rows as a two-column table (the dry-run plans and descriptions)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for what, value in rows:
        table.add_row(Text(what), Text(value))  # as is: regexes and paths are not markup
    ui.stdout.print(table)


# What each kind of SageMaker resource is described by and when it is done waiting for.
WAITS = {
    "endpoint": ("describe_endpoint", "EndpointName", "EndpointStatus", "InService"),
    "batch transform": (
        "describe_transform_job", "TransformJobName", "TransformJobStatus", "Completed"
    ),
    "tuning job": (
        "describe_hyper_parameter_tuning_job",
        "HyperParameterTuningJobName",
        "HyperParameterTuningJobStatus",
        "Completed",
    ),
}  # fmt: skip


def wait_for(where: "Aws", kind: str, name: str) -> dict:
    """Poll the resource until it is done (returned) or in another final state (one line
    with SageMaker's FailureReason). Our own wait instead of the SDK's, which prints dots
    on stdout."""
    import time

    method, key, status_key, done = WAITS[kind]
    describe = getattr(where.client("sagemaker"), method)
    delay = 1.0
    with ui.status(f"waiting for {kind} {name}"):
        while True:
            found = describe(**{key: name})
            status = found.get(status_key)
            if status == done:
                return found
            if status in ("Failed", "Stopped", "OutOfService"):
                reason = found.get("FailureReason", "no reason given")
                raise AwsError(f"{kind} {name} is {status}: {reason}")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
