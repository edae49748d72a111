"""`enet serve`: the endpoint's contract on this machine (workflows/serve/server.py).

The server runs in this process on 127.0.0.1 (port 0), around the untrained ENet's TFLite
export; `enet predict` and `enet invoke` run in-process too. The process itself (SIGINT,
exit codes, a port in use) is tested as a real process."""

import http.client
import importlib.util
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enet_testing import FIXTURES, REPO, enet_env, invoke

PHOTO = FIXTURES / "camvid-segnet-mini" / "test" / "0001TP_007590.png"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks/serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Running:
    """A served model in this process: its URL, its server, and a stop."""

    def __init__(self, model: Path, max_body: int = 6_000_000, copies: int = 1):
        from enet_cli.serving.runtimes import load_predictor
        from enet_cli.workflows.serve.server import ServeConfig, bind, serve_until

        self.lines = []
        cfg = ServeConfig(port=0, max_body=max_body, access_log=True)
        self.server = bind(cfg, load_predictor(model, None, copies), self.lines.append)
        host, port = self.server.server_address[:2]
        self.host, self.port, self.url = host, port, f"http://{host}:{port}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=serve_until, args=(self.server, self.stopping.is_set, 0.05)
        )
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()

    def post(self, body: bytes, content_type="image/png", accept="application/json", path=None):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        headers = {"Content-Type": content_type, "Accept": accept}
        connection.request("POST", path or "/invocations", body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.getheader("Content-Type"), reply.read()

    def raw(self, data: bytes, half_close: bool = True) -> bytes:
        """Bytes as sent on a socket (nothing normalised), and the whole reply."""
        with socket.create_connection((self.host, self.port), timeout=60) as sock:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def served(untrained_exports):
    running = Running(untrained_exports["tflite"])
    yield running
    running.stop()


def _status_and_error(reply: bytes):
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)["error"]


def test_invoke_against_serve_writes_predicts_pngs_byte_for_byte(
    served, untrained_exports, tmp_path
):
    model = untrained_exports["tflite"]
    predicted = invoke("predict", model, PHOTO, "--out", tmp_path / "predict")
    assert predicted.returncode == 0, predicted.stderr
    called = invoke("invoke", served.url, PHOTO, "--out", tmp_path / "invoke")
    assert called.returncode == 0, called.stderr
    for suffix in ("_classes.png", "_overlay.png"):
        name = PHOTO.stem + suffix
        assert (tmp_path / "invoke" / name).read_bytes() == (
            tmp_path / "predict" / name
        ).read_bytes()

    # The handler's other replies, as the container gives them.
    status, kind, body = served.post(PHOTO.read_bytes(), accept="image/png")
    assert (status, kind) == (200, "image/png")
    assert body == (tmp_path / "predict" / f"{PHOTO.stem}_classes.png").read_bytes()
    status, kind, body = served.post(PHOTO.read_bytes(), accept="application/x-npy")
    assert (status, kind) == (200, "application/x-npy")
    probabilities = np.load(io.BytesIO(body))
    assert probabilities.dtype == np.float16 and probabilities.shape == (96, 128, 11)
    # The model's own softmax at its size (to float16's precision: an untrained model's
    # scores are too close for an argmax to tell).
    from enet_cli.pixels.drawing import decode_rgb
    from enet_cli.serving.runtimes import load_predictor

    pixels = served.server.model.handler.preprocessor.pixels(decode_rgb(PHOTO.read_bytes()))
    logits = load_predictor(model).run(pixels[None])[0][0].astype(np.float64)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities.astype(np.float64), expected, atol=1e-3)
    assert any('"POST /invocations HTTP/1.1" 200' in line for line in served.lines)


def test_bad_requests_get_their_4xx_and_one_line(untrained_exports):
    running = Running(untrained_exports["tflite"], max_body=200_000)
    try:
        photo = PHOTO.read_bytes()
        assert len(photo) > 200_000
        head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"

        # truncated: the client closes after part of the body
        sent = running.raw(head + b"Content-Length: 50000\r\n\r\n" + photo[:1000])
        status, error = _status_and_error(sent)
        assert status == 400 and "ended after 1000 of its 50000 bytes" in error

        # too large: refused from its Content-Length, before reading it
        sent = running.raw(head + f"Content-Length: {len(photo)}\r\n\r\n".encode(), False)
        status, error = _status_and_error(sent)
        assert status == 413 and "over the limit of 200000" in error and "--max-body" in error

        # no Content-Length
        status, error = _status_and_error(running.raw(head + b"\r\n"))
        assert status == 411

        small = io.BytesIO()
        Image.open(PHOTO).resize((64, 48)).save(small, "PNG")
        cases = [
            (small.getvalue(), "text/plain", "application/json", 415, "Content-Type 'text/plain'"),
            (b"", "image/png", "application/json", 400, "the request body is empty"),
            (b"not a png", "image/png", "application/json", 400, "not a readable image"),
            (small.getvalue(), "image/png", "text/html", 406, "Accept 'text/html' is not served"),
        ]
        for body, kind, accept, code, said in cases:
            status, reply_kind, reply = running.post(body, kind, accept)
            assert (status, reply_kind) == (code, "application/json"), (kind, accept, reply)
            error = json.loads(reply)["error"]
            assert said in error and "\n" not in error

        # nothing from disk: only its own page, /ping and /invocations
        for path in (b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/page.html"):
            status, error = _status_and_error(running.raw(b"GET " + path + b" HTTP/1.1\r\n\r\n"))
            assert status == 404 and "is not served" in error
            assert b"root:" not in running.raw(b"GET " + path + b" HTTP/1.1\r\n\r\n")
        status, _, body = running.post(small.getvalue(), path="/invocations/../x")
        assert status == 404
        connection = http.client.HTTPConnection(running.host, running.port, timeout=30)
        connection.request("GET", "/ping")
        assert connection.getresponse().status == 200
    finally:
        running.stop()


def test_load_200_requests_8_at_a_time_none_failed_no_thread_left(untrained_exports):
    """What benchmarks/serve_load.py measures, held to: every request answered, and once
    the server stopped none of its threads left, though a client still held a connection
    open without sending anything."""
    before = {t.ident for t in threading.enumerate()}
    running = Running(untrained_exports["tflite"], copies=2)
    try:
        found = _load_benchmark().load(running.url, PHOTO.read_bytes(), requests=200, concurrency=8)
        idle = socket.create_connection((running.host, running.port), timeout=60)
        idle.sendall(b"POST /invocations HTTP/1.1\r\nContent-Length: 10\r\n\r\n12")
        time.sleep(0.2)  # its thread is reading the body
    finally:
        running.stop()
    assert found["failed"] == [] and found["requests"] == 200
    left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    left = [t for t in left if not t.name.startswith("enet-infer")]  # the copies' own pool
    assert left == [], [t.name for t in left]
    status, error = _status_and_error(idle.recv(65536))  # its request was answered
    idle.close()
    assert status == 400 and "ended after 2 of its 10 bytes (enet serve is stopping)" in error
    assert running.server.stats.by_status == {200: 200, 400: 1}


def test_the_serve_process_stops_on_ctrl_c_and_refuses_a_port_in_use(untrained_exports):
    import signal
    import subprocess
    import sys

    model = str(untrained_exports["tflite"])
    command = [sys.executable, "-m", "enet_cli", "serve", model, "--port", "0"]
    process = subprocess.Popen(
        command, env=enet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = None
        for line in process.stderr:
            if "serving on " in line:
                url = line.split("serving on ")[1].split()[0].rstrip("/")
                break
        assert url is not None, process.stderr.read()
        port = int(url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/ping")
        assert connection.getresponse().status == 200

        # The same port again: one line, exit 2.
        taken = subprocess.run(
            [*command[:-1], str(port)], env=enet_env(), capture_output=True, text=True, timeout=120
        )
        assert taken.returncode == 2
        assert taken.stderr.strip().splitlines() == [
            f"error: --port {port} is in use on 127.0.0.1; give another --port"
        ]
        assert "Traceback" not in taken.stderr
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
        rest = process.stderr.read()
    finally:
        process.kill()
    assert code == 0, rest
    assert "SIGINT received: finishing the requests in flight" in rest
    assert "stopped after 1 requests (1 x 200)" in rest
    assert "Traceback" not in rest


def test_a_non_loopback_host_is_said(untrained_exports, monkeypatch):
    """Binding elsewhere than 127.0.0.1 says who can call it (bound to 0.0.0.0, stopped
    before serving)."""
    from enet_cli.workflows.serve import server

    monkeypatch.setattr(server, "serve_until", lambda srv, stopped, poll_s=0.2: srv.server_close())
    result = invoke("serve", untrained_exports["tflite"], "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 0, result.stderr
    assert "listening on 0.0.0.0: anyone who can reach this machine can call the model" in (
        result.stderr
    )


def _canvas(page) -> np.ndarray:
    import base64

    url = page.evaluate("document.getElementById('overlay').toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture
def served_preset():
    """The shipped CamVid ENet, served: a page worth a screenshot."""
    from enet_cli.commands.options import model_path

    running = Running(model_path(Path("camvid")))
    yield running
    running.stop()


def test_the_page_draws_predicts_overlay_for_an_image_and_segments_a_video(
    served_preset, browser, tmp_path, screenshots
):
    from enet_testing import make_video

    served = served_preset
    predicted = invoke("predict", "camvid", PHOTO, "--out", tmp_path / "p")
    assert predicted.returncode == 0, predicted.stderr
    expected = np.asarray(Image.open(tmp_path / "p" / f"{PHOTO.stem}_overlay.png").convert("RGB"))
    height, width = Image.open(PHOTO).size[::-1]

    page = browser.new_page(viewport={"width": 1100, "height": 800})
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(served.url + "/")
    assert "camvid" in page.inner_text("#model")
    page.set_input_files("#file", str(PHOTO))
    page.wait_for_selector(f"body[data-done='{PHOTO.name}']", timeout=60_000)
    drawn = _canvas(page)
    # enet predict's overlay is the tinted photo above a legend strip: the page draws the
    # same pixels from the endpoint's JSON reply (the legend is HTML beside it).
    assert drawn.shape == (height, width, 3)
    assert np.array_equal(drawn, expected[:height])
    names = page.eval_on_selector_all("#legend li", "items => items.map(i => i.dataset.class)")
    shares = json.loads(served.post(PHOTO.read_bytes())[2])["shares"]
    assert names == sorted(shares, key=lambda name: -shares[name])
    page.screenshot(path=str(screenshots / "serve_page.png"), full_page=True)

    # A short video: frames grabbed by the browser, each sent as PNG.
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(10)]
    clip = make_video(tmp_path / "clip.webm", frames, 10, codec="libvpx")
    posts = len([u for u in requested if u.endswith("/invocations")])
    page.set_input_files("#file", str(clip))
    page.wait_for_selector("body[data-done='clip.webm']", timeout=120_000)
    segmented = int(page.get_attribute("body", "data-frames"))
    assert segmented == 5  # 1 s at the page's 5 frames/s
    assert len([u for u in requested if u.endswith("/invocations")]) == posts + segmented
    assert "frame 5 of 5" in page.inner_text("#status")
    assert _canvas(page).shape == (96, 128, 3)

    # A file that is not a picture: the handler's line on the page.
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not a picture")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("body[data-failed='notes.png']", timeout=30_000)
    assert "not a readable image" in page.inner_text("#status")
    # Nothing but the page and /invocations was asked for, all from the server (and the
    # video's own file, as a blob: URL of the page).
    local = (served.url + "/", "blob:" + served.url + "/")
    assert requested and all(url.startswith(local) for url in requested), requested
    page.close()


def test_a_failure_inside_the_model_is_that_requests_500_not_the_servers_end(served, capfd):
    def broken(rgb):
        raise RuntimeError("the runtime lost its tensors")

    served.server.model.segment = broken
    status, kind, body = served.post(PHOTO.read_bytes())
    assert (status, kind) == (500, "application/json")
    assert json.loads(body) == {"error": "RuntimeError: the runtime lost its tensors"}
    assert "Traceback" in capfd.readouterr().err  # a bug keeps its traceback, on the server
    connection = http.client.HTTPConnection(served.host, served.port, timeout=30)
    connection.request("GET", "/ping")
    assert connection.getresponse().status == 200


def test_invoke_of_a_url_where_nothing_listens_is_one_line(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke("invoke", f"http://127.0.0.1:{port}", PHOTO, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach http://127.0.0.1:{port}/invocations ([Errno 111] Connection "
        "refused); is enet serve running there?"
    ]
    assert not (tmp_path / "out").exists()


def test_boto3s_sagemaker_runtime_pointed_at_serve_works_unchanged(
    served, untrained_exports, tmp_path
):
    """InvokeEndpoint's REST call (POST /endpoints/NAME/invocations) answers as the
    runtime API does: the reply, or the handler's refusal as a ModelError."""
    import boto3

    runtime = boto3.client(
        "sagemaker-runtime", endpoint_url=served.url, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="x",
    )  # fmt: skip
    reply = runtime.invoke_endpoint(
        EndpointName="enet-local", ContentType="image/png", Accept="image/png",
        Body=PHOTO.read_bytes(),
    )  # fmt: skip
    assert reply["ContentType"] == "image/png"
    predicted = invoke("predict", untrained_exports["tflite"], PHOTO, "--out", tmp_path / "p")
    assert predicted.returncode == 0, predicted.stderr
    assert reply["Body"].read() == (tmp_path / "p" / f"{PHOTO.stem}_classes.png").read_bytes()
    with pytest.raises(runtime.exceptions.ModelError) as refused:
        runtime.invoke_endpoint(EndpointName="enet-local", ContentType="text/plain", Body=b"x")
    error = refused.value.response
    assert error["OriginalStatusCode"] == 415
    assert (
        "Content-Type 'text/plain' is not served" in json.loads(error["OriginalMessage"])["error"]
    )

    # enet invoke by an endpoint's name, its AWS calls sent here: the same PNGs.
    called = invoke(
        "invoke", "enet-local", PHOTO, "--out", tmp_path / "i", "--region", "us-east-1",
        env={"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": served.url, "AWS_ACCESS_KEY_ID": "x",
             "AWS_SECRET_ACCESS_KEY": "x"},
    )  # fmt: skip
    assert called.returncode == 0, called.stderr
    for name in (f"{PHOTO.stem}_classes.png", f"{PHOTO.stem}_overlay.png"):
        assert (tmp_path / "i" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()
