"""Stand-ins for what cannot run here: AWS's TensorFlow Serving container and TF Serving.

`serve(code_dir, saved_model, requests)` plays both sides of one invocation per request:

- the container's python_service.py (aws/sagemaker-tensorflow-serving-container,
  docker/build_artifacts/sagemaker/python_service.py, `_import_handlers`,
  `_make_handler`, `_handle_invocation_post`; tfs_utils.py `Context`): the packed
  code/inference.py imported with importlib from its file, in a fresh Python (the
  container's own has no TensorFlow and no enet-cli), `input_handler(stream, context)`,
  the body POSTed to TF Serving, `output_handler(response, context)`, and an exception
  turned into HTTP 500 with `{"error": str(exception)}`;
- TensorFlow Serving's REST predict API (https://www.tensorflow.org/tfx/serving/api_rest,
  "Request format" / "Response format", row format): `{"signature_name": S, "instances":
  [...]}` in, each instance an object of named inputs (or a bare value when the signature
  has one input), and `{"predictions": [...]}` out, each a bare value when the signature
  has one output; an unknown signature is HTTP 400 with `{"error": ...}`. Here the
  SavedModel's signature runs in TensorFlow in this process.
"""

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

import numpy as np

CONTAINER_SIDE = r"""
import base64, collections, importlib.util, io, json, sys

Context = collections.namedtuple(
    "Context",
    "model_name, model_version, method, rest_uri, grpc_port, channel, "
    "custom_attributes, request_content_type, accept_header, content_length",
)

class Response:  # the part of requests.Response the handlers read
    def __init__(self, status, body):
        self.status_code, self.content = status, body

spec = importlib.util.spec_from_file_location("inference", sys.argv[1])
inference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inference)
phase, cases = sys.argv[2], json.load(sys.stdin)
out = []
for case in cases:
    context = Context("model", None, None, "http://localhost:8501/v1/models/model:predict",
                      9000, None, None, case["content_type"], case["accept"], None)
    try:
        if phase == "in":
            body = base64.b64decode(case["body"])
            request = inference.input_handler(io.BytesIO(body), context)
            out.append({"status": 200, "request": request})
        else:
            response = Response(case["tfs_status"], base64.b64decode(case["tfs_body"]))
            body, kind = inference.output_handler(response, context)
            out.append({"status": 200, "body": base64.b64encode(body).decode(), "type": kind})
    except Exception as e:
        error = json.dumps({"error": str(e)}).encode()  # python_service.py's 500 reply
        out.append({"status": 500, "body": base64.b64encode(error).decode(),
                    "type": "application/json"})
json.dump({"out": out, "tensorflow": "tensorflow" in sys.modules,
           "enet_cli": getattr(sys.modules.get("enet_cli"), "__file__", None)}, sys.stdout)
"""


class Request(NamedTuple):
    body: bytes
    content_type: str
    accept: str


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str


def _container(inference: Path, phase: str, cases: List[dict]) -> dict:
    result = subprocess.run(
        [sys.executable, "-I", "-c", CONTAINER_SIDE, str(inference), phase],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=inference.parent,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert not found["tensorflow"], "the handler imported TensorFlow (the container has none)"
    if found["enet_cli"]:  # the packed modules, not an installed enet-cli
        assert inference.parent in Path(found["enet_cli"]).parents, found["enet_cli"]
    return found


def tf_serving_predict(loaded, body: str):
    """(status, response bytes) of TF Serving's REST predict for `body` (row format)."""
    import tensorflow as tf

    request = json.loads(body)
    name = request.get("signature_name", "serving_default")
    if name not in loaded.signatures:
        return 400, json.dumps({"error": f'Serving signature name: "{name}" not found'}).encode()
    signature = loaded.signatures[name]
    specs = signature.structured_input_signature[1]
    instances = request["instances"]
    if len(specs) == 1:
        (key,) = specs
        columns = {key: [i[key] if isinstance(i, dict) else i for i in instances]}
    else:
        columns = {key: [i[key] for i in instances] for key in specs}
    inputs = {key: tf.constant(np.array(v), specs[key].dtype) for key, v in columns.items()}
    outputs = {k: v.numpy() for k, v in signature(**inputs).items()}
    if len(outputs) == 1:
        (values,) = outputs.values()
        predictions = [v.tolist() for v in values]
    else:
        predictions = [
            {k: v[i].tolist() for k, v in outputs.items()} for i in range(len(instances))
        ]
    return 200, json.dumps({"predictions": predictions}).encode()


def serve(inference: Path, saved_model: Path, requests: List[Request]) -> List[Reply]:
    """Each request through the packed handler and the SavedModel, as the endpoint would."""
    import tensorflow as tf

    cases = [
        {
            "body": base64.b64encode(r.body).decode(),
            "content_type": r.content_type,
            "accept": r.accept,
        }
        for r in requests
    ]
    first = _container(inference, "in", cases)["out"]
    loaded = tf.saved_model.load(str(saved_model))
    replies: List[Reply] = [None] * len(requests)  # type: ignore[list-item]
    second = []
    for index, (case, step) in enumerate(zip(cases, first)):
        if step["status"] != 200:
            replies[index] = Reply(step["status"], base64.b64decode(step["body"]), step["type"])
            continue
        status, body = tf_serving_predict(loaded, step["request"])
        case.update(tfs_status=status, tfs_body=base64.b64encode(body).decode(), index=index)
        second.append(case)
    for case, step in zip(second, _container(inference, "out", second)["out"]):
        replies[case["index"]] = Reply(step["status"], base64.b64decode(step["body"]), step["type"])
    return replies


class Endpoint:
    """A SageMaker endpoint for `enet invoke`: an HTTP server on 127.0.0.1 that answers the
    sagemaker-runtime InvokeEndpoint REST call (POST /endpoints/NAME/invocations with the
    body, Content-Type and Accept; the reply's body and Content-Type; a model's error as
    HTTP 424 ModelError with OriginalStatusCode/OriginalMessage, as the API reference's
    "Errors" section gives it) by running `serve()` on the packed model. Point botocore at
    it with AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME. moto cannot stand in here: it decodes
    every request body as UTF-8, and an image is not."""

    def __init__(self, tree: Path):
        import http.server
        import threading

        self.calls: list = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = Request(body, self.headers["Content-Type"], self.headers["Accept"])
                endpoint.calls.append((self.path, request))
                (reply,) = serve(tree / "code" / "inference.py", tree / "1", [request])
                if reply.status == 200:
                    self._send(200, reply.body, reply.content_type, {})
                    return
                error = {
                    "ErrorCode": "CLIENT_ERROR_FROM_MODEL",
                    "OriginalStatusCode": reply.status,
                    "OriginalMessage": reply.body.decode(),
                    "Message": f"Received server error ({reply.status}) from primary with "
                    f'message "{reply.body.decode()}".',
                }
                headers = {"x-amzn-ErrorType": "ModelError"}
                self._send(424, json.dumps(error).encode(), "application/json", headers)

            def _send(self, status, body, kind, headers):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
