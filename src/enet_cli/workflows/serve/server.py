"""`enet serve`: the SageMaker endpoint's contract on this machine, before paying for one.

It answers what AWS's TensorFlow Serving container answers (the inference container
contract, https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html:
`GET /ping` 200 when ready, `POST /invocations` with the request's Content-Type and
Accept), through the same handler `enet deploy` packs (container/handler.py: decoding,
Accept rules, replies and their one-line refusals), with the model run in this process
where the container runs TensorFlow Serving. A refusal's body is the container's
`{"error": line}`; its status is the 4xx that says why (the container answers every
handler exception with 500). `POST /endpoints/NAME/invocations` answers as the
sagemaker-runtime API does (its refusals as ModelError), so boto3 pointed here works
unchanged. `GET /` is a page to drop images and videos on (page.html).

The standard library's threading HTTP server: a thread per connection, the model loaded
once and entered by at most `copies` requests at a time (benchmarks/serve_load.py
measures what that holds). Nothing is served from disk but the page, which is read from
the package once, at start.
"""

import contextlib
import html
import json
import re
import socket
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Set, Tuple

import numpy as np

from enet_cli.container.handler import Handler, RequestError
from enet_cli.pixels.drawing import COLOUR_WEIGHT
from enet_cli.serving.predict import segment
from enet_cli.serving.runtimes import Predictor

# SageMaker real-time endpoints refuse request bodies over 6 MB (Amazon SageMaker endpoints
# and quotas: "Maximum payload size for real-time inference").
DEFAULT_MAX_BODY = 6 * 1000 * 1000
LOOPBACK = "127.0.0.1"
PAGE = "page.html"
BODY_TIMEOUT_S = 20.0  # a client that stops sending in the middle of a body
JSON = "application/json"
# The sagemaker-runtime InvokeEndpoint REST call (API reference, InvokeEndpoint: "POST
# /endpoints/EndpointName/invocations"), so boto3 or the SDK's Predictor pointed here with
# endpoint_url works unchanged; the endpoint's name is not looked at.
RUNTIME_API = re.compile(r"^/endpoints/[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}/invocations$")


class ServeConfig(NamedTuple):
    host: str = LOOPBACK
    port: int = 8080
    max_body: int = DEFAULT_MAX_BODY
    access_log: bool = False


def _page(predictor: Predictor) -> bytes:
    """page.html with the model's name and the overlay's colour weight (drawing.tint's,
    the one rule both draw with) filled in."""
    text = Path(__file__).with_name(PAGE).read_text(encoding="utf-8")
    text = text.replace("{{MODEL}}", html.escape(predictor.source))
    text = text.replace("{{COLOUR_WEIGHT}}", str(COLOUR_WEIGHT))
    return text.encode("utf-8")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class Model:
    """The loaded model as the handler's two signatures, entered by at most `parallel`
    requests at once (a TFLite interpreter is not thread-safe; RuntimeCopies hands each
    call its own copy)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.handler = Handler(predictor.meta.model_dump(mode="json"))
        self.gate = threading.BoundedSemaphore(max(1, predictor.parallel))

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        with self.gate:
            return segment(self.predictor, rgb)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        with self.gate:
            logits = self.predictor.run(pixels[None], logits=True)[0][0]
        return _softmax(logits.astype(np.float32))

    def answer(self, body: bytes, content_type: str, accept: str) -> Tuple[bytes, str]:
        return self.handler.answer(body, content_type, accept, self.segment, self.probabilities)


class Stats:
    """Requests answered, by status (for the line `enet serve` ends with)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_status: Dict[int, int] = {}

    def add(self, status: int) -> None:
        with self.lock:
            self.by_status[status] = self.by_status.get(status, 0) + 1

    def describe(self) -> str:
        total = sum(self.by_status.values())
        parts = ", ".join(f"{n} x {s}" for s, n in sorted(self.by_status.items()))
        return f"{total} requests" + (f" ({parts})" if parts else "")


class EnetServer(ThreadingHTTPServer):
    """Joins every request's thread on close (no daemon threads left behind), after
    ending the connections that are still open: a client that connected and sends
    nothing would otherwise hold the stop for the socket's whole timeout."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, cfg: ServeConfig, model: Model, log: Callable[[str], None]):
        self.cfg, self.model, self.log = cfg, model, log
        self.page = _page(model.predictor)
        self.stats = Stats()
        self.open: Set[socket.socket] = set()
        self.stopping = False
        self.open_lock = threading.Lock()
        super().__init__((cfg.host, cfg.port), _Request)

    def process_request_thread(self, request, client_address) -> None:
        with self.open_lock:
            self.open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.open_lock:
                self.open.discard(request)

    def end_open_connections(self) -> None:
        """Each connection still open reads end-of-file: its thread answers (a request
        cut short gets its 400) and ends."""
        self.stopping = True
        with self.open_lock:
            for request in self.open:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RD)


class _Request(BaseHTTPRequestHandler):
    server: EnetServer
    # HTTP/1.0: a connection per request, so no idle keep-alive connection holds a thread
    # (and the stop) after the last reply.
    protocol_version = "HTTP/1.0"
    timeout = BODY_TIMEOUT_S
    server_version = "enet-serve"
    sys_version = ""
    runtime_api = False  # this request came as sagemaker-runtime's InvokeEndpoint

    # ---- routes ------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/ping":
            self._send(HTTPStatus.OK, b"", "text/plain")
        elif path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        else:
            self._refuse(HTTPStatus.NOT_FOUND, f"{path} is not served; POST /invocations")

    def do_HEAD(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "GET /ping or POST /invocations")

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        self.runtime_api = RUNTIME_API.match(path) is not None
        if path != "/invocations" and not self.runtime_api:
            self._close_after_reply()
            self._refuse(HTTPStatus.NOT_FOUND, f"{path} is not served; POST /invocations")
            return
        body = self._body()
        if body is None:
            return
        try:
            reply, kind = self.server.model.answer(
                body, self.headers.get("Content-Type", ""), self.headers.get("Accept", "")
            )
        except RequestError as err:
            self._refuse(err.status, str(err))
            return
        except Exception as err:  # a bug: this request fails as in the container, not the server
            traceback.print_exc()
            self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}")
            return
        self._send(HTTPStatus.OK, reply, kind)

    def do_PUT(self) -> None:
        self._close_after_reply()
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "GET /ping or POST /invocations")

    do_DELETE = do_PATCH = do_PUT

    # ---- bodies ------------------------------------------------------------------------
    def _body(self) -> Optional[bytes]:
        """The request's body, or None after refusing it (the connection then closes: what
        is left of the body is never read)."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
            return None
        limit = self.server.cfg.max_body
        if length > limit:
            self.close_connection = True
            self._refuse(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is {length} bytes, over the limit of {limit} (enet serve "
                f"--max-body); send a smaller image",
            )
            return None
        chunks, got, timed_out = [], 0, False
        try:
            while got < length:
                chunk = self.rfile.read1(min(1 << 16, length - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except OSError:  # the socket's timeout: the client stopped sending
            timed_out = True
        body = b"".join(chunks)
        if len(body) < length:
            self.close_connection = True
            why = (
                "enet serve is stopping"
                if self.server.stopping
                else "the client stopped sending"
                if timed_out
                else "the connection closed"
            )
            self._refuse(
                HTTPStatus.BAD_REQUEST,
                f"the body ended after {len(body)} of its {length} bytes ({why}); send it whole",
            )
            return None
        return body

    def _close_after_reply(self) -> None:
        """A refused request's body is never read, so it must not be taken for the next
        request on the connection."""
        self.close_connection = True

    # ---- replies -----------------------------------------------------------------------
    def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()  # the container's error reply
        if self.runtime_api:  # as sagemaker-runtime wraps it: a ModelError
            self._model_error(int(status), body)
            return
        self._send(status, body, JSON)

    def _model_error(self, status: int, said: bytes) -> None:
        """InvokeEndpoint's answer when the container refused (API reference, Errors:
        ModelError, HTTP 424, with the container's status and body)."""
        text = said.decode()
        error = {
            "ErrorCode": "CLIENT_ERROR_FROM_MODEL",
            "OriginalStatusCode": status,
            "OriginalMessage": text,
            "Message": f'Received client error ({status}) from primary with message "{text}".',
        }
        self.server.stats.add(status)  # counted as what the handler answered
        self._send(HTTPStatus.FAILED_DEPENDENCY, json.dumps(error).encode(), JSON,
                   {"x-amzn-ErrorType": "ModelError"}, count=False)  # fmt: skip

    def _send(self, status: int, body: bytes, kind: str, headers=None, count: bool = True) -> None:
        if count:
            self.server.stats.add(int(status))
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code="-", size="-") -> None:
        if self.server.cfg.access_log:
            self.server.log(f'{self.address_string()} "{self.requestline}" {code}')

    def log_message(self, format: str, *args) -> None:
        """http.server's own lines (a malformed request line, a timeout): access log only."""
        if self.server.cfg.access_log:
            self.server.log(format % args)


def bind(cfg: ServeConfig, predictor: Predictor, log: Callable[[str], None]) -> EnetServer:
    """The server, bound (port 0: a free one) and not yet serving."""
    return EnetServer(cfg, Model(predictor), log)


def serve_until(server: EnetServer, stopped: Callable[[], bool], poll_s: float = 0.2) -> None:
    """Serve in a thread until `stopped()`, then stop taking connections, let the requests
    in flight finish and join their threads."""
    thread = threading.Thread(target=server.serve_forever, name="enet-serve", daemon=True)
    thread.start()
    try:
        while not stopped():
            time.sleep(poll_s)
    finally:
        server.shutdown()  # no new connections
        thread.join()
        server.end_open_connections()
        server.server_close()  # joins the requests' threads
