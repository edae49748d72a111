"""The endpoint's handler contract, without TF Serving: the model.tar.gz `enet deploy` packs,
its code/inference.py run as AWS's TensorFlow Serving container runs it (tf_serving.py), on
real CamVid photos; its replies checked against `enet predict` on the same photos."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tf_serving import Request, serve

from enet_cli.cloud.package import extract_model, pack_model
from enet_testing import FIXTURES, invoke

PHOTOS = sorted((FIXTURES / "camvid-segnet-mini" / "val").glob("*.png"))[:2]


@pytest.fixture(scope="module")
def packed(trained_run, tmp_path_factory):
    """(model.tar.gz, its tree unpacked) for the trained run."""
    root = tmp_path_factory.mktemp("packed")
    tarball = pack_model(trained_run, root / "model.tar.gz")
    return tarball, extract_model(tarball, root / "tree")


@pytest.fixture(scope="module")
def predicted(trained_run, tmp_path_factory):
    """`enet predict`'s class maps for PHOTOS (as the user would run it)."""

    out = tmp_path_factory.mktemp("predicted")
    jpeg = out / "photo.jpg"  # a JPEG request is predict on the same JPEG file
    Image.open(PHOTOS[0]).convert("RGB").save(jpeg, format="JPEG", quality=90)
    result = invoke("predict", str(trained_run), *map(str, PHOTOS), str(jpeg), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_the_tarball_is_in_the_containers_layout_and_anonymous(packed):
    tarball, tree = packed
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    names = {m.name for m in members}
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {
        (0, 0, "root", "root", 0)
    }
    for name in (
        "1/saved_model.pb", "1/enet.json", "enet.json", "code/inference.py",
        "code/requirements.txt", "code/enet.json", "code/enet_cli/container/handler.py",
        "code/enet_cli/pixels/preprocessor.py", "code/enet_cli/pixels/drawing.py",
    ):  # fmt: skip
        assert name in names, name
    assert not any(n.startswith(("/", "..")) or "/../" in n for n in names)
    requirements = (tree / "code" / "requirements.txt").read_text().split()
    assert {r.split(">=")[0] for r in requirements} == {"numpy", "pillow"}


def test_each_content_type_in_and_reply_out_matches_predict(packed, predicted):
    _, tree = packed
    photo = PHOTOS[0]
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    npy = io.BytesIO()
    np.save(npy, rgb)
    requests = [
        Request(photo.read_bytes(), "image/png", "image/png"),
        Request(photo.read_bytes(), "image/png", "application/json"),
        Request(npy.getvalue(), "application/x-npy", "image/png"),
        Request((predicted / "photo.jpg").read_bytes(), "image/jpeg", "image/png"),
        Request(photo.read_bytes(), "image/png", "application/x-npy"),
        Request(PHOTOS[1].read_bytes(), "application/x-image", "*/*"),
    ]
    png, as_json, from_npy, from_jpeg, probabilities, batch = serve(
        tree / "code" / "inference.py", tree / "1", requests
    )
    expected = (predicted / f"{photo.stem}_classes.png").read_bytes()
    assert (png.status, png.content_type) == (200, "image/png")
    assert png.body == expected, "the endpoint's class map differs from enet predict's"
    assert from_npy.body == expected, "an x-npy request differs from the same PNG's"
    classes = np.asarray(Image.open(io.BytesIO(expected)))
    assert classes.shape == rgb.shape[:2]

    # JSON: the same map, class names, shares that add up to 1 and match the map
    body = json.loads(as_json.body)
    assert as_json.content_type == "application/json"
    np.testing.assert_array_equal(np.array(body["classes"]), classes)
    assert (body["height"], body["width"]) == rgb.shape[:2]
    meta = json.loads((tree / "enet.json").read_text())
    assert body["class_names"] == meta["class_names"]
    counts = np.bincount(classes.ravel(), minlength=len(meta["class_names"]))
    for index, name in enumerate(meta["class_names"]):
        assert body["shares"].get(name, 0.0) == pytest.approx(counts[index] / classes.size)
    assert sum(body["shares"].values()) == pytest.approx(1.0)

    assert from_jpeg.body == (predicted / "photo_classes.png").read_bytes()

    # probabilities at the model's size, a distribution per pixel, argmax = the model's map
    probs = np.load(io.BytesIO(probabilities.body))
    assert probs.dtype == np.float16
    assert probs.shape == (*meta["image_size"], len(meta["class_names"]))
    np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=1e-2)

    # a batch-transform style request (x-image, */*) is JSON for the second photo
    second = json.loads(batch.body)
    expected_second = np.asarray(Image.open(predicted / f"{PHOTOS[1].stem}_classes.png"))
    np.testing.assert_array_equal(np.array(second["classes"]), expected_second)


@pytest.mark.parametrize(
    "body, content_type, accept, message",
    [
        (b"\x89PNG\r\n\x1a\n broken", "image/png", "image/png", r"image/png body is not a"),
        (b"", "image/png", "image/png", r"body is empty"),
        (b"{}", "application/json", "image/png", r"Content-Type 'application/json' is not served"),
        (b"png", "image/png", "text/csv", r"Accept 'text/csv' is not served"),
    ],
)  # fmt: skip
def test_a_bad_request_is_a_one_line_error_not_a_stack_trace(
    packed, body, content_type, accept, message
):
    import re

    _, tree = packed
    (reply,) = serve(
        tree / "code" / "inference.py", tree / "1", [Request(body, content_type, accept)]
    )
    assert reply.status == 500  # what the container makes of any handler exception
    error = json.loads(reply.body)["error"]
    assert re.search(message, error), error
    assert "\n" not in error and "Traceback" not in error
    assert not re.search(r"0x[0-9a-f]{6,}|object at", error), error  # no object addresses


def test_a_wrong_npy_array_is_refused_with_its_shape(packed):
    _, tree = packed
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 4), np.float32))
    (reply,) = serve(
        tree / "code" / "inference.py",
        tree / "1",
        [Request(buffer.getvalue(), "application/x-npy", "image/png")],
    )
    assert reply.status == 500
    assert "uint8 height x width x 3" in json.loads(reply.body)["error"]
    assert "float32 (4, 4)" in json.loads(reply.body)["error"]


def test_an_archive_reaching_outside_is_not_unpacked(tmp_path):
    from enet_cli.core.errors import DataError

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"outside the model"):
        extract_model(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as tar:
        info = tarfile.TarInfo("1/variables")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(info)
    with pytest.raises(DataError, match=r"link"):
        extract_model(link, tmp_path / "out2")
    assert Path(tmp_path / "out2").exists() and not list((tmp_path / "out2").rglob("*"))
