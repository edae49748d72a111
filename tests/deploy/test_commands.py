"""`enet deploy`, `undeploy`, `invoke`, `transform`, `tune` and `jobs` against a real moto
server with the unmodified SageMaker SDK 2 (tests/moto_aws.py): each command's requests as
moto records them, the refusals before any AWS call, and a model trained by the real `enet
train` in the container layout brought back by `enet jobs download` and evaluated."""

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from enet_cli.container import contract
from enet_cli.container.contract import ROOT_ENV
from enet_cli.core.metrics import metric_regex
from enet_testing import FIXTURES, SMALL_BOTTLENECKS, enet_env, error_lines, invoke, last_error_line
from moto_aws import (  # noqa: F401 (aws, outbound, price_list: fixtures)
    PREFIX,
    REGION,
    ROLE,
    aws,
    outbound,
    price_list,
    recorded,
    run_enet_aws,
)

BUCKET = "enet-test-bucket"
PHOTO = sorted((FIXTURES / "camvid-segnet-mini" / "val").glob("*.png"))[0]
# No endpoint, no credentials: any AWS call would fail, so a dry run or refusal shows none.
NO_AWS = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "", "HOME": "/nonexistent"}


def tags_of(request: dict) -> dict:
    return {t["Key"]: t["Value"] for t in request.get("Tags", [])}


def s3_object(clients, uri: str) -> bytes:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()


def one_line(result, code: int, pattern: str) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and re.search(pattern, errors[0]), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# deploy / undeploy
# ---------------------------------------------------------------------------------------
def test_deploy_creates_the_model_config_and_endpoint_and_undeploy_deletes_them(aws, trained_run):
    env, clients = aws
    name = "enet-test-endpoint"
    result = run_enet_aws(
        env, "deploy", str(trained_run), "--s3-prefix", PREFIX, "--endpoint-name", name,
        "--instance-count", "2", "--wait",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"endpoint {name} is in service" in result.stderr
    assert "enet undeploy" in result.stderr  # it says how to stop paying
    assert not result.stdout.strip(), result.stdout  # no SDK progress dots

    (model,) = recorded(env, "CreateModel", ModelName=name)
    container = model["PrimaryContainer"]
    assert re.fullmatch(
        r"763104351884\.dkr\.ecr\.us-east-1\.amazonaws\.com/tensorflow-inference:2\.\d+-cpu",
        container["Image"],
    ), container["Image"]
    assert container["ModelDataUrl"] == f"{PREFIX}/models/{name}/model.tar.gz"
    assert model["ExecutionRoleArn"] == ROLE
    with tarfile.open(fileobj=io.BytesIO(s3_object(clients, container["ModelDataUrl"]))) as tar:
        names = set(tar.getnames())
    assert {"1/saved_model.pb", "code/inference.py", "code/requirements.txt"} <= names

    (config,) = recorded(env, "CreateEndpointConfig", EndpointConfigName=name)
    (variant,) = config["ProductionVariants"]
    assert (variant["ModelName"], variant["InstanceType"]) == (name, "ml.c5.xlarge")
    assert variant["InitialInstanceCount"] == 2
    (endpoint,) = recorded(env, "CreateEndpoint", EndpointName=name)
    assert endpoint["EndpointConfigName"] == name
    assert "enet-cli" in tags_of(endpoint) and "enet-cli" in tags_of(config)

    gone = run_enet_aws(env, "undeploy", name)
    assert gone.returncode == 0, gone.stderr[-2000:]
    assert recorded(env, "DeleteEndpoint", EndpointName=name)
    assert recorded(env, "DeleteEndpointConfig", EndpointConfigName=name)
    assert recorded(env, "DeleteModel", ModelName=name)
    assert name not in [
        e["EndpointName"] for e in clients["sagemaker"].list_endpoints()["Endpoints"]
    ]
    again = run_enet_aws(env, "undeploy", name)
    one_line(again, 3, rf"no endpoint {name} in {REGION}")


def test_deploy_takes_a_preset_by_name(aws):
    """`enet deploy camvid`: the preset shipped in the package, packed for the endpoint as a
    run's model is (its SavedModel, the handler, its classes)."""
    env, clients = aws
    name = "enet-preset-endpoint"
    result = run_enet_aws(env, "deploy", "camvid", "--s3-prefix", PREFIX, "--endpoint-name", name)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "preset camvid" in result.stderr, result.stderr[-2000:]
    (model,) = recorded(env, "CreateModel", ModelName=name)
    tarball = s3_object(clients, model["PrimaryContainer"]["ModelDataUrl"])
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        assert {"1/saved_model.pb", "code/inference.py"} <= set(tar.getnames())
        meta = json.loads(tar.extractfile("1/enet.json").read())
    assert meta["class_names"][:4] == ["Sky", "Building", "Pole", "Road"]
    assert meta["image_size"] == [360, 480]


def test_serverless_deploy_and_a_training_jobs_model(aws, trained_run, small_data):
    """--serverless-memory makes a serverless variant; MODEL as a job name deploys the
    model.tar.gz the job left (here: a real run's, put where moto says the job wrote it)."""
    env, clients = aws
    job = "enet-test-deploy-job"
    launched = run_enet_aws(
        env, "launch", str(small_data), "--s3-prefix", PREFIX, "--job-name", job,
        "--batch-size", "4", "--wait",
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    uri = clients["sagemaker"].describe_training_job(TrainingJobName=job)["ModelArtifacts"][
        "S3ModelArtifacts"
    ]
    bucket, _, key = uri[len("s3://") :].partition("/")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:  # a run's export, as a job's
        tar.add(trained_run / "model", "1")
        tar.add(trained_run / "model" / "enet.json", "enet.json")
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())

    name = "enet-test-serverless"
    result = run_enet_aws(
        env, "deploy", job, "--s3-prefix", PREFIX, "--endpoint-name", name,
        "--serverless-memory", "2048",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (config,) = recorded(env, "CreateEndpointConfig", EndpointConfigName=name)
    (variant,) = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert "InstanceType" not in variant
    packed = s3_object(clients, f"{PREFIX}/models/{name}/model.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        assert "code/inference.py" in tar.getnames()


@pytest.mark.parametrize(
    "args, code, pattern",
    [
        (["--serverless-memory", "1000"], 2, r"--serverless-memory 1000: use one of 1024, 2048"),
        (["--instance-type", "c5.xlarge"], 2, r"--instance-type 'c5.xlarge' is not a SageMaker"),
        (["--endpoint-name", "bad_name"], 2, r"--endpoint-name 'bad_name': SageMaker names"),
        (["--s3-prefix", "bucket/x"], 2, r"--s3-prefix 'bucket/x' must be an s3:// URI"),
    ],
)
def test_deploy_refusals_name_the_option_before_any_aws_call(trained_run, args, code, pattern):
    result = run_enet_aws(NO_AWS, "deploy", str(trained_run), *args)
    one_line(result, code, pattern)


def test_a_model_that_is_not_one_is_refused_before_any_aws_call(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line(run_enet_aws(NO_AWS, "deploy", str(tmp_path / "empty")), 3, r"no trained ENet in")
    one_line(run_enet_aws(NO_AWS, "deploy", "s3://bucket/model.zip"), 2, r"must be an s3:// URI of")
    one_line(run_enet_aws(NO_AWS, "deploy", "no/such/dir"), 2, r"MODEL no/such/dir is neither")


def test_dry_runs_print_the_plan_and_touch_no_aws(trained_run, small_data):
    deploy = run_enet_aws(NO_AWS, "deploy", str(trained_run), "--dry-run")
    assert deploy.returncode == 0, deploy.stderr[-2000:]
    flat = re.sub(r"[\s│]", "", deploy.stdout)
    assert "1xml.c5.xlarge(billedperinstance-hour)" in flat
    assert "enetundeploy" in flat and "TensorFlowServing2." in flat
    transform = run_enet_aws(
        NO_AWS, "transform", str(trained_run), "s3://b/in/", "s3://b/out/", "--dry-run"
    )
    assert transform.returncode == 0, transform.stderr[-2000:]
    assert "s3://b/out/<key>.out" in re.sub(r"[\s│]", "", transform.stdout)
    tune = run_enet_aws(NO_AWS, "tune", str(small_data), "--batch-size", "4", "--dry-run",
                        "--ranges", str(_ranges_file(small_data.parent, [2, 4])))  # fmt: skip
    assert tune.returncode == 0, tune.stderr[-2000:]
    assert "maximizevalidation:mean_iou" in re.sub(r"[\s│]", "", tune.stdout)


@pytest.mark.parametrize("version", ["2.4.3", "2.5", "1.15.5"])
def test_a_serving_container_whose_python_cannot_run_the_handler_is_refused(trained_run, version):
    """TF Serving containers before 2.6 have Python 3.7: the handler's requirements do not
    install there and the endpoint never starts. Refused before anything is packed."""
    args = ("deploy", trained_run, "--dry-run", "--framework-version")
    refused = invoke(*args, version, env=NO_AWS)
    one_line(refused, 2, rf"--framework-version {version}: .*use 2\.6 or newer")
    allowed = invoke(*args, "2.6.3", env=NO_AWS)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "TensorFlowServing2.6.3" in re.sub(r"[\s│]", "", allowed.stdout)


# ---------------------------------------------------------------------------------------
# invoke
# ---------------------------------------------------------------------------------------
def test_invoke_writes_the_pngs_predict_writes_from_the_endpoints_reply(aws, trained_run, tmp_path):
    """Each photo goes to an endpoint that runs the packed handler and model (tf_serving.
    Endpoint); `enet invoke` must write predict's own PNGs from its replies, and a photo the
    handler refuses is one line naming it."""
    from tf_serving import Endpoint

    from enet_cli.cloud.package import extract_model, pack_model

    env, _ = aws
    tree = extract_model(pack_model(trained_run, tmp_path / "m.tar.gz"), tmp_path / "tree")
    endpoint = Endpoint(tree)
    env = {**env, "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": endpoint.url}
    jpeg = tmp_path / "photo.jpg"
    Image.open(PHOTO).convert("RGB").save(jpeg, quality=90)
    out = tmp_path / "invoked"
    try:
        loaded = tmp_path / "modules.txt"
        result = run_enet_aws(
            env, "invoke", "enet-test", str(PHOTO), str(jpeg), "--out", str(out),
            modules_to=loaded,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "tensorflow" not in loaded.read_text().split()  # drawing needs no TensorFlow
        broken = tmp_path / "broken.png"  # refused here, before any request
        broken.write_bytes(PHOTO.read_bytes()[:200])
        unread = run_enet_aws(env, "invoke", "enet-test", str(broken), "--out", str(out))
    finally:
        endpoint.close()
    expected = tmp_path / "predicted"
    predicted = invoke("predict", str(trained_run), str(PHOTO), str(jpeg), "--out", str(expected))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    for stem in (PHOTO.stem, "photo"):
        for suffix in ("_classes.png", "_overlay.png"):
            name = f"{stem}{suffix}"
            assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    paths = [path for path, _ in endpoint.calls]
    assert paths[:2] == ["/endpoints/enet-test/invocations"] * 2
    first, second = (request for _, request in endpoint.calls[:2])
    assert (first.content_type, first.accept) == ("image/png", "application/json")
    assert first.body == PHOTO.read_bytes()
    assert (second.content_type, second.body) == ("image/jpeg", jpeg.read_bytes())
    one_line(unread, 3, r"cannot read image .*broken\.png: not a readable image")
    assert len(endpoint.calls) == 2 and not (out / "broken_classes.png").exists()

    # What the handler refuses comes back as the endpoint's ModelError: its one line.
    (tree / "code" / "inference.py").write_text(
        "def input_handler(data, context):\n"
        "    raise ValueError('the image/png body is wider than this model serves')\n"
        "def output_handler(response, context):\n"
        "    raise AssertionError('not reached')\n"
    )
    refusing = Endpoint(tree)
    try:
        env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = refusing.url
        failed = run_enet_aws(env, "invoke", "enet-test", str(PHOTO), "--out", str(tmp_path / "x"))
    finally:
        refusing.close()
    pattern = rf"endpoint enet-test could not segment .*{PHOTO.name}: the image/png body is wider"
    one_line(failed, 4, pattern)
    assert not (tmp_path / "x" / f"{PHOTO.stem}_classes.png").exists()


def test_invoke_refuses_what_is_not_an_image_and_an_output_over_an_input(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("x")
    one_line(run_enet_aws(NO_AWS, "invoke", "ep", str(text)), 2, r"IMAGE .*notes.txt is not an")
    photo = shutil.copy(PHOTO, tmp_path / "a.png")
    victim = shutil.copy(PHOTO, tmp_path / "a_overlay.png")
    result = run_enet_aws(NO_AWS, "invoke", "ep", photo, victim, "--out", str(tmp_path))
    assert result.returncode != 0 and "a_overlay.png" in error_lines(result.stderr)[0]


# ---------------------------------------------------------------------------------------
# transform
# ---------------------------------------------------------------------------------------
def test_transform_creates_the_job_over_the_prefix(aws, trained_run):
    env, _ = aws
    name = "enet-test-transform"
    result = run_enet_aws(
        env, "transform", str(trained_run), f"s3://{BUCKET}/frames/", f"s3://{BUCKET}/masks",
        "--s3-prefix", PREFIX, "--job-name", name, "--instance-type", "ml.c5.2xlarge", "--wait",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        rf"transform {name} done: 0 files, 0\.0 MB in s3://{BUCKET}/masks/", result.stderr
    )
    (job,) = recorded(env, "CreateTransformJob", TransformJobName=name)
    source = job["TransformInput"]
    assert source["DataSource"]["S3DataSource"] == {
        "S3DataType": "S3Prefix",
        "S3Uri": f"s3://{BUCKET}/frames/",
    }
    assert (source["ContentType"], source.get("SplitType")) == ("application/x-image", "None")
    assert job["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/masks"
    assert job["TransformOutput"]["Accept"] == "image/png"
    assert job["BatchStrategy"] == "SingleRecord"
    assert job["TransformResources"] == {"InstanceType": "ml.c5.2xlarge", "InstanceCount": 1}
    (model,) = recorded(env, "CreateModel", ModelName=job["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"{PREFIX}/models/{name}/model.tar.gz"


def test_transform_refuses_an_output_inside_its_input(trained_run):
    result = run_enet_aws(NO_AWS, "transform", str(trained_run), "s3://b/in/", "s3://b/in/masks/")
    one_line(result, 2, r"OUTPUT s3://b/in/masks/ and INPUT s3://b/in/ overlap")
    bad = run_enet_aws(
        NO_AWS, "transform", str(trained_run), "s3://b/in/", "s3://b/out", "--accept", "text/csv"
    )
    one_line(bad, 2, r"--accept 'text/csv': use image/png or application/json")


# ---------------------------------------------------------------------------------------
# tune
# ---------------------------------------------------------------------------------------
def _ranges_file(directory: Path, batches) -> Path:
    path = directory / f"ranges-{'-'.join(map(str, batches))}.yaml"
    path.write_text(
        "learning_rate: {min: 0.0001, max: 0.01, scaling: Logarithmic}\n"
        "dropout: {min: 0.0, max: 0.3}\n"
        f"batch_size: {{values: {list(batches)}}}\n"
        "class_weighting: {values: [enet, median]}\n"
    )
    return path


def test_tune_creates_the_tuning_job_around_launchs_training_job(aws, small_data, tmp_path):
    from enet_cli.train.settings import load_config

    env, _ = aws
    name = "enet-test-tune"
    ranges = _ranges_file(tmp_path, [2, 4])
    result = run_enet_aws(
        env, "tune", str(small_data), "--epochs", "2", "--batch-size", "4", "--lr-schedule",
        "cosine", "--ranges", str(ranges), "--s3-prefix", PREFIX, "--tuning-job-name", name,
        "--max-jobs", "4", "--max-parallel", "2", "--wait",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(rf"tuning job {name} Completed: best \S+", result.stderr), result.stderr
    (request,) = recorded(env, "CreateHyperParameterTuningJob", HyperParameterTuningJobName=name)
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Maximize",
        "MetricName": "validation:mean_iou",
    }
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2}
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    found = config["ParameterRanges"]
    continuous = {r["Name"]: r for r in found["ContinuousParameterRanges"]}
    assert continuous["learning_rate"] == {
        "Name": "learning_rate", "MinValue": "0.0001", "MaxValue": "0.01",
        "ScalingType": "Logarithmic",
    }  # fmt: skip
    assert (continuous["dropout"]["MinValue"], continuous["dropout"]["MaxValue"]) == ("0.0", "0.3")
    categorical = {r["Name"]: r["Values"] for r in found["CategoricalParameterRanges"]}
    # SDK 2 JSON-encodes categories; the container's enet train reads each back (contract.py)
    for name, expected in (("batch_size", [2, 4]), ("class_weighting", ["enet", "median"])):
        values = [contract.settings_from({name: v})[name] for v in categorical[name]]
        read = [getattr(load_config(None, None, {name: v}).train, name) for v in values]
        assert [getattr(v, "value", v) for v in read] == expected, (name, categorical[name])

    definition = request["TrainingJobDefinition"]
    metrics = {
        m["Name"]: m["Regex"] for m in definition["AlgorithmSpecification"]["MetricDefinitions"]
    }
    assert metrics["validation:mean_iou"] == metric_regex("val_mean_iou")
    static = definition["StaticHyperParameters"]
    tuned = {"learning_rate", "dropout", "batch_size", "class_weighting"}
    assert not tuned & set(static)
    # What the container's `enet train` reads back: every set training option but the tuned.
    cfg = load_config(None, None, hyperparameters=contract.settings_from(static))
    assert (cfg.train.epochs, cfg.train.lr_schedule.value) == (2, "cosine")
    assert "enet-cli" in tags_of(request)


@pytest.mark.parametrize(
    "ranges, extra, pattern",
    [
        ("batch_size: {values: [4, 64]}\n", [],
         r"tuning range batch_size=64: --batch-size 64 is larger than the train split"),
        ("lr: {min: 0.1, max: 1}\n", [],
         r"tuning range 'lr' is not an enet train option .*learning_rate"),
        ("dropout: {min: 0.5, max: 1.5}\n", [], r"tuning range of dropout: .*dropout"),
        ("dropout: {min: 0.1, max: 0.2}\n", ["--strategy", "Grid"],
         r"--strategy Grid takes categorical ranges only; dropout"),
        ("learning_rate: {min: 0, max: 1, scaling: Logarithmic}\n", [],
         r"Logarithmic scaling needs min > 0"),
        ("dropout: [0.1]\n", [], r"dropout must be \{min: \.\., max: \.\.\} or \{values"),
    ],
)  # fmt: skip
def test_tune_refuses_ranges_before_anything_is_uploaded(
    small_data, tmp_path, ranges, extra, pattern
):
    path = tmp_path / "ranges.yaml"
    path.write_text(ranges)
    result = run_enet_aws(
        NO_AWS, "tune", str(small_data), "--batch-size", "4", "--ranges", str(path), *extra
    )
    one_line(result, 2, pattern)


# ---------------------------------------------------------------------------------------
# jobs
# ---------------------------------------------------------------------------------------
def test_jobs_lists_this_tools_jobs_describes_them_and_prints_their_logs(aws, small_data, tmp_path):
    env, clients = aws
    job = "enet-test-jobs"
    launched = run_enet_aws(
        env, "launch", str(small_data), "--s3-prefix", PREFIX, "--job-name", job,
        "--batch-size", "4",
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "enet-cli" in tags_of(recorded(env, "CreateTrainingJob", TrainingJobName=job)[0])
    sm = clients["sagemaker"]
    sm.create_training_job(  # someone else's job in the same account: not listed
        TrainingJobName="not-enet",
        AlgorithmSpecification={"TrainingImage": "x", "TrainingInputMode": "File"},
        RoleArn=ROLE,
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/other"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )
    loaded = tmp_path / "modules.txt"
    listed = run_enet_aws(env, "jobs", "list", modules_to=loaded)
    assert listed.returncode == 0, listed.stderr[-2000:]
    # Listing calls SageMaker's API only: neither TensorFlow nor the SageMaker SDK is loaded.
    assert not {"tensorflow", "sagemaker"} & set(loaded.read_text().split())
    assert job in listed.stdout and "not-enet" not in listed.stdout

    described = run_enet_aws(env, "jobs", "describe", job)
    assert described.returncode == 0, described.stderr[-2000:]
    flat = re.sub(r"[\s│]", "", described.stdout)
    assert "hpbatch_size4" in flat and f"{PREFIX}/output/{job}/output/model.tar.gz" in flat

    logs = clients["logs"]
    group = "/aws/sagemaker/TrainingJobs"
    logs.create_log_group(logGroupName=group)
    now = int(time.time() * 1000) - 60_000  # CloudWatch (and moto) drop events 14 days old
    for host, lines in (("algo-1-1700000000", ["epoch 1 on 1", "epoch 2 on 1"]),
                        ("algo-2-1700000000", ["epoch 1 on 2"])):  # fmt: skip
        stream = f"{job}/{host}"
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        events = [{"timestamp": now + 10 * i + (host[5] == "2") * 5, "message": m}
                  for i, m in enumerate(lines)]  # fmt: skip
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
    printed = run_enet_aws(env, "jobs", "logs", job)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert printed.stdout.splitlines() == [
        "[algo-1-1700000000] epoch 1 on 1",
        "[algo-2-1700000000] epoch 1 on 2",
        "[algo-1-1700000000] epoch 2 on 1",
    ]
    stopped = run_enet_aws(env, "jobs", "stop", job)  # moto's jobs end at once
    assert stopped.returncode == 0 and "already ended (Completed)" in stopped.stderr
    missing = run_enet_aws(env, "jobs", "describe", "enet-no-such-job")
    one_line(missing, 3, r"no training job enet-no-such-job in this region")


def _container_run(small_data: Path, root: Path) -> Path:
    """`enet train` as the container runs it (contract.py's layout under ENET_SAGEMAKER_ROOT):
    hyperparameters.json as SDK 2 writes it, the data in the train channel."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    hyper = {"epochs": "1", "batch_size": "4", "seed": "1", "engine": '"tf"'}
    hyper["bottlenecks"] = json.dumps(list(SMALL_BOTTLENECKS))
    (config / "hyperparameters.json").write_text(json.dumps(hyper))
    shutil.copytree(small_data, root / "input" / "data" / "train")
    env = {**enet_env(), ROOT_ENV: str(root)}
    result = subprocess.run(
        [sys.executable, "-m", "enet_cli", "train"], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "model" / "1" / "saved_model.pb").is_file()
    return root / "model"


def test_jobs_download_brings_a_containers_model_back_for_evaluate(aws, small_data, tmp_path):
    env, clients = aws
    model_dir = _container_run(small_data, tmp_path / "opt-ml")
    job = "enet-test-download"
    launched = run_enet_aws(
        env, "launch", str(small_data), "--s3-prefix", PREFIX, "--job-name", job,
        "--batch-size", "4",
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    uri = clients["sagemaker"].describe_training_job(TrainingJobName=job)["ModelArtifacts"][
        "S3ModelArtifacts"
    ]
    bucket, _, key = uri[len("s3://") :].partition("/")
    buffer = io.BytesIO()  # SageMaker tars /opt/ml/model's contents
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, path.name)
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())

    out = tmp_path / "downloaded"
    result = run_enet_aws(env, "jobs", "download", job, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "1" / "saved_model.pb").is_file() and (out / "enet.json").is_file()
    scores = {}
    for label, model in (("downloaded", out), ("container", model_dir)):
        target = tmp_path / f"eval-{label}.json"
        evaluated = invoke("evaluate", str(model), str(small_data), "--json", str(target))
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        scores[label] = json.loads(target.read_text())
    assert scores["downloaded"]["mean_iou"] == scores["container"]["mean_iou"]

    again = run_enet_aws(env, "jobs", "download", job, "--out", str(out))
    one_line(again, 2, r"--out .*downloaded already exists; use --force")
    forced = run_enet_aws(env, "jobs", "download", job, "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]

    # The job's name as MODEL: downloaded once into the cache, then the same scores.
    cached = {**env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for attempt in ("first", "again"):
        target = tmp_path / f"eval-by-name-{attempt}.json"
        by_name = run_enet_aws(cached, "evaluate", job, str(small_data), "--json", str(target))
        assert by_name.returncode == 0, by_name.stderr[-3000:]
        assert json.loads(target.read_text())["mean_iou"] == scores["container"]["mean_iou"]
    assert "downloaded earlier" in by_name.stderr
    assert (tmp_path / "cache" / "enet-cli" / "jobs" / job / "1" / "saved_model.pb").is_file()

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    clients["s3"].put_object(Bucket=bucket, Key=key, Body=evil.getvalue())
    refused = run_enet_aws(env, "jobs", "download", job, "--out", str(tmp_path / "evil"))
    last_error_line(refused, 3, r"holds '\.\./\.\./escaped\.txt', outside the model: refused")
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "escaped.txt").exists()
