"""`enet export --format onnx`: a really trained ENet in the stock onnxruntime.

ENet's max-unpooling is what makes other ports fail to export; ours is built from standard
operators, so the ONNX file must hold only the default domain's operators, run in a plain
`onnxruntime.InferenceSession`, and give the Keras logits within the TFLite float32
tolerance, at the training size and at any other size (padding inside the graph).
"""

import re
import subprocess
import sys
import time

import numpy as np
import onnx  # the [onnx] extra, part of the dev install
import onnxruntime
import pytest
from PIL import Image

from enet_testing import (
    FIXTURES,
    PIXELS_OFF_AT_A_TIE,
    enet_env,
    invoke,
    one_error_line,
)

ONNX_TOLERANCE = 1e-3  # test_export's TFLite float32 tolerance


@pytest.fixture(scope="module")
def onnx_export(trained_run, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "enet-onnx"
    result = invoke(
        "export", str(trained_run), "--format", "onnx", "--data", str(small_data), "--out",
        str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout


def _close_logits(actual, expected):
    close = np.abs(actual - expected) <= ONNX_TOLERANCE
    assert close.mean() >= 1 - PIXELS_OFF_AT_A_TIE, (close.size - close.sum(), close.size)
    assert np.mean(actual.argmax(-1) == expected.argmax(-1)) >= 0.995


@pytest.mark.slow
def test_onnx_runs_in_the_stock_runtime_with_the_keras_logits(onnx_export, trained_run, small_data):
    import tensorflow as tf

    from enet_cli.pixels.preprocessor import run_padded
    from enet_cli.serving.runtimes import load_keras_model

    out, stdout = onnx_export
    graph = onnx.load(str(out / "model.onnx")).graph
    custom = sorted({f"{n.domain}:{n.op_type}" for n in graph.node if n.domain})
    assert custom == []  # no custom operator: any ONNX runtime can load it
    said = re.search(r"operators \(all in ONNX's default domain\): (.+)", stdout)
    assert said and set(said.group(1).split(", ")) == {n.op_type for n in graph.node}
    agreement = re.search(r"pixel agreement ([\d.]+)%", stdout)
    assert agreement and float(agreement.group(1)) >= 99.9, stdout
    [image_input] = graph.input
    dims = image_input.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [0, 0, 0, 3]  # batch, height, width dynamic

    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    model, _ = load_keras_model(trained_run)
    photos = sorted((FIXTURES / "camvid-segnet-mini" / "val").glob("*.png"))[:3]
    for size in [(96, 128), (90, 121)]:  # the training size and an odd one
        pixels = np.stack(
            [np.asarray(Image.open(p).convert("RGB").resize(size[::-1])) for p in photos]
        )
        logits, classes = session.run(["logits", "classes"], {"images": pixels})
        expected = run_padded(model, tf.constant(pixels / 255.0, tf.float32)).numpy()
        assert logits.shape == expected.shape == (3, *size, 11)
        _close_logits(logits, expected)
        np.testing.assert_array_equal(classes, logits.argmax(-1))


@pytest.mark.slow
def test_onnx_predicts_videos_and_evaluates_and_refuses_what_it_cannot(
    onnx_export, trained_run, small_data, tmp_path
):
    from test_video import FRAMES, frames_of, make_video

    out, _ = onnx_export
    clip = make_video(tmp_path / "drive.mkv", frames_of(FRAMES[:4]), rate=10)
    by_onnx = invoke("predict", str(out / "model.onnx"), str(clip), "--out",
                       str(tmp_path / "a"), "--classes-video", "png")  # fmt: skip
    assert by_onnx.returncode == 0, by_onnx.stderr[-2000:]
    assert "(runtime onnx)" in by_onnx.stderr
    by_keras = invoke("predict", str(trained_run), str(clip), "--out", str(tmp_path / "b"),
                        "--classes-video", "png", "--runtime", "keras")  # fmt: skip
    assert by_keras.returncode == 0, by_keras.stderr[-2000:]
    assert "(runtime keras)" in by_keras.stderr
    for name in [f"{k:06d}.png" for k in range(4)]:
        a = np.asarray(Image.open(tmp_path / "a" / "drive_classes" / name))
        b = np.asarray(Image.open(tmp_path / "b" / "drive_classes" / name))
        assert np.mean(a == b) >= 0.995, name

    scored = invoke("evaluate", str(out), str(small_data), "--split", "val")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "ONNX" in scored.stdout and "mean IoU" in scored.stdout

    wrong_runtime = invoke(
        "predict", str(out), str(FRAMES[0]), "--runtime", "tflite", "--out", str(tmp_path / "c")
    )
    one_error_line(
        wrong_runtime,
        2,
        r"--runtime tflite: .*model.onnx is an ONNX file, which runs in onnx; export it with "
        r"enet export --format tflite first",
    )
    quantized = invoke(
        "export", str(trained_run), "--format", "onnx", "--quantize", "int8", "--out",
        str(tmp_path / "d"),
    )  # fmt: skip
    one_error_line(quantized, 2, r"--quantize int8 applies to --format tflite; --format onnx")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_a_fixed_size_onnx_export_says_which_size_it_takes(trained_run, tmp_path):
    out = tmp_path / "fixed"
    result = invoke("export", str(trained_run), "--format", "onnx", "--size", "64x96",
                      "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dims = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [0, 64, 96, 3]
    photo = sorted((FIXTURES / "camvid-segnet-mini" / "val").glob("*.png"))[0]
    predicted = invoke("predict", str(out), str(photo), "--out", str(tmp_path / "p"))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    classes = np.asarray(Image.open(tmp_path / "p" / f"{photo.stem}_classes.png"))
    assert classes.shape == (360, 480)  # resized to 64x96 for the model, and back


_HOLD_ONNX_SESSION = """
import sys, time
import numpy as np
from enet_cli.serving.runners import OnnxRunner

runner = OnnxRunner(sys.argv[1])
runner.session.run(None, {"images": np.zeros((1, 96, 128, 3), np.uint8)})
time.sleep(float(sys.argv[2]))  # onnxruntime uploads its first events after a few seconds
"""

# onnxruntime stays silent by itself where one of these is set (a CI machine, its own unit tests:
# microsoft/onnxruntime PR 29742, "preserving CI ... suppression"; the names are the strings its
# Linux wheel checks). A CI runner sets one, so each process here gets an environment without
# them: otherwise "ours sends nothing" would hold for onnxruntime's reason, not ours.
_ORT_QUIET_WHERE = (
    "CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
    "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER",
    "ORT_RUNNING_UNIT_TESTS",
)  # fmt: skip


def test_onnxruntime_reports_nothing_to_microsoft_unless_the_user_allows_it(onnx_export):
    """onnxruntime >= 1.29 sends usage events from Linux after a few seconds of a session's
    life (microsoft/onnxruntime PR 27379). Two real processes hold an ONNX session, each
    through a proxy that records every host it is asked for: ours asks for none; one whose
    user set ORT_DISABLE_TELEMETRY=0 shows that the proxy would have seen it."""
    from moto_aws import OutboundRecorder

    out, _ = onnx_export
    recorders = {"ours": OutboundRecorder(), "user allows it": OutboundRecorder()}
    try:
        processes = {}
        for who, recorder in recorders.items():
            env = {**enet_env(), **recorder.env()}
            env.pop("ORT_DISABLE_TELEMETRY", None)  # conftest's, for the test processes
            for name in _ORT_QUIET_WHERE:
                env.pop(name, None)
            if who == "user allows it":
                env["ORT_DISABLE_TELEMETRY"] = "0"
            processes[who] = subprocess.Popen(
                [sys.executable, "-c", _HOLD_ONNX_SESSION, str(out / "model.onnx"), "15"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        for process in processes.values():
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr[-2000:]
        time.sleep(0.5)
        assert recorders["ours"].seen == []
        allowed = recorders["user allows it"].seen
        assert allowed, "onnxruntime sent nothing even when allowed: revisit this test"
        assert all("microsoft.com" in host for host in allowed), allowed
    finally:
        for recorder in recorders.values():
            recorder.server.shutdown()
