"""--mode mp on SMP: the engine against the stand-in library in tests/stand_ins (its
per-partition checkpoints, deferred restore, duplicate check, parameters from SageMaker).
(A file of its own: pytest-xdist gives each file to one worker.)"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_mp import _reference, is_slot, relative_error

from enet_cli.container.contract import ROOT_ENV
from enet_testing import (
    STAND_INS,
    assert_same_logits,
    checkpoint_values,
    fit_quietly,
    train_config,
)

pytestmark = pytest.mark.smp  # the SMP container's TensorFlow: the Python 3.8 + TF 2.6 job


@pytest.fixture
def smp(monkeypatch):
    """The stand-in SMP importable for this test only; yields its module."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    for name in ("SM_HP_MP_PARAMETERS", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    import smdistributed.modelparallel.tensorflow as module

    yield module
    for name in [m for m in sys.modules if m.startswith("smdistributed")]:
        del sys.modules[name]
    from enet_cli.model.ops import SpatialDropout

    SpatialDropout.REPLICA_SEED = 0


def smp_config(small_data, run, **train):
    settings = dict(seed=5, dropout=0, stage1_dropout=0, mode="mp", microbatches=2)
    settings.update(train)
    return train_config(small_data, run, **settings)


def model_keys(values: dict) -> set:
    return {k for k in values if k.startswith("model/") and ".OPTIMIZER_SLOT" not in k}


@pytest.mark.compat
def test_smp_step_splits_microbatches_and_accumulates_their_gradients(smp, small_data, tmp_path):
    """One step through smp.step with M=2 equals the microbatch gradients computed by hand,
    and is saved as SMP saves: each partition's own part in checkpoints/smp/mp_rank_<k>."""
    run = tmp_path / "smp"
    summary = fit_quietly(smp_config(small_data, run, steps=1, checkpoint_every_steps=1))
    assert summary["steps"] == 1
    assert ("init", {"partitions": 2, "microbatches": 2, "pipeline": "interleaved"}) in smp.calls
    assert ("step", "microbatch", 2) in smp.calls  # the batch of 4 went in as 2 x 2
    smp_dir = run / "checkpoints" / "smp"
    assert sorted(p.name for p in smp_dir.iterdir()) == ["mp_rank_0", "mp_rank_1"]
    assert not list((run / "checkpoints").glob("ckpt-*"))  # nothing outside SMP's layout
    parts = [checkpoint_values(smp_dir / f"mp_rank_{k}") for k in (0, 1)]
    assert model_keys(parts[0]) and model_keys(parts[1])
    assert not model_keys(parts[0]) & model_keys(parts[1])  # each holds its own part
    values = checkpoint_values(run / "checkpoints")  # the parts merged (read file by file)
    expected = _reference(small_data, seed=5)
    slots = [k for k, v in values.items() if v.shape == (3, 3, 11, 16) and is_slot(k)]
    first_moment = [values[k] for k in slots if values[k].min() < 0]
    assert len(first_moment) == 1
    assert relative_error(first_moment[0], 0.1 * expected["classifier_gradient"]) < 1e-4
    loss = float(values["epoch_loss_sum/.ATTRIBUTES/VARIABLE_VALUE"])
    assert abs(loss - expected["loss"]) < 1e-5 * expected["loss"]


@pytest.mark.compat
def test_smp_resume_goes_through_the_librarys_deferred_restore(smp, small_data, tmp_path):
    """SMP restores only during the first step, after partitioning: the loop still resumes
    at the saved position, and a run stopped after step 1 and resumed ends in the same state
    as a straight 2-step run (weights, Adam moments, step, partial-epoch metrics)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit_quietly(smp_config(small_data, straight, steps=2, checkpoint_every_steps=1))
    fit_quietly(smp_config(small_data, resumed, steps=1, checkpoint_every_steps=1))
    smp.calls.clear()
    summary = fit_quietly(smp_config(small_data, resumed, steps=2, checkpoint_every_steps=1))
    assert summary["steps"] == 2
    events = [c for c in smp.calls if c[0] in ("restore deferred", "partition", "restore", "step")]
    assert events[0] == ("restore deferred", str(resumed / "checkpoints" / "smp"))
    assert events[1] == ("partition",)
    restored = sorted(Path(c[1]).relative_to(resumed).as_posix() for c in events[2:4])
    assert restored == [f"checkpoints/smp/mp_rank_{k}/ckpt-1" for k in (0, 1)]
    assert events[4][0] == "step"  # restored before the first microbatch ran
    a = checkpoint_values(straight / "checkpoints")
    b = checkpoint_values(resumed / "checkpoints")
    assert sorted(a) == sorted(b)
    assert int(b["global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == 2
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.compat
def test_an_smp_run_serves_wherever_a_whole_one_does(smp, small_data, tmp_path):
    """An SMP run's partitioned checkpoints, merged, give the same predictions as the
    SavedModel it exported (the best weights), resume in single mode, and convert to whole
    checkpoints with `enet export --format checkpoint`."""
    from enet_cli.core.formats import ModelFormat
    from enet_cli.serving.evaluate import evaluate
    from enet_cli.serving.export import ExportRequest
    from enet_cli.serving.runtimes import load_predictor
    from enet_cli.train.state import export_checkpoints

    run = tmp_path / "smp"
    # Batch 6 in 3 microbatches: the val split's last batch (8 = 6 + 2) is padded to 3.
    summary = fit_quietly(smp_config(small_data, run, epochs=1, batch_size=6, microbatches=3))
    best = checkpoint_values(run / "checkpoints" / "smp-best")
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 96, 128, 3))
    images = (pixels / 255.0).astype(np.float32)  # what the SavedModel's uint8 input holds
    saved = load_predictor(run).logits(images).numpy()
    from_parts = load_predictor(run / "checkpoints" / "smp-best").logits(images).numpy()
    assert_same_logits(saved, from_parts)  # the export holds the parts
    # The SMP eval step (the last batch padded with void) scored those weights as evaluate
    # does; counting the padding would move these by whole percents.
    scored = evaluate(run / "checkpoints" / "smp-best", small_data, "val", 2, None, None)
    assert summary["final_val"]["mean_iou"] == pytest.approx(scored["mean_iou"], rel=1e-3)
    assert summary["final_val"]["pixel_accuracy"] == pytest.approx(
        scored["pixel_accuracy"], rel=1e-3
    )

    whole = tmp_path / "whole"
    export_checkpoints(
        ExportRequest(source=run, out=whole, format=ModelFormat.checkpoint, data_dir=None)
    )
    converted = checkpoint_values(whole)
    merged = checkpoint_values(run / "checkpoints")
    assert sorted(converted) == sorted(merged)
    for key in merged:
        np.testing.assert_array_equal(converted[key], merged[key], err_msg=key)
    converted_best = checkpoint_values(whole / "best")
    for key in model_keys(best):
        np.testing.assert_array_equal(converted_best[key], best[key], err_msg=key)

    # Single mode resumes from the SMP run (its parts merged) at its position.
    del sys.modules["smdistributed.modelparallel.tensorflow"]
    summary = fit_quietly(
        train_config(small_data, run, epochs=2, seed=5, batch_size=6, dropout=0, stage1_dropout=0)
    )
    assert [e["epoch"] for e in summary["history"]] == [1, 2]
    assert summary["steps"] == 2 * int(merged["global_step/.ATTRIBUTES/VARIABLE_VALUE"])


@pytest.mark.compat
def test_smp_ranks_other_than_zero_write_only_their_partition(
    smp, small_data, tmp_path, monkeypatch
):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    run = tmp_path / "rank1"
    summary = fit_quietly(smp_config(small_data, run, steps=1, checkpoint_every_steps=1))
    assert summary["steps"] == 1 and "saved_model" not in summary
    written = {p.relative_to(run).parts[:3] for p in run.rglob("*") if p.is_file()}
    # no model, logs, metrics: its partition's checkpoints only, in SMP's layout
    assert written == {("checkpoints", "smp", "mp_rank_1")}


@pytest.mark.compat
def test_smp_parameters_come_from_sagemaker(smp, tmp_path, monkeypatch):
    from enet_cli.core.config import RuntimeConfig
    from enet_cli.core.errors import ConfigError
    from enet_cli.train.engines import get_engine

    runtime = RuntimeConfig(mode="mp", partitions=2, microbatches=1)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "ml"))
    config = tmp_path / "ml" / "input" / "config"
    config.mkdir(parents=True)
    params = {"partitions": 2, "microbatches": 4, "pipeline": "simple"}
    # As SageMaker SDK 2 writes it: every value JSON-encoded into a string.
    hyperparameters = {"mp_parameters": json.dumps(params), "epochs": "3"}
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    engine = get_engine(runtime)
    assert type(engine).__name__ == "SMPEngine"  # auto: the library imports
    assert smp.calls[-1] == ("init", params)
    assert "4 microbatch(es) per batch, simple pipeline (from SageMaker's mp_parameters" in (
        engine.describe()
    )
    from enet_cli.train.engines.table import check_microbatches

    with pytest.raises(ConfigError, match="--batch-size 6 is not divisible by --microbatches 4"):
        check_microbatches(6, engine.microbatches)
    monkeypatch.setenv("SM_HP_MP_PARAMETERS", json.dumps({**params, "microbatches": 8}))
    assert get_engine(runtime).microbatches == 8  # the toolkit's variable, which SMP reads
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="SMP runs 4 processes for 2 partitions"):
        get_engine(runtime)


@pytest.mark.compat
def test_smp_engine_without_the_library_says_where_it_exists():
    from enet_cli.core.config import RuntimeConfig
    from enet_cli.core.errors import EnvironmentProblem
    from enet_cli.train.engines import get_engine

    with pytest.raises(EnvironmentProblem, match=r"exists only in SageMaker's TensorFlow 2\.6"):
        get_engine(RuntimeConfig(mode="mp", engine="smp"))
