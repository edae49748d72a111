"""The notebooks in examples/ run top to bottom, as a SageMaker Studio user runs them, against
a real moto server and the bundled CamVid sample: every `!enet ...` cell must exit 0 (IPython
does not stop at a failed shell command, so each one's exit code is read back), the plan,
the scores and the picture must come out, and nothing may reach a real AWS host.

moto accepts a training job and reports it Completed without running it; between the
submit cell and the next one the test plays SageMaker's part (sagemaker_jobs.py): the job's
own code, hyperparameters and uploaded data, run through the container contract, its
model.tar.gz put where the job's model belongs. The SMDDP and SMP jobs run the libraries'
stand-ins (tests/stand_ins), one rank each."""

import base64
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from enet_testing import FIXTURES, REPO, SMALL_BOTTLENECKS, STAND_INS, enet_env
from moto_aws import (  # noqa: F401 (aws, outbound, price_list: fixtures)
    PREFIX,
    aws,
    outbound,
    price_list,
    recorded,
)
from sagemaker_jobs import play_training_job

EXAMPLES = REPO / "examples"
INSTALL = '%pip install --quiet "enet-cli[launch,tensorflow]"'


def _kernel_env(aws_env: dict) -> dict:
    env = {**enet_env(), **aws_env}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "ENET_SAGEMAKER_ROOT"):
        env.pop(name, None)
    return env


def run_notebook(path: Path, overrides: dict, workdir: Path, env: dict, after_submit=None):
    """Execute `path` cell by cell in a fresh kernel started in `workdir` with `env`;
    `overrides` replace values of its parameters cell (papermill's convention: a cell
    after it). Returns (cells as executed, exit code of each shell command)."""
    notebook = nbformat.read(path, as_version=4)
    tags = [set(cell.metadata.get("tags", [])) for cell in notebook.cells]
    assert sum("parameters" in t for t in tags) == 1, path
    client = NotebookClient(notebook, timeout=900, kernel_name="python3")
    client.resources = {"metadata": {"path": str(workdir)}}
    executed, exit_codes = [], []
    with client.setup_kernel(env=env, cwd=str(workdir)):
        for index, cell in enumerate(list(notebook.cells)):
            if cell.cell_type != "code":
                continue
            if "install" in cell.metadata.get("tags", []):  # the kernel has the package
                assert cell.source == INSTALL, cell.source
                continue
            shell = [line for line in cell.source.splitlines() if line.lstrip().startswith("!")]
            assert len(shell) <= 1, f"one shell command per cell (its exit code is read): {cell}"
            if shell:  # IPython sets _exit_code when a shell command runs
                _hidden(client, "_exit_code = None", index)
            client.execute_cell(cell, index)
            executed.append(cell)
            if shell:
                code = json.loads(_hidden(client, "print(json.dumps(_exit_code))", index))
                assert code in (0, None), (shell[0], code, _text(cell))  # None: not run
                exit_codes.append(code)
            if "parameters" in cell.metadata.get("tags", []):
                lines = [f"{key} = {value!r}" for key, value in overrides.items()]
                injected = nbformat.v4.new_code_cell("\n".join(lines))
                client.execute_cell(injected, index, store_history=False)
            if "submit" in cell.metadata.get("tags", []) and after_submit:
                after_submit()
    return executed, exit_codes


def _hidden(client, source: str, index: int) -> str:
    """Run `source` in the notebook's kernel outside its history; what it printed."""
    cell = nbformat.v4.new_code_cell("import json\n" + source)
    client.execute_cell(cell, index, store_history=False)
    return _text(cell)


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
        elif output.get("output_type") == "error":
            parts.append("\n".join(output.get("traceback", [])))
    return "".join(parts)


def _cell(executed, command: str):
    (found,) = [cell for cell in executed if command in cell.source]
    return found


def test_the_preprocess_notebook_writes_the_data_the_training_notebooks_read(
    aws, outbound, tmp_path
):
    env, _ = aws
    seen = len(outbound.seen)
    data = tmp_path / "data" / "camvid"
    overrides = {"CAMVID": str(FIXTURES / "camvid-segnet-mini"), "DATA": str(data)}
    executed, codes = run_notebook(
        EXAMPLES / "01-preprocess-camvid.ipynb",
        {**overrides, "SIZE": "96x128"},
        tmp_path,
        _kernel_env(env),
    )
    assert codes == [None, 0, 0]  # the clone (not run: CamVid is here), preprocess, summary
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["image_size"] == [96, 128]
    shares = _text(_cell(executed, 'manifest["splits"]'))
    counts = {split: info["records"] for split, info in manifest["splits"].items()}
    assert str(counts) in shares and "Road" in shares and "weight" in shares
    assert "multiply-adds" in _text(_cell(executed, "model summary")).lower()
    assert outbound.seen[seen:] == []


JOBS = {
    # notebook: (job name, what its plan must say, PYTHONPATH of the played container,
    # batch: 8 GPUs x 1 image is all the sample's 24 training images allow)
    "02-train-single.ipynb": ("enet-camvid-single", "ml.g5.xlarge", None, 4),
    "03-train-data-parallel.ipynb": ("enet-camvid-ddp", "smddp", STAND_INS, 1),
    "04-train-model-parallel.ipynb": ("enet-camvid-mp", "smp", STAND_INS, 4),
}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_a_training_notebook_plans_submits_downloads_scores_and_draws(
    aws, outbound, small_data, tmp_path, name
):
    env, clients = aws
    job, planned, library, batch = JOBS[name]
    seen = len(outbound.seen)
    model = tmp_path / "models" / job
    overrides = {
        "DATA": str(small_data),
        "CAMVID": str(FIXTURES / "camvid-segnet-mini"),
        "EPOCHS": 1,
        "BATCH_SIZE": batch,
        "S3_PREFIX": PREFIX,
        "MODEL": str(model),
    }
    extra = {"PYTHONPATH": os.pathsep.join([str(library), os.environ.get("PYTHONPATH", "")])}
    played = []

    def sagemaker_runs_the_job():
        root = tmp_path / "sagemaker"
        library_env = extra if library else None
        played.append(play_training_job(env, clients, job, root, library_env, SMALL_BOTTLENECKS))

    executed, codes = run_notebook(
        EXAMPLES / name, overrides, tmp_path, _kernel_env(env), sagemaker_runs_the_job
    )
    assert len(played) == 1 and None not in codes
    plan = _text(_cell(executed, "--dry-run"))
    assert planned in plan and "SageMaker training job" in plan, plan
    assert clients["sagemaker"].describe_training_job(TrainingJobName=job)["HyperParameters"]
    if library:  # the job ran the library's engine (its stand-in), as AWS's container would
        assert f"{planned} engine" in played[0].stderr, played[0].stderr[-2000:]
    assert (model / "1" / "saved_model.pb").is_file()
    history = _text(_cell(executed, '"metrics.json"'))
    assert "val mean IoU" in history and len(history.strip().splitlines()) == 2  # 1 epoch
    assert "mean IoU" in _text(_cell(executed, "enet evaluate"))
    shares = _text(_cell(executed, "segmenter.class_shares"))
    assert "Road" in shares and "Sky" in shares, shares  # the Python API's class shares
    picture = _cell(executed, "segmenter.overlay").outputs[-1]["data"]["image/png"]
    assert base64.b64decode(picture).startswith(b"\x89PNG")
    if "deploy" in "".join(cell.source for cell in executed):  # deployed, then undeployed
        endpoint = f"{job}-endpoint"
        assert recorded(env, "CreateEndpoint", EndpointName=endpoint)
        assert recorded(env, "DeleteEndpoint", EndpointName=endpoint)
        # (moto's state is the test process's: other modules' endpoints may be listed)
        listed = clients["sagemaker"].list_endpoints()["Endpoints"]
        assert endpoint not in [e["EndpointName"] for e in listed]
    assert outbound.seen[seen:] == []
