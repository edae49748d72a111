"""`enet export` and `enet benchmark` on a model really trained on the CamVid sample.

The exports are checked against the Keras model they come from: logits within float
tolerance (SavedModel, TFLite float32), classes agreeing on the sample's pixels (float16,
and int8 above a stated floor), every TFLite operator a builtin of the stock interpreter.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from enet_testing import (
    CLASS_AGREEMENT_FLOOR,
    PIXELS_OFF_AT_A_TIE,
    SMALL_BOTTLENECKS,
    assert_same_logits,
    enet_env,
    enet_user,
    error_lines,
    fit_quietly,
    invoke,
    train_config,
    tree,
)

# int8 post-training quantization against the float model on the sample's val split, for a
# model trained 12 epochs at 96x128 (val mean IoU ~22%): measured 95.4% pixel agreement and
# -0.3 mean IoU points (92.6% and -0.9 before the export forms of issue 31, when the image
# reached the first convolution in the initial concat's scale); the floors leave room for
# another seed or TensorFlow version.
INT8_AGREEMENT_FLOOR = 0.9
INT8_MIOU_DELTA_LIMIT = 0.02


@pytest.fixture(scope="module")
def fitted_run(small_data, tmp_path_factory):
    """ENet trained until it segments (val mean IoU ~0.2): agreement needs confident logits."""
    run = tmp_path_factory.mktemp("fitted") / "run"
    cfg = train_config(
        small_data, run, epochs=12, learning_rate=5e-3, dropout=0.0, stage1_dropout=0.0
    )
    summary = fit_quietly(cfg)
    assert summary["best_val_mean_iou"] > 0.12, summary["best_val_mean_iou"]
    return run


@pytest.fixture(scope="module")
def keras_model(fitted_run):
    from enet_cli.serving.runtimes import load_keras_model

    return load_keras_model(fitted_run)


def _val_batch(small_data):
    from enet_cli.core.config import DataConfig
    from enet_cli.data.dataset import make_dataset
    from enet_cli.data.manifest import load_manifest

    manifest = load_manifest(small_data)
    data = DataConfig(data_dir=small_data, image_size=manifest.image_size)
    images, labels = next(iter(make_dataset(data, manifest, "val", 4, training=False)))
    pixels = np.round(images.numpy() * 255).astype(np.uint8)
    return pixels, labels.numpy()


@pytest.fixture(scope="module")
def tflite_float32(fitted_run, small_data, tmp_path_factory):
    """(report, directory) of the trained model exported as float32 TFLite, measured on val."""
    out = tmp_path_factory.mktemp("tflite") / "f32"
    return _export(source=fitted_run, out=out, format="tflite", data_dir=small_data), out


def _export(**fields):
    from enet_cli.serving.export import ExportRequest, export_model

    return export_model(ExportRequest(**fields))


def test_saved_model_serves_the_keras_logits_and_scores_in_evaluate(
    fitted_run, keras_model, small_data, tmp_path
):
    import tensorflow as tf

    out = tmp_path / "sm"
    result = invoke("export", str(fitted_run), "--out", str(out), "--data", str(small_data))
    assert result.returncode == 0, result.stderr[-2000:]
    said = re.search(r"pixel agreement ([\d.]+)%", result.stdout)
    assert said and float(said.group(1)) >= 100 * CLASS_AGREEMENT_FLOOR, result.stdout
    assert "delta +0.00 points" in result.stdout
    model, _ = keras_model
    pixels, _ = _val_batch(small_data)
    served = tf.saved_model.load(str(out)).signatures["serving_default"](images=pixels)
    expected = model(pixels.astype(np.float32) / 255.0, training=False).numpy()
    assert_same_logits(served["logits"].numpy(), expected)
    np.testing.assert_array_equal(served["classes"].numpy(), served["logits"].numpy().argmax(-1))
    scored = invoke("evaluate", str(out), str(small_data), "--split", "val")
    assert scored.returncode == 0, scored.stderr[-2000:]


@pytest.mark.compat
def test_the_saved_model_export_serves_the_keras_logits(trained_run, small_data, tmp_path):
    """What every training job ends with, on each container's TensorFlow: the SavedModel
    serves the same logits as the Keras model it was exported from."""
    from enet_cli.serving.runtimes import load_keras_model, load_predictor

    model, _ = load_keras_model(trained_run)
    report = _export(source=trained_run, out=tmp_path / "sm", format="saved_model")
    pixels, _ = _val_batch(small_data)
    images = pixels.astype(np.float32) / 255.0
    served = load_predictor(report.path).logits(images).numpy()
    assert_same_logits(served, model(images, training=False).numpy())


# From the architecture (PyTorch-ENet's, model/enet.py) at a depth (stage 1-5 bottleneck
# counts): convolutions that are not transposed (initial 1; downsampling 3 each; regular and
# dilated bottlenecks 3, asymmetric 4; upsampling 3 plus a transposed one) and one residual
# sum per bottleneck. The paper's depth: 86 and 27.
STAGE2_ASYMMETRIC = [False, False, True, False, False, False, True, False]


def enet_conv2d(bottlenecks) -> int:
    n1, n2, n3, n4, n5 = bottlenecks
    middle = STAGE2_ASYMMETRIC[:n2] + STAGE2_ASYMMETRIC[:n3]
    regular = n1 + middle.count(False) + n4 + n5
    return 1 + 2 * 3 + regular * 3 + middle.count(True) * 4 + 2 * 3


def enet_residual_sums(bottlenecks) -> int:
    return 2 + sum(bottlenecks) + 2


def test_the_architecture_counts_are_the_papers_at_its_depth():
    assert (enet_conv2d((4, 8, 8, 2, 1)), enet_residual_sums((4, 8, 8, 2, 1))) == (86, 27)


def batch_norms(model) -> int:
    return sum("BatchNorm" in type(m).__name__ for m in model.submodules)


def test_tflite_float32_and_float16_match_the_keras_model(
    fitted_run, keras_model, tflite_float32, small_data, tmp_path
):
    from enet_cli.serving.runners import TFLiteRunner

    model, _ = keras_model
    pixels, _ = _val_batch(small_data)
    expected = model(pixels.astype(np.float32) / 255.0, training=False).numpy()
    float16 = _export(
        source=fitted_run, out=tmp_path / "f16", format="tflite", quantize="float16",
        data_dir=small_data,
    )  # fmt: skip
    reports = {"float32": tflite_float32[0], "float16": float16}
    for name, report in reports.items():
        assert not [op for op in report.operators if op.startswith("Flex") or op == "CUSTOM"]
        assert "CONV_2D" in report.operators and "LEAKY_RELU" in report.operators
        runner = TFLiteRunner(report.path)  # the stock interpreter: it would refuse Flex ops
        # One CONV_2D per convolution of the architecture, the three transposed ones too
        # (as convolution + depth_to_space: model/ops.py subpixel_kernel), and batch norm
        # folded into them: besides the residual sums, fewer MUL/ADD than there are
        # batch-norm layers (each unfolded one would cost a MUL and an ADD; the few left
        # scale the input, the initial block's pooled image, and mask the unpooling).
        counts = {op: runner.ops().count(op) for op in ("CONV_2D", "MUL", "ADD")}
        assert "TRANSPOSE_CONV" not in runner.ops()
        assert counts["CONV_2D"] == enet_conv2d(SMALL_BOTTLENECKS) + 3, counts  # fitted_run's
        sums = enet_residual_sums(SMALL_BOTTLENECKS)
        assert counts["ADD"] >= sums, counts
        assert counts["MUL"] + counts["ADD"] - sums < batch_norms(model), counts
        logits, classes = runner(pixels)
        floor = 0.999 if name == "float32" else 0.99
        if name == "float32":
            # Max unpooling is discontinuous: where a 2x2 pooling window holds a near tie
            # in float32, TFLite's arithmetic (batch norm folded into the kernels) may place
            # the value at the other position (enet_testing.assert_same_logits). Seen: 25 of
            # 540672 logits off by up to 2.4e-3 on one machine, 381 on an AMD EPYC one.
            # Everything else agrees to 1e-3.
            close = np.abs(logits - expected) <= 1e-3
            assert close.mean() >= 1 - PIXELS_OFF_AT_A_TIE, (close.size - close.sum(), close.size)
        assert float(np.mean(classes == expected.argmax(-1))) >= floor, name
        assert report.agreement.pixel_agreement >= floor, (name, report.agreement)
        assert abs(report.agreement.mean_iou_delta) < 0.005, (name, report.agreement)
    assert float16.size_bytes < 0.6 * tflite_float32[0].size_bytes


def _val_split(small_data):
    """Every val image (uint8) and label of the sample."""
    from enet_cli.core.config import DataConfig
    from enet_cli.data.dataset import make_dataset
    from enet_cli.data.manifest import load_manifest

    manifest = load_manifest(small_data)
    data = DataConfig(data_dir=small_data, image_size=manifest.image_size)
    pixels, labels = [], []
    for images, truth in make_dataset(data, manifest, "val", 4, training=False):
        pixels.append(np.round(images.numpy() * 255).astype(np.uint8))
        labels.append(truth.numpy())
    return np.concatenate(pixels), np.concatenate(labels), manifest.ignore_index


def test_int8_agrees_above_the_floor_and_runs_in_evaluate(
    fitted_run, keras_model, small_data, tmp_path
):
    from enet_cli.serving.export import AGREEMENT_FLOOR, IOU_LOSS_POINTS
    from enet_cli.serving.runners import TFLiteRunner

    out = tmp_path / "int8"
    # A real process with a user's environment (no TensorFlow log level set): what reaches
    # the terminal is ours only, not the converter's quantizer line ("fully_quantize: 0,
    # inference_type: 6, ...") or the interpreter's XNNPACK line, which bypass Python.
    result = enet_user(
        "export", str(fitted_run), "--format", "tflite", "--quantize", "int8",
        "--data", str(small_data), "--calibration-images", "8", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    printed = [x for x in result.stderr.splitlines() if x.strip()]
    assert all(x.startswith(("exporting ", "warning: ")) for x in printed), result.stderr
    # The agreement, computed here from the two models' outputs on every val pixel.
    model, _ = keras_model
    pixels, labels, void = _val_split(small_data)
    runner = TFLiteRunner(out / "model.tflite")
    ours = runner(pixels)[0].argmax(-1)
    float_classes = model(pixels.astype(np.float32) / 255.0, training=False).numpy().argmax(-1)
    valid = labels != void
    agreement = float(np.mean((ours == float_classes)[valid]))
    assert agreement >= INT8_AGREEMENT_FLOOR, agreement
    line = next(x for x in result.stdout.splitlines() if "pixel agreement" in x)
    assert f"pixel agreement {100 * agreement:.2f}%" in line, (agreement, line)  # as it says
    assert "operators (all TFLite builtins)" in result.stdout
    size_line = next(x for x in result.stdout.splitlines() if x.startswith("wrote TFLite int8"))
    assert float(size_line.split(": ")[1].split(" MiB")[0]) < 0.7  # float32 is 1.4 MiB
    scored = invoke(
        "evaluate", str(out / "model.tflite"), str(small_data), "--split", "val",
        "--json", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-2000:]
    for command in (result, scored):  # the interpreter's "Created ... XNNPACK delegate" line
        assert "XNNPACK" not in command.stderr and "INFO:" not in command.stderr, command.stderr
    export_miou = float(line.split("mean IoU ")[1].split("%")[0]) / 100
    float_miou = float(line.split(" vs ")[1].split("%")[0]) / 100
    evaluated = json.loads((tmp_path / "m.json").read_text())["mean_iou"]
    assert abs(evaluated - export_miou) < 5e-4, (evaluated, export_miou)
    assert abs(export_miou - float_miou) <= INT8_MIOU_DELTA_LIMIT, line
    # Below the floors the export says so, and what helps; above them it says nothing.
    lost = agreement < AGREEMENT_FLOOR or 100 * (export_miou - float_miou) < -IOU_LOSS_POINTS
    warned = [x for x in printed if x.startswith("warning: ")]
    assert len(warned) == int(lost), (agreement, line, warned)
    assert all("--calibration-images 32" in x and "float16" in x for x in warned), warned


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "tflite", "--quantize", "int8"], "--data"),
        (["--format", "saved_model", "--quantize", "float16"], "--format tflite"),
        (["--format", "tensorrt"], "--format"),
        (["--format", "onnx", "--xla"], "--xla"),
        (["--format", "tflite", "--size", "100x0"], "--size"),
        (["--format", "tflite", "--xla"], "--xla"),
    ],
)
def test_bad_export_requests_fail_in_one_line_and_write_nothing(
    fitted_run, tmp_path, args, message
):
    out = tmp_path / "out"
    result = invoke("export", str(fitted_run), "--out", str(out), *args)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], lines
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_a_tflite_export_is_not_a_source_for_another_export(tflite_float32, tmp_path):
    _, exported = tflite_float32
    out = tmp_path / "x"
    result = invoke("export", str(exported), "--format", "tflite", "--out", str(out))
    assert result.returncode == 3
    assert "already a TFLite export" in error_lines(result.stderr)[-1]
    assert not out.exists()


def test_videos_split_batches_between_runtime_copies_with_the_same_numbers(
    tflite_float32, small_data
):
    """A video's frames run on VIDEO_PARALLEL copies of the model at once, each on a share
    of the cores (inference._Split); a batch must come back whole, in order, with the
    numbers one copy on every core gives."""
    from enet_cli.serving.inputs import STDIN
    from enet_cli.serving.predict import VIDEO_PARALLEL, parallel_for
    from enet_cli.serving.runtimes import load_predictor

    _, exported = tflite_float32
    pixels, _ = _val_batch(small_data)
    batch = np.concatenate([pixels, pixels[:1][:, ::-1]])  # 5 frames: an uneven split
    whole = load_predictor(exported)
    split = load_predictor(exported, parallel=VIDEO_PARALLEL)
    assert VIDEO_PARALLEL >= 2 and split.parallel == VIDEO_PARALLEL and whole.parallel == 1
    expected = [whole.run(frame[None]) for frame in batch]
    logits, classes = split.run(batch)
    assert logits.shape[0] == classes.shape[0] == len(batch)
    np.testing.assert_allclose(logits, np.concatenate([e[0] for e in expected]), atol=1e-5)
    np.testing.assert_array_equal(classes, np.concatenate([e[1] for e in expected]))
    none, only_classes = split.run(batch[:1], logits=False)  # fewer frames than copies
    assert none is None
    np.testing.assert_array_equal(only_classes, expected[0][1])
    # videos and streams get the copies, a folder of photos one copy on every core
    assert parallel_for([Path("a.png"), Path("b.mp4")]) == VIDEO_PARALLEL
    assert parallel_for([STDIN]) == VIDEO_PARALLEL
    assert parallel_for([Path("a.png"), Path("b.jpg")]) == 1


def test_benchmark_reports_sane_numbers_with_machine_and_versions(fitted_run, tmp_path):
    import tensorflow as tf

    report_path = tmp_path / "bench.json"
    started = time.monotonic()
    result = invoke(
        "benchmark",
        str(fitted_run),
        "--what",
        "all",
        "--variants",
        "keras,tflite_float32",
        "--iterations",
        "5",
        "--warmup",
        "2",
        "--json",
        str(report_path),
        timeout=600,
    )  # fmt: skip  (no --size: the model's own, 96x128)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["settings"]["image_size"] == [96, 128]
    assert "96x128 (the model's training size)" in result.stdout
    assert report["machine"]["machine_cores"] == os.cpu_count()
    assert report["versions"]["tensorflow"] == tf.__version__
    assert report["versions"]["fused_kernels"] == "on"  # training timed with the fused kernels
    rows = {(r["what"], r["variant"]): r for r in report["results"]}
    assert set(rows) == {
        ("train", "keras float32"),
        ("infer", "keras"),
        ("infer", "tflite_float32"),
        ("pipeline", "tf.data decode+augment"),
    }
    for row in rows.values():
        assert row["min"] <= row["q1"] <= row["median"] <= row["q3"] <= row["max"], row
        assert math.isfinite(row["median"]) and row["median"] > 0
    assert rows[("infer", "keras")]["n"] == 5
    assert rows[("infer", "keras")]["unit"] == "ms/image"
    for variant in ("keras", "tflite_float32"):  # 5 timed images fit in the command's time
        assert 5 * rows[("infer", variant)]["median"] / 1000 < elapsed, rows[("infer", variant)]
    assert rows[("train", "keras float32")]["unit"] == "images/s"
    assert "MiB" in rows[("infer", "tflite_float32")]["note"]
    assert "median" in result.stdout and "tflite_float32" in result.stdout


def test_benchmark_reports_the_cores_it_may_use(tmp_path):
    """Timings depend on the cores the process may run on, not on the machine's count."""
    report_path = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "enet_cli", "benchmark", "--what", "pipeline",
         "--size", "96x128", "--iterations", "2", "--warmup", "1", "--json", str(report_path)],
        capture_output=True, text=True, timeout=300, env=enet_env(),
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    machine = json.loads(report_path.read_text())["machine"]
    assert machine["cores"] == 1 and machine["machine_cores"] == os.cpu_count()


def test_benchmark_refuses_unknown_variants():
    result = invoke("benchmark", "--what", "infer", "--variants", "keras,tensorrt")
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "tensorrt" in lines[0] and "tflite_int8" in lines[0], lines
    video = invoke("benchmark", "--what", "video", "--variants", "keras_xla")
    lines = error_lines(video.stderr)
    assert video.returncode == 2 and len(lines) == 1, video.stderr
    assert (
        "'keras_xla': choose from keras, saved_model, tflite_float32, tflite_int8, onnx" in lines[0]
    )


def _xla_compiled_functions(saved_model_dir) -> int:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    library = proto.meta_graphs[0].graph_def.library
    return sum(
        1 for f in library.function if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b
    )


def test_xla_saved_model_is_compiled_and_serves_the_same_logits(trained_run, small_data, tmp_path):
    from enet_cli.serving.runtimes import load_predictor

    plain = _export(source=trained_run, out=tmp_path / "plain", format="saved_model")
    xla = _export(source=trained_run, out=tmp_path / "xla", format="saved_model", xla=True)
    assert _xla_compiled_functions(xla.path) >= 1 and _xla_compiled_functions(plain.path) == 0
    pixels, _ = _val_batch(small_data)
    images = pixels.astype(np.float32) / 255.0
    a = load_predictor(plain.path).logits(images).numpy()
    b = load_predictor(xla.path).logits(images).numpy()
    assert_same_logits(b, a)


@pytest.mark.parametrize("fmt", ["saved_model", "tflite", "onnx", "checkpoint"])
def test_export_again_with_force_replaces_its_own_export_and_refuses_anything_else(
    trained_run, fmt, tmp_path, request
):
    """What an export wrote is what a later --force may replace (its marker lists it), in
    every format; a file export did not write keeps the directory from being replaced.
    Where another test already paid for the first export (a run's SavedModel is written by
    the same export code; the module's TFLite export), a copy of it is the first."""
    out = tmp_path / "export"
    earlier = {
        "saved_model": lambda: trained_run / "model",
        "tflite": lambda: request.getfixturevalue("tflite_float32")[1],
    }
    if fmt in earlier:
        shutil.copytree(earlier[fmt](), out)
    else:
        first = invoke("export", trained_run, "--format", fmt, "--out", out)
        assert first.returncode == 0, first.stderr[-2000:]
    written = set(tree(out))
    assert ".enet-output.json" in written and len(written) > 2
    again = invoke("export", trained_run, "--format", fmt, "--out", out)
    assert again.returncode == 2 and "already exists; use --force" in again.stderr, again.stderr
    forced = invoke("export", trained_run, "--format", fmt, "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert set(tree(out)) == written
    (out / "notes.txt").write_text("mine")
    refused = invoke("export", trained_run, "--format", fmt, "--out", out, "--force")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "did not write (notes.txt)" in error_lines(refused.stderr)[-1]
    assert (out / "notes.txt").read_text() == "mine" and set(tree(out)) == written | {"notes.txt"}
