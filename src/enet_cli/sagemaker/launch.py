"""`enet launch`: submit this package's own `enet train` as a SageMaker training job.

The plan (sagemaker/plan.py) is decided and checked first; then, and only without
--dry-run: AWS credentials, region and role; the data (a local preprocessed directory is
uploaded, skipping files already in S3 with the same SHA-256); the source directory (the
wheel and the entry script, sagemaker/source.py); and the SageMaker Python SDK 2.x
`TensorFlow` estimator, the line of the SDK that still runs TensorFlow framework jobs with
smdistributed (3.x dropped both).
"""

import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from enet_cli import ui
from enet_cli.config import EnetConfig, LaunchConfig
from enet_cli.data.manifest import MANIFEST_NAME, file_sha256, load_manifest
from enet_cli.errors import ConfigError, EnvironmentProblem, LaunchError
from enet_cli.sagemaker.plan import LaunchPlan, make_plan
from enet_cli.sagemaker.source import ENTRY_SCRIPT, stage_source

ROLE_ENV = "SAGEMAKER_ROLE"
DEFAULT_PREFIX = "enet"


def _sdk():
    # SDK 2 tells every user about SDK 3 on import; we are on 2 on purpose (module docstring).
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    try:
        import boto3
        import sagemaker
        from sagemaker.tensorflow import TensorFlow
    except ImportError as err:
        raise EnvironmentProblem(
            f"enet launch needs the SageMaker Python SDK 2.x ({err}); install it with: "
            f"pip install 'enet-cli[launch]'"
        ) from None
    return boto3, sagemaker, TensorFlow


def data_channel(data: str, prefix: str) -> str:
    """Where the job reads its data: DATA itself when it is an S3 URI."""
    if data.startswith("s3://"):
        return data.rstrip("/")
    return f"{prefix}/data/{Path(data).resolve().name}"


def check_local_data(cfg: EnetConfig, data: str, replicas: int) -> None:
    """A local DATA must be enet preprocess output, with enough records for a step."""
    if data.startswith("s3://"):
        return
    from enet_cli.data.manifest import check_batch_size

    manifest = load_manifest(Path(data), splits=["train", "val"])
    check_batch_size(manifest, "train", cfg.train.batch_size, replicas)


def print_plan(plan: LaunchPlan, rows) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="SageMaker training job", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for what, value in [*plan.describe(), *rows]:
        table.add_row(Text(what), Text(value))  # as is: regexes and paths are not markup
    ui.stdout.print(table)


def launch(cfg: EnetConfig, launch_cfg: LaunchConfig, data: str) -> Optional[str]:
    """Submit (or with --dry-run, print) the job; returns its name when submitted."""
    plan = make_plan(cfg, launch_cfg)
    check_local_data(cfg, data, plan.replicas)
    prefix = (launch_cfg.s3_prefix or "").rstrip("/")
    if prefix and not prefix.startswith("s3://"):
        raise ConfigError(f"--s3-prefix {prefix!r} must be an s3:// URI, e.g. s3://bucket/enet")
    if launch_cfg.dry_run:
        where = prefix or f"s3://<the session's default bucket>/{DEFAULT_PREFIX}"
        uploads = []
        if not data.startswith("s3://"):
            files = upload_list(Path(data))
            size = sum(p.stat().st_size for p in files) / 1e6
            uploads = [("upload", f"{len(files)} files of {data}, {size:.1f} MB (the manifest's)")]
        print_plan(
            plan,
            [
                *uploads,
                ("channel train", data_channel(data, where)),
                ("source", f"enet-cli wheel + {ENTRY_SCRIPT} -> {where}/code"),
                ("checkpoints", f"{where}/<job name>/checkpoints <-> /opt/ml/checkpoints"),
                ("output", f"{where}/output"),
                ("cost", "not estimated: no honest price source offline; see AWS pricing"),
            ],
        )
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return _submit(plan, launch_cfg, data, prefix)
    except (BotoCoreError, ClientError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise LaunchError(
            f"AWS refused or could not be reached ({first}); check the network, --region, "
            f"AWS_ENDPOINT_URL and your credentials, then try again"
        ) from None


def _sessions(launch_cfg: LaunchConfig):
    boto3, _, _ = _sdk()
    session = boto3.Session(region_name=launch_cfg.region)
    if not session.region_name:
        raise ConfigError(
            "no AWS region: pass --region, set AWS_DEFAULT_REGION, or run aws configure"
        )
    if session.get_credentials() is None:
        raise ConfigError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
            "or run aws configure"
        )
    role = launch_cfg.role or os.environ.get(ROLE_ENV)
    if not role:
        raise ConfigError(
            f"no IAM role for the job: pass --role arn:aws:iam::<account>:role/<name> or set "
            f"{ROLE_ENV}"
        )
    return session, role


def _default_bucket(boto_session) -> str:
    """The SDK's own default bucket name, sagemaker-<region>-<account>, but found with a
    client that honours AWS_ENDPOINT_URL (the SDK pins STS to its regional endpoint)."""
    account = boto_session.client("sts").get_caller_identity()["Account"]
    return f"sagemaker-{boto_session.region_name}-{account}"


def _sdk_config() -> dict:
    """The user's SageMaker SDK defaults (VPC, KMS, tags...), with the SDK's telemetry off
    unless they set it: a CLI should not report its users' jobs to anyone on its own."""
    import logging

    from sagemaker.config import load_sagemaker_config

    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)  # "not applying ..." lines
    config = load_sagemaker_config() or {}
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {})
    modules.setdefault("Modules", {}).setdefault("TelemetryOptOut", True)
    config.setdefault("SchemaVersion", "1.0")
    return config


def _submit(plan: LaunchPlan, launch_cfg: LaunchConfig, data: str, prefix: str) -> str:
    _, sagemaker, TensorFlow = _sdk()
    boto_session, role = _sessions(launch_cfg)
    session = sagemaker.Session(
        boto_session=boto_session,
        sagemaker_config=_sdk_config(),
        default_bucket=None if prefix else _default_bucket(boto_session),
    )
    if not prefix:
        prefix = f"s3://{session.default_bucket()}/{DEFAULT_PREFIX}"
    job_name = launch_cfg.job_name or sagemaker.utils.name_from_base(
        f"enet-{plan.mode.value}-{plan.engine.value}"
    )
    channel = data_channel(data, prefix)
    if not data.startswith("s3://"):
        upload_directory(boto_session.client("s3"), Path(data), channel)
    with tempfile.TemporaryDirectory(prefix="enet-source-") as tmp:
        source = stage_source(Path(tmp) / "source")
        estimator = TensorFlow(
            entry_point=ENTRY_SCRIPT,
            source_dir=str(source),
            role=role,
            image_uri=plan.image_uri,
            framework_version=plan.framework_version,
            py_version=plan.py_version,
            instance_type=plan.instance_type,
            instance_count=plan.instance_count,
            volume_size=plan.volume_size,
            distribution=plan.distribution,
            hyperparameters=plan.hyperparameters,
            metric_definitions=plan.metric_definitions,
            use_spot_instances=plan.spot,
            max_run=plan.max_run,
            max_wait=plan.max_wait,
            checkpoint_s3_uri=f"{prefix}/{job_name}/checkpoints",
            output_path=f"{prefix}/output",
            code_location=f"{prefix}/code",
            sagemaker_session=session,
            disable_profiler=True,
            debugger_hook_config=False,
        )
        ui.info(f"submitting {job_name}: {plan.instance_count} x {plan.instance_type}")
        try:
            estimator.fit({"train": channel}, job_name=job_name, wait=launch_cfg.wait)
        except sagemaker.exceptions.UnexpectedStatusException as err:
            raise LaunchError(f"training job {job_name} failed: {err}") from None
    ui.info(
        f"job {job_name} submitted; follow it with: aws sagemaker describe-training-job "
        f"--training-job-name {job_name}"
        if not launch_cfg.wait
        else f"job {job_name} finished; model in {prefix}/output/{job_name}/output/model.tar.gz"
    )
    return job_name


def upload_list(directory: Path) -> List[Path]:
    """Exactly what the job needs from a preprocessed directory: manifest.json and the shards
    it lists. Nothing else in DATA (dotfiles, notes, a symlink to credentials) ever leaves
    the machine, and a listed file that is a link out of DATA is refused."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    files = [directory / MANIFEST_NAME]
    for split in manifest.splits:
        files.extend(manifest.shard_paths(directory, split))
    root = directory.resolve()
    for path in files:
        if root not in path.resolve().parents:
            raise LaunchError(
                f"{path} points outside {directory} (to {path.resolve()}); enet launch uploads "
                f"only files inside DATA: copy the file in instead of linking it"
            )
    return files


def upload_directory(s3, directory: Path, uri: str) -> Dict[str, int]:
    """Upload upload_list(directory) under `uri` with a progress bar; a file already there
    with the same SHA-256 (kept in the object's metadata) is skipped. Returns counts."""
    bucket, _, key_prefix = uri[len("s3://") :].partition("/")
    files = upload_list(directory)
    total = sum(p.stat().st_size for p in files)
    ui.info(
        f"uploading {len(files)} files of {directory} ({total / 1e6:.1f} MB): {MANIFEST_NAME} "
        f"and the shards it lists, nothing else"
    )
    counts = {"uploaded": 0, "skipped": 0}
    with ui.byte_progress(f"uploading {directory.name}", total) as advance:
        for path in files:
            key = f"{key_prefix}/{path.relative_to(directory).as_posix()}".lstrip("/")
            digest = file_sha256(path)
            if _remote_sha256(s3, bucket, key) == digest:
                counts["skipped"] += 1
                advance(path.stat().st_size)
                continue
            s3.upload_file(
                str(path),
                bucket,
                key,
                ExtraArgs={"Metadata": {"sha256": digest}},
                Callback=advance,
            )
            counts["uploaded"] += 1
    ui.info(
        f"data in {uri}: {counts['uploaded']} file(s) uploaded, {counts['skipped']} already there"
    )
    return counts


def _remote_sha256(s3, bucket: str, key: str) -> Optional[str]:
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return None
    return head.get("Metadata", {}).get("sha256")
