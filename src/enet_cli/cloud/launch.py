"""`enet launch`: submit this package's own `enet train` as a SageMaker training job.

The plan (cloud/plan.py) is decided and checked first; then, and only without
--dry-run: AWS credentials, region and role; the data (a local preprocessed directory is
uploaded, skipping files already in S3 with the same SHA-256); the source directory (the
wheel and the entry script, cloud/source.py); and the SageMaker Python SDK 2.x
`TensorFlow` estimator, the line of the SDK that still runs TensorFlow framework jobs with
smdistributed (3.x dropped both).
"""

import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from enet_cli.cloud import aws, pricing
from enet_cli.cloud.plan import LaunchPlan, make_plan
from enet_cli.cloud.settings import LaunchConfig
from enet_cli.cloud.source import ENTRY_SCRIPT, stage_source
from enet_cli.core import ui
from enet_cli.core.config import EnetConfig
from enet_cli.core.errors import AwsError, ConfigError
from enet_cli.data.manifest import MANIFEST_NAME, load_manifest


def data_channel(data: str, prefix: str) -> str:
    """Where the job reads its data: DATA itself when it is an S3 URI."""
    if data.startswith("s3://"):
        return data.rstrip("/")
    return f"{prefix}/data/{Path(data).resolve().name}"


def check_local_data(cfg: EnetConfig, data: str, replicas: int) -> None:
    """A local DATA must be enet preprocess output, with enough records for a step, and
    every file it would upload inside it: refused here, before the cost question and any
    upload, not after the user confirmed a price."""
    if data.startswith("s3://"):
        return
    from enet_cli.data.manifest import check_batch_size

    manifest = load_manifest(Path(data), splits=["train", "val"])
    check_batch_size(manifest, "train", cfg.train.batch_size, replicas)
    upload_list(Path(data))


def print_plan(plan: LaunchPlan, rows) -> None:
    aws.print_rows("SageMaker training job", [*plan.describe(), *rows])


def launch(cfg: EnetConfig, launch_cfg: LaunchConfig, data: str) -> Optional[str]:
    """Submit (or with --dry-run, print) the job; returns its name when submitted."""
    plan = make_plan(cfg, launch_cfg)
    check_local_data(cfg, data, plan.replicas)
    prefix = aws.check_prefix(launch_cfg.s3_prefix)
    if launch_cfg.dry_run:
        where = prefix or aws.DRY_RUN_PREFIX
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
                (
                    "cost",
                    "looked up at submission (AWS Price List API), which asks before a worst "
                    f"case over ${pricing.CONFIRM_ABOVE_USD:.0f} unless --yes; list prices: "
                    f"{pricing.PRICING_PAGE}",
                ),
            ],
        )
        return None
    with aws.aws_errors():
        return _submit(plan, launch_cfg, data)


def confirm_cost(plan: LaunchPlan, launch_cfg: LaunchConfig, where: aws.Aws, jobs: int = 1):
    """Say what the job costs at list price, and before one whose worst case is over
    pricing.CONFIRM_ABOVE_USD, ask (or take --yes); a refusal is one line, before any upload.
    A price that cannot be looked up is said so, and the job goes on: it cannot be judged."""
    found = pricing.training_price(where.boto, plan.instance_type, where.boto.region_name)
    if isinstance(found, str):
        ui.info(f"cost: not estimated ({found}); list prices: {pricing.PRICING_PAGE}")
        return
    cost = pricing.JobCost(found, plan.instance_type, plan.instance_count, plan.max_run, jobs)
    ui.info(f"cost: {cost.describe(plan.spot)}")
    if cost.worst_case <= pricing.CONFIRM_ABOVE_USD or launch_cfg.yes:
        return
    if ui.confirm(f"submit it, at up to ${cost.worst_case:,.2f}?"):
        return
    raise ConfigError(
        f"not submitted: it may cost up to ${cost.worst_case:,.2f} at list price (over "
        f"${pricing.CONFIRM_ABOVE_USD:.0f}); confirm with --yes, or lower --max-run, "
        f"--instance-count or --instance-type"
    )


def estimator(plan: LaunchPlan, launch_cfg: LaunchConfig, where: aws.Aws, job_name: str, source):
    """The SDK's TensorFlow estimator for `plan` (source: the staged source directory)."""
    from sagemaker.tensorflow import TensorFlow

    return TensorFlow(
        entry_point=ENTRY_SCRIPT,
        source_dir=str(source),
        role=where.role,
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
        checkpoint_s3_uri=f"{where.prefix}/{job_name}/checkpoints",
        output_path=f"{where.prefix}/output",
        code_location=f"{where.prefix}/code",
        sagemaker_session=where.session,
        disable_profiler=True,
        debugger_hook_config=False,
        tags=aws.tags(),
    )


def upload_data(data: str, where: aws.Aws) -> str:
    """The train channel's URI: DATA itself, or where a local DATA was uploaded."""
    channel = data_channel(data, where.prefix)
    if not data.startswith("s3://"):
        upload_directory(where.client("s3"), Path(data), channel)
    return channel


def _submit(plan: LaunchPlan, launch_cfg: LaunchConfig, data: str) -> str:
    sagemaker = aws.sdk()
    where = aws.connect(launch_cfg)
    job_name = launch_cfg.job_name or sagemaker.utils.name_from_base(
        f"enet-{plan.mode.value}-{plan.engine.value}"
    )
    confirm_cost(plan, launch_cfg, where)
    channel = upload_data(data, where)
    with tempfile.TemporaryDirectory(prefix="enet-source-") as tmp:
        job = estimator(plan, launch_cfg, where, job_name, stage_source(Path(tmp) / "source"))
        ui.info(f"submitting {job_name}: {plan.instance_count} x {plan.instance_type}")
        try:
            job.fit({"train": channel}, job_name=job_name, wait=launch_cfg.wait)
        except sagemaker.exceptions.UnexpectedStatusException as err:
            raise AwsError(f"training job {job_name} failed: {err}") from None
    ui.info(
        f"job {job_name} submitted; follow it with: enet jobs logs {job_name} --follow"
        if not launch_cfg.wait
        else f"job {job_name} finished; model in {where.prefix}/output/{job_name}/output/"
        f"model.tar.gz (enet jobs download {job_name})"
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
            raise AwsError(
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
            uploaded = aws.upload_file(s3, path, f"s3://{bucket}/{key}", advance)
            counts["uploaded" if uploaded else "skipped"] += 1
    ui.info(
        f"data in {uri}: {counts['uploaded']} file(s) uploaded, {counts['skipped']} already there"
    )
    return counts
