"""SageMaker's part of a training job, played here: the job `enet launch` submitted to the
moto server (moto records it and reports it Completed at once; it runs nothing) is run the
way SageMaker's TensorFlow training toolkit runs it, in a temporary /opt/ml, and what it
leaves in /opt/ml/model goes to the job's S3 output as model.tar.gz.

Followed: the training toolkit's contract (sagemaker-training-toolkit: hyperparameters.json
and resourceconfig.json under /opt/ml/input/config, each channel under /opt/ml/input/data,
the entry point run with every hyperparameter as `--key value`, SMP's parameters as
--mp_parameters) and the SDK's output layout (<S3OutputPath>/<job>/output/model.tar.gz)."""

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, Optional

from enet_cli.container.contract import ROOT_ENV
from enet_testing import enet_env
from moto_aws import recorded


def created(env, job: str) -> dict:
    """The CreateTrainingJob request exactly as the SDK sent it."""
    (found,) = recorded(env, "CreateTrainingJob", TrainingJobName=job)
    return found


def toolkit_arguments(hyperparameters) -> list:
    """What the training toolkit passes the entry point: every hyperparameter as
    `--key value` (SDK-encoded), --model_dir, and under SMP --mp_parameters k=v,..."""
    args = ["--model_dir", "s3://enet-test-bucket/jobs/output/model"]
    for key, value in hyperparameters.items():
        if key == "mp_parameters":
            params = json.loads(value)
            args += ["--mp_parameters", ",".join(f"{k}={v}" for k, v in params.items())]
        elif not key.startswith("sagemaker_"):
            args += [f"--{key}", value]
    return args


def run_container(code_dir: Path, hyperparameters, data: Path, root: Path, env=None):
    """The job as SageMaker runs it, in a temporary /opt/ml: the entry script in the code
    directory with the toolkit's arguments, hyperparameters.json and resourceconfig.json.
    `mp_parameters`, if any, reach the script only as the toolkit's --mp_parameters."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    written = {k: v for k, v in hyperparameters.items() if k != "mp_parameters"}
    (config / "hyperparameters.json").write_text(json.dumps(written))
    (config / "resourceconfig.json").write_text(
        json.dumps(
            {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}
        )
    )
    shutil.copytree(data, root / "input" / "data" / "train")
    env = {**enet_env(), ROOT_ENV: str(root), **(env or {})}
    env.pop("SM_HP_MP_PARAMETERS", None)
    command = [sys.executable, "enet_entry.py", *toolkit_arguments(hyperparameters)]
    return subprocess.run(
        command, cwd=code_dir, capture_output=True, text=True, timeout=600, env=env
    )


def _split(uri: str):
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def submitted_code(env, clients, job: str, code: Path) -> Dict[str, str]:
    """Unpack the job's source tarball (sagemaker_submit_directory) into `code`; returns
    the job's hyperparameters."""
    hyperparameters = created(env, job)["HyperParameters"]
    bucket, key = _split(json.loads(hyperparameters["sagemaker_submit_directory"]))
    code.mkdir(parents=True)
    body = clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(code)
    return hyperparameters


def play_training_job(
    env, clients, job: str, root: Path, extra_env: Optional[dict] = None, bottlenecks=None
):
    """Run the submitted `job` as SageMaker would (its code, hyperparameters and train
    channel, all read back from the moto server) and put its model where SageMaker puts
    it; returns the finished process. `bottlenecks` trains a shallower ENet than the job
    asked for (what is tested is the job's path, not the model's depth)."""
    request = created(env, job)
    hyperparameters = submitted_code(env, clients, job, root / "code")
    if bottlenecks is not None:
        hyperparameters = {**hyperparameters, "bottlenecks": json.dumps(list(bottlenecks))}
    (channel,) = [c for c in request["InputDataConfig"] if c["ChannelName"] == "train"]
    bucket, prefix = _split(channel["DataSource"]["S3DataSource"]["S3Uri"])
    data = root / "channel"
    pages = clients["s3"].get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", []):
            target = data / item["Key"][len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            clients["s3"].download_file(bucket, item["Key"], str(target))
    ml = root / "ml"
    result = run_container(root / "code", hyperparameters, data, ml, extra_env)
    assert result.returncode == 0, result.stderr[-3000:]
    artifacts = clients["sagemaker"].describe_training_job(TrainingJobName=job)
    bucket, key = _split(artifacts["ModelArtifacts"]["S3ModelArtifacts"])
    buffer = io.BytesIO()  # SageMaker tars /opt/ml/model's contents
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted((ml / "model").iterdir()):
            tar.add(path, path.name)
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return result
