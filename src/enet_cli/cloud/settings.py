"""Settings of the SageMaker commands (launch, tune, deploy, transform, undeploy, invoke,
jobs), with their defaults: the same pydantic machinery as the training settings
(core/config.py), kept apart because only the client side on the user's machine reads them.
"""

import enum
import re
from pathlib import Path
from typing import Optional, Tuple

from pydantic import Field, field_validator

from enet_cli.core.config import Section
from enet_cli.core.errors import ConfigError

# SageMaker's instance type names: ml.<family>.<size>.
INSTANCE_TYPE = re.compile(r"ml\.[a-z0-9]+\.[a-z0-9]+")


def check_instance_type(option: str, instance_type: str, example: str) -> None:
    if not INSTANCE_TYPE.fullmatch(instance_type):
        raise ConfigError(
            f"{option} {instance_type!r} is not a SageMaker instance type (like {example})"
        )


class AwsConfig(Section):
    """Where every SageMaker command works: region, role and S3 prefix."""

    role: Optional[str] = Field(
        None, description="IAM role ARN SageMaker assumes (default: $SAGEMAKER_ROLE)."
    )
    region: Optional[str] = Field(None, description="AWS region (default: the AWS config's).")
    s3_prefix: Optional[str] = Field(
        None, description="s3://bucket/prefix for data, code, models and checkpoints."
    )


class LaunchConfig(AwsConfig):
    """`enet launch`: how the SageMaker training job runs (the training settings are the
    EnetConfig, passed through as hyperparameters). None = the mode's default
    (cloud/plan.py holds those defaults)."""

    instance_type: Optional[str] = Field(
        None, description="e.g. ml.p4d.24xlarge (default: the mode's, see the plan)."
    )
    instance_count: Optional[int] = Field(None, ge=1, description="Instances (hosts).")
    framework_version: Optional[str] = Field(
        None, description="TensorFlow container version, e.g. 2.11.0."
    )
    py_version: Optional[str] = Field(None, description="Container Python, e.g. py39.")
    image_uri: Optional[str] = Field(
        None, description="An image built from this repository's Dockerfile instead."
    )
    job_name: Optional[str] = Field(None, description="Training job name (default: generated).")
    spot: bool = Field(True, description="Managed spot training (resumes from checkpoints).")
    max_run: int = Field(24 * 3600, ge=60, description="Seconds the job may train.")
    max_wait: Optional[int] = Field(
        None, ge=60, description="Seconds to wait for spot capacity + train (>= max-run)."
    )
    volume_size: int = Field(30, ge=1, description="GB of EBS storage per instance.")
    dry_run: bool = Field(False, description="Print the plan; touch no AWS API.")
    wait: bool = Field(False, description="Stream the job's logs until it ends.")
    yes: bool = Field(
        False,
        description="Submit without asking when the job may cost over $50 at list price "
        "(its worst case: all instances for --max-run).",
    )


# Serverless inference's memory sizes (AWS: 1024-6144 MB in 1 GB steps).
SERVERLESS_MEMORY = (1024, 2048, 3072, 4096, 5120, 6144)


# The oldest TensorFlow Serving container the endpoint's handler runs in: older ones have
# Python 3.7 (aws/deep-learning-containers, tensorflow/inference/docker/2.5/py3/Dockerfile.cpu:
# PYTHON=python3.7; 2.6/py3/Dockerfile.cpu: python3.8), where the handler's requirements
# (cloud/package.py: pillow>=10) do not install and the container never starts.
OLDEST_SERVING_VERSION = (2, 6)


def _version_tuple(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise ValueError(f"--framework-version {text!r}: use a version like 2.19.0") from None


class ServeConfig(AwsConfig):
    """`enet deploy` and `enet transform`: the model's container and instances."""

    instance_type: str = Field(
        "ml.c5.xlarge", description="Instance type (ENet runs in real time on CPUs)."
    )
    instance_count: int = Field(1, ge=1, description="Instances.")
    framework_version: Optional[str] = Field(
        None, description="TensorFlow Serving container version (default: the newest)."
    )
    dry_run: bool = Field(False, description="Print the plan; touch no AWS API.")
    wait: bool = Field(False, description="Wait until it is in service (or done).")

    @field_validator("framework_version")
    @classmethod
    def _serving_version(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and _version_tuple(value)[:2] < OLDEST_SERVING_VERSION:
            oldest = ".".join(map(str, OLDEST_SERVING_VERSION))
            raise ValueError(
                f"--framework-version {value}: TensorFlow Serving containers before "
                f"{oldest} run Python 3.7, where the endpoint's handler cannot be installed; "
                f"use {oldest} or newer (default: the newest)"
            )
        return value


class DeployConfig(ServeConfig):
    endpoint_name: Optional[str] = Field(None, description="Endpoint name (default: generated).")
    serverless_memory: Optional[int] = Field(
        None, description="Serverless inference with this many MB (1024-6144, by 1024)."
    )
    serverless_concurrency: int = Field(
        5, ge=1, le=200, description="Serverless: concurrent invocations at most."
    )

    @field_validator("serverless_memory")
    @classmethod
    def _memory(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value not in SERVERLESS_MEMORY:
            sizes = ", ".join(str(v) for v in SERVERLESS_MEMORY)
            raise ValueError(f"--serverless-memory {value}: use one of {sizes} (MB)")
        return value


class TransformConfig(ServeConfig):
    job_name: Optional[str] = Field(None, description="Transform job name (default: generated).")
    accept: str = Field("image/png", description="Output per image: image/png or application/json.")

    @field_validator("accept")
    @classmethod
    def _accept(cls, value: str) -> str:
        if value not in ("image/png", "application/json"):
            raise ValueError(f"--accept {value!r}: use image/png or application/json")
        return value


class TuneStrategy(str, enum.Enum):
    bayesian = "Bayesian"
    random = "Random"
    hyperband = "Hyperband"
    grid = "Grid"


class TuneConfig(Section):
    """`enet tune`: the tuning job around `enet launch`'s training job."""

    max_jobs: int = Field(12, ge=1, description="Training jobs in all.")
    max_parallel: int = Field(2, ge=1, description="Training jobs at once.")
    strategy: TuneStrategy = Field(TuneStrategy.bayesian, description="Search strategy.")
    early_stopping: bool = Field(True, description="Stop jobs that fall behind (Auto).")
    ranges: Optional[Path] = Field(None, description="YAML file of ranges (replaces defaults).")
    tuning_job_name: Optional[str] = Field(None, description="Tuning job name (max 32 chars).")
