"""`enet launch` against a real moto server (ThreadedMotoServer on 127.0.0.1) with the
unmodified SageMaker SDK 2, the refusals, and the container contract end to end: the job's
own source and hyperparameters run through the entry script on the CamVid sample."""

import importlib.util
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from enet_cli.container.contract import FOREIGN_HYPERPARAMETERS
from enet_cli.core.metrics import METRICS_PREFIX, metric_definitions
from enet_testing import (
    FIXTURES,
    REPO,
    SMALL_BOTTLENECKS,
    SMALL_MODEL,
    STAND_INS,
    error_lines,
    preprocess_to,
)
from moto_aws import (  # noqa: F401 (aws, outbound, price_list: fixtures)
    PREFIX,
    REGION,
    ROLE,
    OutboundRecorder,
    aws,
    outbound,
    price_list,
    recorded,
    run_enet_aws,
)
from sagemaker_jobs import created, run_container, submitted_code

ECR = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-training:"


def launch(env, *args, timeout=300, outbound_allowed=False):
    return run_enet_aws(env, "launch", *args, timeout=timeout, outbound_allowed=outbound_allowed)


CASES = {
    "single": (
        ["--mode", "single"],
        {"image": r"2\.19\.0-gpu-py312", "instance": ("ml.g5.xlarge", 1)},
        {},
    ),
    "ddp-smddp": (
        ["--mode", "ddp", "--batch-size", "1"],
        {"image": r"2\.11\.0-gpu-py39", "instance": ("ml.p3.16xlarge", 1)},
        {"sagemaker_distributed_dataparallel_enabled": True, "engine": "smddp"},
    ),
    "ddp-tf": (
        ["--mode", "ddp", "--engine", "tf", "--batch-size", "1"],
        {"image": r"2\.19\.0-gpu-py312", "instance": ("ml.p3.16xlarge", 1)},
        {"sagemaker_multi_worker_mirrored_strategy_enabled": True, "engine": "tf"},
    ),
    "mp-smp": (
        ["--mode", "mp", "--partitions", "4", "--microbatches", "2", "--pipeline", "simple"],
        {"image": r"2\.6\.\d+-gpu-py38", "instance": ("ml.g4dn.12xlarge", 1)},
        {
            "engine": "smp",
            "sagemaker_mpi_enabled": True,
            "sagemaker_mpi_num_of_processes_per_host": 4,
            "mp_parameters": {"partitions": 4, "microbatches": 2, "pipeline": "simple"},
        },
    ),
}


def decoded(hyperparameters):
    """SDK 2 JSON-encodes every value into a string (as SageMaker then writes them)."""
    out = {}
    for key, value in hyperparameters.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_launch_creates_the_job_the_mode_needs(aws, small_data, case):
    env, clients = aws
    args, expect, extra_hyperparameters = CASES[case]
    job = f"enet-test-{case}"
    result = launch(
        env, str(small_data), *args, "--epochs", "7", "--job-name", job, "--s3-prefix", PREFIX
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The Price List stand-in prices nothing here: said so, and the job goes on.
    assert "cost: not estimated (no list price for ml." in result.stderr
    described = created(env, job)
    assert clients["sagemaker"].describe_training_job(TrainingJobName=job)["TrainingJobName"] == job

    image = described["AlgorithmSpecification"]["TrainingImage"]
    assert image.startswith(ECR) and re.search(expect["image"], image), image
    resources = described["ResourceConfig"]
    assert (resources["InstanceType"], resources["InstanceCount"]) == expect["instance"]
    assert resources["VolumeSizeInGB"] == 30
    assert described["EnableManagedSpotTraining"] is True
    assert described["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 86400,
        "MaxWaitTimeInSeconds": 172800,
    }
    assert described["CheckpointConfig"]["S3Uri"] == f"{PREFIX}/{job}/checkpoints"
    assert described["RoleArn"] == ROLE
    assert described["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    channels = {c["ChannelName"]: c for c in described["InputDataConfig"]}
    assert list(channels) == ["train"]
    data_uri = channels["train"]["DataSource"]["S3DataSource"]["S3Uri"]
    assert data_uri == f"{PREFIX}/data/{small_data.name}"

    hyperparameters = decoded(described["HyperParameters"])
    assert hyperparameters["epochs"] == 7 and hyperparameters["mode"] == args[1]
    assert hyperparameters["sagemaker_program"] == "enet_entry.py"
    for key, value in extra_hyperparameters.items():
        assert hyperparameters[key] == value, key
    # Every other training setting passes through, and parses back with the same models.
    from enet_cli.core.config import LOCAL_SETTINGS, EnetConfig
    from enet_cli.train.settings import load_config

    for absent in ("data_dir", "run_dir", "local_workers", "log_format"):
        assert absent not in hyperparameters and absent in LOCAL_SETTINGS
    defaults = EnetConfig().model_dump()
    settings = {k for section in defaults.values() for k, v in section.items() if v is not None}
    settings -= set(LOCAL_SETTINGS)  # None (unset, e.g. --steps) is left out too
    assert settings <= set(hyperparameters), settings - set(hyperparameters)
    ours = {
        k: v
        for k, v in hyperparameters.items()
        if not k.startswith("sagemaker_") and k not in FOREIGN_HYPERPARAMETERS
    }
    assert load_config(None, hyperparameters=ours).train.epochs == 7
    if case == "single":
        assert not any(
            k.startswith(("sagemaker_mpi", "sagemaker_distributed")) for k in hyperparameters
        )

    # The uploaded source is this package's wheel and the entry script.
    source = hyperparameters["sagemaker_submit_directory"]
    bucket, _, key = source[len("s3://") :].partition("/")
    body = clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()
    names = _tar_names(body)
    assert "enet_entry.py" in names
    assert any(re.fullmatch(r"enet_cli-[\w.]+-py3-none-any\.whl", n) for n in names), names

    # The data: the manifest and every shard it lists are in S3 under the channel.
    listed = clients["s3"].list_objects_v2(Bucket="enet-test-bucket", Prefix="jobs/data/")
    keys = {o["Key"][len(f"jobs/data/{small_data.name}/") :] for o in listed["Contents"]}
    manifest = json.loads((small_data / "manifest.json").read_text())
    shards = {s["file"] for split in manifest["splits"].values() for s in split["shards"]}
    assert keys == {"manifest.json", *shards}


def _tar_names(body: bytes):
    import io

    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {Path(n).name for n in tar.getnames()}


def test_data_already_uploaded_is_skipped(aws, small_data):
    env, _ = aws
    common = (str(small_data), "--s3-prefix", PREFIX)
    first = launch(env, *common, "--job-name", "enet-test-upload-1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(env, *common, "--job-name", "enet-test-upload-2")
    assert second.returncode == 0, second.stderr[-3000:]
    manifest = json.loads((small_data / "manifest.json").read_text())
    files = 1 + sum(len(split["shards"]) for split in manifest["splits"].values())
    assert f"0 file(s) uploaded, {files} already there" in second.stderr
    # DATA given as an S3 URI is the channel as it is; nothing is uploaded.
    uri = f"{PREFIX}/data/{small_data.name}"
    third = launch(env, uri, "--s3-prefix", PREFIX, "--job-name", "enet-test-upload-3")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "uploaded" not in third.stderr
    channel = created(env, "enet-test-upload-3")["InputDataConfig"][0]
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == uri


def test_local_data_must_be_preprocess_output(tmp_path):
    (tmp_path / "raw").mkdir()
    result = launch({}, str(tmp_path / "raw"), "--dry-run")
    assert result.returncode == 3, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "no manifest.json in" in errors[0], errors


def test_dry_run_prints_the_plan_and_touches_no_aws(small_data, tmp_path):
    # No endpoint, no credentials: any AWS call would fail.
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "",
        "HOME": "/nonexistent",
    }
    loaded = tmp_path / "modules.txt"
    result = run_enet_aws(
        env, "launch", str(small_data), "--mode", "ddp", "--batch-size", "1", "--dry-run",
        modules_to=loaded,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow" not in loaded.read_text().split()  # a plan needs no TensorFlow
    text = " ".join(result.stdout.split())
    for needle in (
        "1 x ml.p3.16xlarge (the ddp default, one host of the smallest type SMDDP runs on",
        '"smdistributed": {"dataparallel": {"enabled": true}}',
        "AWS TensorFlow 2.11.0 training image (py39)",
        "max_wait 172800 s",
        "global batch 8 (1 per replica x 8 replicas)",
        "metric validation:mean_iou",
        f"/data/{small_data.name}",
    ):
        assert needle in text, needle


@pytest.fixture(scope="session")
def camvid_sized_data(tmp_path_factory) -> Path:
    """Preprocessed data with CamVid's 367 training images (the fixture's 24, each linked
    under 16 names; tiny images: only the counts matter), so that a job's default global
    batch fits as it does with the real dataset."""
    raw = tmp_path_factory.mktemp("camvid-sized") / "raw"
    source = FIXTURES / "camvid-segnet-mini"
    for folder in ("train", "trainannot", "val", "valannot", "test", "testannot"):
        (raw / folder).mkdir(parents=True)
        files = sorted((source / folder).glob("*.png"))
        copies = -(-367 // len(files)) if folder.startswith("train") else 1
        for k in range(copies):
            for f in files:
                if folder.startswith("train") and k * len(files) + files.index(f) >= 367:
                    break
                os.link(f, raw / folder / (f"{k:02d}{f.name}" if copies > 1 else f.name))
    out = raw.parent / "data"
    preprocess_to(raw, out, image_size=(24, 32), workers=2)
    return out


@pytest.mark.parametrize("mode", ["single", "ddp", "mp"])
def test_every_modes_defaults_make_a_valid_job(camvid_sized_data, mode):
    """`enet launch --mode M DATA --dry-run` with no other option: a plan, exit 0, its
    global batch the default 10 per replica times the default instances' GPUs."""
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "SAGEMAKER_ROLE": ROLE}
    result = launch(env, str(camvid_sized_data), "--mode", mode, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    expected = {
        "single": "batch 10",
        "ddp": "global batch 80 (10 per replica x 8 replicas)",
        "mp": "batch 10",
    }[mode]
    assert expected in text, text
    assert f"(the {mode} default, " in text  # the plan says why these instances


def test_sync_batchnorm_makes_auto_pick_the_engine_that_has_it(small_data):
    """SMDDP has no cross-replica batch norm: `auto` is the tf engine (MultiWorkerMirrored
    on the newest TF container) for `--sync-batchnorm`, never an smddp job that fails."""
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "SAGEMAKER_ROLE": ROLE, "COLUMNS": "1000"}
    args = ("--mode", "ddp", "--batch-size", "1", "--sync-batchnorm", "--dry-run")
    result = launch(env, str(small_data), *args)
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    assert "ddp / tf" in text and '"multi_worker_mirrored_strategy": {"enabled": true}' in text
    assert '"sync_batchnorm": true' in text and "smdistributed" not in text


def test_a_global_batch_larger_than_the_data_is_one_line(small_data):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "SAGEMAKER_ROLE": ROLE}
    result = launch(env, str(small_data), "--mode", "ddp", "--batch-size", "4", "--dry-run")
    assert result.returncode == 3, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        "error: --batch-size 4 x 8 replicas = 32 images per step is larger than the train "
        "split (24 images); use --batch-size 3 or less"
    ]


REFUSALS = {
    "smddp on p5": (
        ["--mode", "ddp", "--instance-type", "ml.p5.48xlarge"],
        "--instance-type ml.p5.48xlarge cannot run --engine smddp (smdistributed's TensorFlow "
        "containers predate p5 instances)",
    ),
    "smp on g5": (
        ["--mode", "mp", "--instance-type", "ml.g5.12xlarge"],
        "--instance-type ml.g5.12xlarge cannot run --engine smp",
    ),
    "microbatches": (
        ["--mode", "mp", "--microbatches", "3", "--batch-size", "4"],
        "--batch-size 4 is not divisible by --microbatches 3",
    ),
    "max_wait": (
        ["--max-run", "3600", "--max-wait", "600"],
        "--max-wait 600 is shorter than --max-run 3600",
    ),
    "partitions": (
        ["--mode", "mp", "--partitions", "16", "--batch-size", "4"],
        "--partitions 16 needs 16 GPUs on one instance; the instance type has 4",
    ),
    "sync batch norm on smddp": (
        ["--mode", "ddp", "--engine", "smddp", "--sync-batchnorm"],
        "--sync-batchnorm does not work with --mode ddp --engine smddp (it has no "
        "cross-replica batch norm); use --mode ddp --engine tf, or drop --sync-batchnorm",
    ),
    "sync batch norm on mp": (
        ["--mode", "mp", "--sync-batchnorm"],
        "--sync-batchnorm does not work with --mode mp --engine smp",
    ),
    "single on two": (["--instance-count", "2"], "--mode single trains on one instance"),
    "engine": (["--mode", "mp", "--engine", "smddp"], "--engine smddp does not run --mode mp"),
    "s3 prefix": (["--s3-prefix", "bucket/x"], "--s3-prefix 'bucket/x' must be an s3:// URI"),
    "mp on two": (
        ["--mode", "mp", "--instance-count", "2"],
        "--instance-count 2: --mode mp splits the model across one instance's GPUs",
    ),
    "ddp on one gpu": (
        [
            "--mode",
            "ddp",
            "--engine",
            "tf",
            "--instance-type",
            "ml.g5.xlarge",
            "--batch-size",
            "1",
            "--instance-count",
            "1",
        ],
        "--instance-type ml.g5.xlarge has 1 GPU: --mode ddp needs several",
    ),
    "malformed type": (
        ["--instance-type", "p3.2xlarge"],
        "--instance-type 'p3.2xlarge' is not a SageMaker instance type (like ml.g5.xlarge)",
    ),
    "max_wait on demand": (
        ["--no-spot", "--max-wait", "7200"],
        "--max-wait applies to spot jobs only; drop it or drop --no-spot",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_come_before_anything_is_uploaded(small_data, case):
    args, message = REFUSALS[case]
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "SAGEMAKER_ROLE": ROLE}
    result = launch(env, str(small_data), *args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and message in errors[0], errors


def test_missing_region_credentials_and_role_say_how(small_data, tmp_path):
    base = {"HOME": str(tmp_path), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    cases = [
        ({**base, "AWS_DEFAULT_REGION": ""}, "no AWS region: pass --region"),
        ({**base, "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": ""}, "no AWS credentials"),
        (
            {**base, "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "a",
             "AWS_SECRET_ACCESS_KEY": "b", "SAGEMAKER_ROLE": ""},
            "no IAM role for SageMaker: pass --role",
        ),
    ]  # fmt: skip
    for env, message in cases:
        result = launch(env, str(small_data))
        assert result.returncode == 2, result.stderr[-2000:]
        errors = error_lines(result.stderr)
        assert len(errors) == 1 and message in errors[0], errors


# ---------------------------------------------------------------------------------------
# The container contract, end to end
# ---------------------------------------------------------------------------------------
def _check_trained(result, root: Path):
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "model" / "1" / "saved_model.pb").is_file()  # what SageMaker collects
    assert (root / "model" / "metrics.json").is_file()
    checkpoints = root / "checkpoints"  # synced to checkpoint_s3_uri; SMP's per partition
    assert list(checkpoints.glob("ckpt-*.index")) or list(checkpoints.glob("smp/mp_rank_*/*.index"))
    assert not (root / "output" / "failure").exists()
    lines = [line for line in result.stdout.splitlines() if line.startswith(METRICS_PREFIX)]
    assert lines
    final = json.loads((root / "model" / "metrics.json").read_text())["history"][-1]
    for definition in metric_definitions():  # the job's regexes on the job's real output
        pattern = re.compile(definition["Regex"])
        found = [float(m.group(1)) for m in map(pattern.search, lines) if m]
        key = definition["Regex"].split(r"\b")[1].split("=")[0]
        if final.get(key) is None:  # e.g. images/s: the first epoch traces, it is not timed
            assert found == [], key
        else:
            assert found and found[-1] == pytest.approx(final[key], rel=1e-4, abs=1e-6), key


def _uploaded_job(env, clients, small_data, tmp_path):
    """The source and hyperparameters `enet launch` sent (to the moto server)."""
    job = "enet-test-contract"
    args = ("--epochs", "1", "--batch-size", "4", "--job-name", job, "--s3-prefix", PREFIX)
    result = launch(env, str(small_data), *args, *SMALL_MODEL)
    assert result.returncode == 0, result.stderr[-3000:]
    code = tmp_path / "ml" / "code"
    return code, submitted_code(env, clients, job, code)


def _staged_job(tmp_path, train=None, runtime=None, launch=None):
    """The source staged as launch stages it, hyperparameters encoded as SDK 2 does."""
    from enet_cli.cloud.plan import make_plan
    from enet_cli.cloud.settings import LaunchConfig
    from enet_cli.cloud.source import stage_source
    from enet_cli.train.settings import load_config

    settings = {
        "train": {"epochs": 1, "batch_size": 4, **(train or {})},
        "model": {"bottlenecks": SMALL_BOTTLENECKS},
    }
    if runtime:
        settings["runtime"] = runtime
    plan = make_plan(load_config(None, settings), LaunchConfig(**(launch or {})))
    hyperparameters = {k: json.dumps(v) for k, v in plan.hyperparameters.items()}
    hyperparameters["sagemaker_program"] = json.dumps("enet_entry.py")
    # What SDK 2 adds for SMP (Framework._distribution_configuration): the modelparallel
    # "parameters" as the mp_parameters hyperparameter.
    smp = (plan.distribution or {}).get("smdistributed", {}).get("modelparallel")
    if smp:
        hyperparameters["mp_parameters"] = json.dumps(smp.get("parameters", {}))
    return stage_source(tmp_path / "ml" / "code"), hyperparameters


@pytest.mark.compat
def test_the_jobs_source_trains_in_the_container_contract(small_data, tmp_path, request):
    """Where the SDK is installed (the main job) the source and hyperparameters are the
    ones `enet launch` submitted; the container-version jobs have no SDK 2 (Python 3.8) or
    no need of it, and stage them the way launch and the SDK do."""
    if importlib.util.find_spec("sagemaker") is not None:
        env, clients = request.getfixturevalue("aws")
        code, hyperparameters = _uploaded_job(env, clients, small_data, tmp_path)
    else:
        code, hyperparameters = _staged_job(tmp_path)
    root = tmp_path / "ml"
    _check_trained(run_container(code, hyperparameters, small_data, root), root)


LIBRARY_MARK = {"mp": "smp", "ddp": "smddp"}  # the container each job's library lives in
DISTRIBUTED_JOBS = {
    # mode: (runtime settings, launch settings, batch, what the engine line must say)
    "mp": (
        {"mode": "mp", "partitions": 2, "microbatches": 2, "pipeline": "simple"},
        {},
        4,
        "smp engine, 2 partitions, 2 microbatch(es) per batch, simple pipeline (from "
        "SageMaker's mp_parameters",
    ),
    "ddp": (
        {"mode": "ddp"},
        {"instance_type": "ml.p3.16xlarge", "instance_count": 1},
        1,
        "smddp engine, 1 rank(s) on CPU",
    ),
}


@pytest.mark.compat
@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(mode, marks=getattr(pytest.mark, LIBRARY_MARK[mode]))
        for mode in DISTRIBUTED_JOBS
    ],
)
def test_distributed_jobs_run_their_library_engine_in_the_container(small_data, tmp_path, mode):
    """The mp and ddp jobs launch plans, run through the entry script with the library's
    stand-in importable as it is in AWS's container: the engine it picks, and for SMP its
    parameters from the toolkit's --mp_parameters alone (the entry script's hand-off)."""
    runtime, launch_settings, batch, engine_line = DISTRIBUTED_JOBS[mode]
    code, hyperparameters = _staged_job(tmp_path, {"batch_size": batch}, runtime, launch_settings)
    root = tmp_path / "ml"
    env = {"PYTHONPATH": os.pathsep.join([str(STAND_INS), os.environ.get("PYTHONPATH", "")])}
    result = run_container(code, hyperparameters, small_data, root, env)
    _check_trained(result, root)
    assert engine_line in result.stderr, result.stderr[-2000:]


def test_entry_install_keeps_the_container_tensorflow(tmp_path, monkeypatch):
    """The entry script's pip command, resolved by pip itself (--dry-run) in this
    environment - the container stand-in of its job (TF 2.6 / 2.11 / current): it installs
    enet-cli and nothing of TensorFlow."""
    import enet_cli
    from enet_cli.cloud.source import stage_source
    from enet_cli.container import entry

    monkeypatch.setattr(enet_cli, "__version__", enet_cli.__version__ + ".post999")  # a new one
    code = stage_source(tmp_path / "code")
    wheel = str(next(code.glob("enet_cli-*.whl")))
    report = tmp_path / "report.json"
    command = [*entry.install_command(wheel), "--dry-run", "--no-index", "--report", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    installs = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert installs == {"enet-cli": enet_cli.__version__}
    constraints = (code / "constraints.txt").read_text().split()
    import tensorflow as tf

    assert f"tensorflow=={tf.__version__}" in constraints


@pytest.mark.compat
def test_dockerfile_matches_the_launch_defaults_and_the_entry_script():
    """No Docker engine here: check the Dockerfile against the code it builds on."""
    from enet_cli.cloud.source import ENTRY_SCRIPT
    from enet_cli.train.engines.table import all_specs

    text = (REPO / "Dockerfile").read_text()
    bases = dict(re.findall(r"ARG BASE_(\w+)=\S+/tensorflow-training:(\S+)", text))
    for spec in all_specs():
        if spec.engine.value in ("smddp", "smp") or spec.mode.value == "single":
            assert bases[spec.mode.value] == f"{spec.framework_version}-gpu-{spec.py_version}"
    assert f"SAGEMAKER_PROGRAM={ENTRY_SCRIPT}" in text
    assert f"python /opt/ml/code/{ENTRY_SCRIPT} --install-only" in text
    assert "COPY build/source/ /opt/ml/code/" in text  # python -m enet_cli.cloud.source
    assert "ENTRYPOINT" not in text  # AWS's entry point runs the training toolkit


def test_wait_follows_the_job_to_its_end(aws, small_data):
    env, _ = aws
    job = "enet-test-wait"
    result = launch(env, str(small_data), "--s3-prefix", PREFIX, "--job-name", job, "--wait")
    assert result.returncode == 0, result.stderr[-3000:]  # moto completes jobs at once
    assert f"job {job} finished; model in {PREFIX}/output/{job}/output/model.tar.gz" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_launch_uploads_only_the_manifest_and_its_shards(aws, small_data, tmp_path):
    """Secrets next to the data never leave the machine: dotfiles, a .git folder and a link
    to the user's AWS credentials in DATA are not uploaded; a listed shard that links out of
    DATA is refused before anything is sent."""
    import shutil

    env, clients = aws
    data = Path(shutil.copytree(small_data, tmp_path / "leaky"))
    secret = tmp_path / "home-credentials"
    secret.write_text("REALSECRET")
    (data / ".env").write_text("TOKEN=REALSECRET")
    (data / ".git").mkdir()
    (data / ".git" / "HEAD").write_text("REALSECRET")
    (data / "credentials").symlink_to(secret)
    dry = launch(env, str(data), "--s3-prefix", PREFIX, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    manifest = json.loads((data / "manifest.json").read_text())
    shards = {s["file"] for split in manifest["splits"].values() for s in split["shards"]}
    flat = re.sub(r"[\s│]", "", dry.stdout)  # the table folds long values
    assert re.search(rf"{len(shards) + 1}filesof.*leaky,\d+\.\dMB", flat), dry.stdout
    done = launch(env, str(data), "--s3-prefix", PREFIX, "--job-name", "enet-test-leak")
    assert done.returncode == 0, done.stderr[-3000:]
    listed = clients["s3"].list_objects_v2(Bucket="enet-test-bucket", Prefix="jobs/data/leaky/")
    keys = {o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]}
    assert keys == {"manifest.json", *shards}
    for o in listed["Contents"]:
        body = clients["s3"].get_object(Bucket="enet-test-bucket", Key=o["Key"])["Body"].read()
        assert b"REALSECRET" not in body

    outside = tmp_path / "elsewhere.tfrecord"
    shard = data / sorted(shards)[0]
    shutil.move(str(shard), outside)
    shard.symlink_to(outside)
    refused = launch(env, str(data), "--s3-prefix", PREFIX, "--job-name", "enet-test-leak-2")
    assert refused.returncode == 4
    errors = error_lines(refused.stderr)
    assert len(errors) == 1 and re.search(r"points outside .*leaky .*copy the file in", errors[0])


def test_dry_run_prints_the_metric_regexes_exactly(aws, small_data):
    env, _ = aws
    dry = launch(env, str(small_data), "--s3-prefix", PREFIX, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    flat = dry.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    for definition in metric_definitions():
        assert definition["Regex"].replace(" ", "") in flat, definition["Regex"]


def test_unreachable_aws_is_one_line(aws, small_data):
    env, _ = aws
    dead = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    result = launch(dead, str(small_data), timeout=120)  # no --s3-prefix: the bucket via STS
    assert result.returncode == 4, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    assert re.match(r"error: AWS refused or could not be reached \(.*127\.0\.0\.1:9", lines[0])


def test_sdk_telemetry_is_off_unless_the_user_turns_it_on(aws, small_data, tmp_path):
    """The SDK reports calls to an S3 endpoint of AWS's (sagemaker/telemetry) unless told
    not to. enet launch tells it not to; a user whose SDK config says otherwise is obeyed,
    which also shows that the recording proxy of these tests sees such a request."""
    env, _ = aws
    recorder = OutboundRecorder.running[env["HTTPS_PROXY"]]
    config = tmp_path / "sdk.yaml"
    config.write_text(
        "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
        "      TelemetryOptOut: false\n"
    )
    before = len(recorder.seen)
    result = launch(
        {**env, "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config)}, str(small_data),
        "--s3-prefix", PREFIX, "--job-name", "enet-test-telemetry", outbound_allowed=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert any("sm-pysdk-t" in host for host in recorder.seen[before:]), recorder.seen[before:]


def test_a_submission_says_its_list_price_and_asks_before_a_costly_one(aws, price_list, small_data):
    """The Price List stand-in (tests/moto_aws.py) prices ml.g5.xlarge, the single mode's
    instance, at $1.50/h (test data, not AWS's price): 24 h of it ($36) goes without asking;
    48 h ($72, over $50) is refused in a script without --yes, before anything is uploaded
    or created; --yes submits it."""
    env, clients = aws
    price_list.prices[("ml.g5.xlarge", REGION)] = 1.5
    base = (str(small_data), "--s3-prefix", PREFIX, "--epochs", "1", "--batch-size", "4")
    try:
        cheap = launch(env, *base, "--job-name", "enet-test-cost-24h")
        assert cheap.returncode == 0, cheap.stderr[-3000:]
        assert (
            "cost: $1.50/h for 1 x ml.g5.xlarge at $1.50/h (spot bills at most this); worst "
            "case $36.00 for --max-run 24 h (AWS Price List API, published 2026-11-30)"
        ) in " ".join(cheap.stderr.split())
        asked = price_list.requests[-1]
        assert asked["target"] == "AWSPriceListService.GetProducts"
        assert asked["ServiceCode"] == "AmazonSageMaker"
        assert asked["filters"] == {
            "productFamily": "ML Instance",
            "regionCode": REGION,
            "instanceName": "ml.g5.xlarge",
            "platoinstancetype": "Training",
        }

        costly = ("--max-run", str(48 * 3600), "--job-name", "enet-test-cost-48h")
        refused = launch(env, *base, *costly)
        errors = error_lines(refused.stderr)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert [e for e in errors if e.startswith("error:")] == errors[-1:]  # the cost, then it
        assert errors[-1] == (
            "error: not submitted: it may cost up to $72.00 at list price (over $50); confirm "
            "with --yes, or lower --max-run, --instance-count or --instance-type"
        )
        assert recorded(env, "CreateTrainingJob", TrainingJobName="enet-test-cost-48h") == []
        keys = clients["s3"].list_objects_v2(Bucket="enet-test-bucket").get("Contents", [])
        assert not [k["Key"] for k in keys if "enet-test-cost-48h" in k["Key"]]

        confirmed = launch(env, *base, *costly, "--yes")
        assert confirmed.returncode == 0, confirmed.stderr[-3000:]
        assert "worst case $72.00" in " ".join(confirmed.stderr.split())
        assert recorded(env, "CreateTrainingJob", TrainingJobName="enet-test-cost-48h")
    finally:
        price_list.prices.clear()


def test_a_tuning_jobs_worst_case_counts_every_training_job():
    from enet_cli.cloud.pricing import HourlyPrice, JobCost, on_demand_price

    cost = JobCost(HourlyPrice(2.0, "2026-11-30"), "ml.p3.16xlarge", 2, 3 * 3600, jobs=12)
    assert (cost.per_hour, cost.worst_case) == (4.0, 4.0 * 3 * 12)
    assert "worst case $144.00 for 12 jobs x --max-run 3 h" in cost.describe(spot=False)
    assert on_demand_price({"PriceList": []}) is None


def test_the_jobs_wheel_is_built_once_per_package_and_anew_after_any_change(tmp_path, monkeypatch):
    """pip runs once for a package; the same files reuse the cached wheel byte for byte;
    any change (here the version in its metadata) builds anew; an unwritable cache only
    costs the reuse."""
    import enet_cli
    from enet_cli.cloud import source

    builds = []
    real = source._pip_wheel
    monkeypatch.setattr(source, "_pip_wheel", lambda *a: builds.append(a) or real(*a))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = source.build_wheel(tmp_path / "a")
    second = source.build_wheel(tmp_path / "b")
    assert len(builds) == 1 and first.name == second.name
    assert first.read_bytes() == second.read_bytes()
    assert list((tmp_path / "cache" / "enet-cli" / "wheels").glob("*/enet_cli-*.whl"))

    monkeypatch.setattr(enet_cli, "__version__", "9.9.9")
    changed = source.build_wheel(tmp_path / "c")
    assert len(builds) == 2 and changed.name.startswith("enet_cli-9.9.9-")

    (tmp_path / "not-a-dir").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))
    for out in ("d", "e"):
        assert source.build_wheel(tmp_path / out).name == changed.name
    assert len(builds) == 4
