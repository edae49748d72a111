"""`enet deploy`, `undeploy`, `invoke` and `transform`: a trained ENet behind a SageMaker
endpoint or over a bucket of images, in AWS's TensorFlow Serving container with our
handler (handler.py), through the SDK 2's `TensorFlowModel`.

MODEL is a training job's name, an s3:// model.tar.gz, or a local run / SavedModel /
checkpoint directory. Whatever it is, it is re-packed (package.py: the SavedModel with the
handler's signatures, and code/) and uploaded to <prefix>/models/<name>/model.tar.gz; a
tarball from S3 is unpacked with every member checked first.
"""

import contextlib
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

from enet_cli.artifacts.model_ref import NAME_PATTERN, ModelRef, RefKind, locate
from enet_cli.cloud import aws
from enet_cli.cloud.package import extract_model, pack_model
from enet_cli.cloud.settings import (
    AwsConfig,
    DeployConfig,
    ServeConfig,
    TransformConfig,
    check_instance_type,
)
from enet_cli.core import ui
from enet_cli.core.errors import AwsError, ConfigError, DataError

REPLY_TYPES = ("image/png", "image/jpeg", "application/x-npy")  # what the handler takes


def model_source(model: str) -> ModelRef:
    """What MODEL names, checked without AWS: a local model must be one enet can load."""
    ref = ModelRef.parse(model)
    if ref.kind is RefKind.s3 and not model.endswith(".tar.gz"):
        raise ConfigError(f"MODEL {model} must be an s3:// URI of a model.tar.gz")
    if ref.on_disk:
        if not ref.path.exists():
            raise ConfigError(
                f"MODEL {model} is neither a local model, an s3:// model.tar.gz nor a "
                f"training job name; give one of those"
            )
        locate(ref.path)  # one line if it holds no model we can load
    return ref


def job_model_uri(sagemaker_client, job: str) -> str:
    """The model.tar.gz a completed training job left, or one line saying why not."""
    try:
        found = sagemaker_client.describe_training_job(TrainingJobName=job)
    except Exception as err:  # botocore's ClientError, by its code
        if "ValidationException" in str(err) or "ResourceNotFound" in str(err):
            raise DataError(
                f"no training job {job} in this region; list them with: enet jobs list"
            ) from None
        raise
    uri = found.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if not uri or found.get("TrainingJobStatus") not in ("Completed", "Stopped"):
        raise DataError(
            f"training job {job} is {found.get('TrainingJobStatus', 'unknown')} and has no "
            f"model yet; wait for it (enet jobs describe {job})"
        )
    return uri


def download_model(s3, uri: str, directory: Path) -> Path:
    """An s3:// model.tar.gz downloaded with the `s3` client and safely unpacked into
    `directory`."""
    bucket, key = aws.split_uri(uri)
    tarball = directory.parent / f".{directory.name}.model.tar.gz"
    try:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except Exception as err:  # botocore's ClientError: 404 / 403 by its message
        if "404" in str(err) or "Not Found" in str(err):
            raise DataError(f"{uri} does not exist; check the URI (or the job's output)") from None
        raise
    with ui.byte_progress(f"downloading {uri}", size) as advance:
        s3.download_file(bucket, key, str(tarball), Callback=advance)
    try:
        return extract_model(tarball, directory, uri)
    finally:
        tarball.unlink()


def upload_model(source: ModelRef, where: aws.Aws, name: str) -> str:
    """MODEL packed for the endpoint and uploaded; returns its S3 URI."""
    uri = f"{where.prefix}/models/{name}/model.tar.gz"
    with tempfile.TemporaryDirectory(prefix="enet-deploy-") as tmp:
        local = source.path if source.on_disk else Path(tmp)
        if not source.on_disk:
            remote = source.value
            if source.kind is RefKind.job:
                remote = job_model_uri(where.client("sagemaker"), source.value)
            local = download_model(where.client("s3"), remote, Path(tmp) / "downloaded")
        ui.info(f"packing {source.describe()} with the endpoint's handler")
        tarball = pack_model(local, Path(tmp) / "model.tar.gz")
        size = tarball.stat().st_size
        with ui.byte_progress("uploading model.tar.gz", size) as advance:
            aws.upload_file(where.client("s3"), tarball, uri, advance)
    return uri


def newest_serving_version() -> str:
    """The newest TensorFlow Serving container the SDK knows (SavedModels load forward)."""
    from sagemaker import image_uris

    versions = image_uris.config_for_framework("tensorflow")["inference"]["version_aliases"]
    return max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


def _tf_model(cfg: ServeConfig, where: aws.Aws, uri: str, name: str):
    from sagemaker.tensorflow import TensorFlowModel

    return TensorFlowModel(
        model_data=uri,
        role=where.role,
        framework_version=cfg.framework_version or newest_serving_version(),
        sagemaker_session=where.session,
        name=name,
    )


def _serving_model(cfg: ServeConfig, source: ModelRef, name: Optional[str], base: str):
    """(where, name, TensorFlowModel): the session, the name (default: generated from
    `base`), and MODEL packed, uploaded and wrapped for the TF Serving container."""
    sagemaker = aws.sdk()
    where = aws.connect(cfg)
    name = name or sagemaker.utils.name_from_base(base)
    return where, name, _tf_model(cfg, where, upload_model(source, where, name), name)


def _serving_rows(cfg: ServeConfig, source: ModelRef, where: str, name: str):
    version = cfg.framework_version or newest_serving_version()
    return [
        ("model", source.describe()),
        ("packed to", f"{where}/models/{name}/model.tar.gz (SavedModel + code/inference.py)"),
        ("container", f"AWS TensorFlow Serving {version} ({_device(cfg.instance_type)})"),
        ("requests", ", ".join(REPLY_TYPES) + "; resized as enet predict does"),
    ]


def _device(instance_type: str) -> str:
    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    return "GPU" if family[:1] in ("g", "p") else "CPU"


def _check_name(option: str, name: Optional[str]) -> None:
    if name is not None and not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{option} {name!r}: SageMaker names are 1-63 letters, digits and hyphens, "
            f"starting with a letter or digit"
        )


# ---------------------------------------------------------------------------------------
# deploy / undeploy
# ---------------------------------------------------------------------------------------
def deploy(model: str, cfg: DeployConfig) -> Optional[str]:
    """Create the endpoint (or with --dry-run, print what would be); returns its name."""
    check_instance_type("--instance-type", cfg.instance_type, "ml.c5.xlarge")
    _check_name("--endpoint-name", cfg.endpoint_name)
    source = model_source(model)
    prefix = aws.check_prefix(cfg.s3_prefix)
    if cfg.dry_run:
        sagemaker = aws.sdk()
        name = cfg.endpoint_name or sagemaker.utils.name_from_base("enet")
        aws.print_rows(
            "SageMaker endpoint",
            [
                ("endpoint", name),
                *_serving_rows(cfg, source, prefix or aws.DRY_RUN_PREFIX, name),
                ("capacity", _capacity(cfg)),
                ("replies", "image/png, application/json, application/x-npy (by Accept)"),
                ("cost", _COST_NOTE.format(name=name)),
            ],
        )
        return None
    with aws.aws_errors():
        where, name, tf_model = _serving_model(cfg, source, cfg.endpoint_name, "enet")
        ui.info(f"creating endpoint {name}: {_capacity(cfg)}")
        options = dict(endpoint_name=name, tags=aws.tags(), wait=False)
        if cfg.serverless_memory:
            from sagemaker.serverless import ServerlessInferenceConfig

            serverless = ServerlessInferenceConfig(
                memory_size_in_mb=cfg.serverless_memory,
                max_concurrency=cfg.serverless_concurrency,
            )
            tf_model.deploy(serverless_inference_config=serverless, **options)
        else:
            tf_model.deploy(
                initial_instance_count=cfg.instance_count,
                instance_type=cfg.instance_type,
                **options,
            )
        if cfg.wait:
            aws.wait_for(where, "endpoint", name)
    state = "in service" if cfg.wait else "being created"
    ui.info(
        f"endpoint {name} is {state}; call it with: enet invoke {name} IMAGE --out DIR. "
        + _COST_NOTE.format(name=name)
    )
    return name


_COST_NOTE = "It bills while it exists, used or not: delete it with enet undeploy {name}"


def _capacity(cfg: DeployConfig) -> str:
    if cfg.serverless_memory:
        return (
            f"serverless, {cfg.serverless_memory} MB, up to {cfg.serverless_concurrency} "
            f"concurrent invocations (billed per request)"
        )
    return f"{cfg.instance_count} x {cfg.instance_type} (billed per instance-hour)"


def undeploy(name: str, cfg: AwsConfig) -> List[str]:
    """Delete the endpoint, its configuration and its models; returns what was deleted."""
    with aws.aws_errors():
        boto = aws.boto_session(cfg)
        sm = boto.client("sagemaker")
        try:
            endpoint = sm.describe_endpoint(EndpointName=name)
        except Exception as err:
            if "Could not find" in str(err) or "ValidationException" in str(err):
                raise DataError(
                    f"no endpoint {name} in {boto.region_name}; list them with: aws "
                    f"sagemaker list-endpoints"
                ) from None
            raise
        config_name = endpoint["EndpointConfigName"]
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
        models = [v["ModelName"] for v in config.get("ProductionVariants", [])]
        sm.delete_endpoint(EndpointName=name)
        sm.delete_endpoint_config(EndpointConfigName=config_name)
        for model in models:
            sm.delete_model(ModelName=model)
    deleted = [f"endpoint {name}", f"endpoint config {config_name}"]
    deleted += [f"model {m}" for m in models]
    ui.info(f"deleted {', '.join(deleted)}")
    return deleted


# ---------------------------------------------------------------------------------------
# invoke
# ---------------------------------------------------------------------------------------
def invoke(endpoint: str, images: List[Path], out_dir: Path, cfg: AwsConfig) -> List[Path]:
    """Each image through the endpoint (a SageMaker endpoint's name, or the URL of `enet
    serve`, which answers the same contract); the class map and overlay PNGs `enet
    predict` writes, from the endpoint's JSON reply. Returns the files written."""
    import json

    import numpy as np

    from enet_cli.core import outputs
    from enet_cli.pixels.drawing import (
        PictureError,
        decode_rgb,
        indexed_png,
        overlay,
        palette,
        png_bytes,
    )
    from enet_cli.serving.inputs import IMAGE_SUFFIXES, check_inputs_kept, check_out_dir

    for path in images:
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(f"IMAGE {path} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
    check_out_dir(out_dir)
    check_inputs_kept(images, out_dir)
    written: List[Path] = []
    served = endpoint.startswith(("http://", "https://"))
    with contextlib.nullcontext() if served else aws.aws_errors():
        call = _http_caller(endpoint) if served else _sagemaker_caller(endpoint, cfg)
        for path in images:
            data = path.read_bytes()
            try:
                rgb = decode_rgb(data)
            except PictureError as err:
                raise DataError(f"cannot read image {path}: {err}") from None
            kind, body = _request_body(path, data, rgb)
            try:
                reply = call(kind, body)
            except _Refused as err:
                raise err.error(f"endpoint {endpoint} could not segment {path}: {err}") from None
            try:
                found = json.loads(reply)
                classes = np.asarray(found["classes"], dtype=np.uint8)
                colours = palette(found["class_colors"], found["void_color"])
                names = found["class_names"]
            except (ValueError, KeyError, TypeError):
                raise AwsError(
                    f"endpoint {endpoint} did not answer like an enet endpoint for {path}; "
                    f"was it deployed with enet deploy?"
                ) from None
            if classes.shape != rgb.shape[:2]:
                raise AwsError(
                    f"endpoint {endpoint} answered {path} with a {classes.shape} map for a "
                    f"{rgb.shape[:2]} image"
                )
            out_dir.mkdir(parents=True, exist_ok=True)
            for suffix, picture in (
                ("_classes.png", indexed_png(classes, colours)),
                ("_overlay.png", overlay(rgb, classes, colours, names)),
            ):
                target = out_dir / f"{path.stem}{suffix}"
                outputs.write_atomic(target, png_bytes(picture))
                written.append(target)
            top = sorted(found["shares"].items(), key=lambda kv: -kv[1])[:3]
            shares = ", ".join(f"{k} {v:.0%}" for k, v in top)
            ui.info(f"{path.name}: {shares}")
    ui.info(f"wrote {len(written)} files to {out_dir}")
    return written


class _Refused(Exception):
    """The endpoint answered with an error: its handler's one line, and the error class
    to report it as."""

    def __init__(self, said: str, error: type = AwsError):
        super().__init__(said)
        self.error = error


def _said(text: str) -> str:
    """The handler's line from the container's `{"error": ...}` reply."""
    import json

    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(text).get("error", text))
    return text


def _sagemaker_caller(endpoint: str, cfg: AwsConfig):
    runtime = aws.boto_session(cfg).client("sagemaker-runtime")

    def call(kind: str, body: bytes) -> bytes:
        try:
            reply = runtime.invoke_endpoint(
                EndpointName=endpoint, ContentType=kind, Accept="application/json", Body=body
            )
        except runtime.exceptions.ModelError as err:  # the handler's one line, in JSON
            said = _said(err.response.get("OriginalMessage", ""))
            raise _Refused(said or str(err)) from None
        return reply["Body"].read()

    return call


def _http_caller(url: str):
    """POST /invocations of `enet serve` (or anything answering the container's
    contract) at `url`."""
    import urllib.error
    import urllib.request

    target = url.rstrip("/") + "/invocations"

    def call(kind: str, body: bytes) -> bytes:
        headers = {"Content-Type": kind, "Accept": "application/json"}
        request = urllib.request.Request(target, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=300) as reply:
                return reply.read()
        except urllib.error.HTTPError as err:
            said = _said(err.read().decode("utf-8", "replace")) or str(err)
            raise _Refused(f"HTTP {err.code}: {said}", DataError) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(
                f"cannot reach {target} ({reason}); is enet serve running there?"
            ) from None

    return call


def _request_body(path: Path, data: bytes, rgb) -> Tuple[str, bytes]:
    """PNG and JPEG go as they are; any other image as the PNG of its pixels."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        return "image/png", data
    if suffix in (".jpg", ".jpeg"):
        return "image/jpeg", data
    from PIL import Image

    from enet_cli.pixels.drawing import png_bytes

    return "image/png", png_bytes(Image.fromarray(rgb))


# ---------------------------------------------------------------------------------------
# transform
# ---------------------------------------------------------------------------------------
def check_transform_uris(source: str, target: str) -> Tuple[str, str]:
    for option, uri in (("INPUT", source), ("OUTPUT", target)):
        if not uri.startswith("s3://") or not aws.split_uri(uri)[0]:
            raise ConfigError(f"{option} {uri} must be an s3:// prefix, e.g. s3://bucket/images/")
    source, target = source.rstrip("/") + "/", target.rstrip("/") + "/"
    if target.startswith(source) or source.startswith(target):
        raise ConfigError(
            f"OUTPUT {target} and INPUT {source} overlap: the class maps would be read as "
            f"inputs by the next run; give an OUTPUT prefix outside INPUT"
        )
    return source, target


def transform(model: str, source: str, target: str, cfg: TransformConfig) -> Optional[str]:
    """A batch transform job over every object under `source`; returns its name."""
    check_instance_type("--instance-type", cfg.instance_type, "ml.c5.xlarge")
    _check_name("--job-name", cfg.job_name)
    source, target = check_transform_uris(source, target)
    found = model_source(model)
    prefix = aws.check_prefix(cfg.s3_prefix)
    rows = [
        ("input", f"{source} (every object, one image per request)"),
        ("output", f"{target}<key>.out, each an {cfg.accept} reply"),
        ("instances", f"{cfg.instance_count} x {cfg.instance_type}"),
    ]
    if cfg.dry_run:
        sagemaker = aws.sdk()
        name = cfg.job_name or sagemaker.utils.name_from_base("enet-transform")
        rows = [
            ("job", name),
            *_serving_rows(cfg, found, prefix or aws.DRY_RUN_PREFIX, name),
            *rows,
        ]
        aws.print_rows("SageMaker batch transform job", rows)
        return None
    with aws.aws_errors():
        sagemaker = aws.sdk()
        where, name, tf_model = _serving_model(cfg, found, cfg.job_name, "enet-transform")
        transformer = tf_model.transformer(
            instance_count=cfg.instance_count,
            instance_type=cfg.instance_type,
            strategy="SingleRecord",
            output_path=target.rstrip("/"),
            accept=cfg.accept,
            tags=aws.tags(),
        )
        ui.info(f"starting batch transform {name}: {source} -> {target}")
        try:
            transformer.transform(
                data=source,
                data_type="S3Prefix",
                content_type="application/x-image",
                split_type="None",
                job_name=name,
                wait=False,
                logs=False,
            )
        except sagemaker.exceptions.UnexpectedStatusException as err:
            raise AwsError(f"batch transform {name} failed: {err}") from None
        if cfg.wait:
            aws.wait_for(where, "batch transform", name)
            count, size = _listing(where.client("s3"), target)
            ui.info(f"transform {name} done: {count} files, {size / 1e6:.1f} MB in {target}")
        else:
            ui.info(
                f"transform {name} started; follow it with: aws sagemaker "
                f"describe-transform-job --transform-job-name {name}"
            )
    return name


def _listing(s3, uri: str) -> Tuple[int, int]:
    bucket, key = aws.split_uri(uri)
    count = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        for item in page.get("Contents", []):
            count += 1
            size += item["Size"]
    return count, size
