"""A real moto server (ThreadedMotoServer on 127.0.0.1) for the SageMaker commands' tests,
with moto's request recorder, and a proxy that catches any request meant for a real host.
Import the fixtures `outbound` and `aws` into a test module to use them."""

import base64
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import ClassVar, List

import pytest

from enet_cli.container.contract import ROOT_ENV
from enet_testing import enet_env, invoke

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/enet-training"
PREFIX = "s3://enet-test-bucket/jobs"


class OutboundRecorder:
    """An HTTP(S) proxy on 127.0.0.1 that forwards nothing and remembers where each request
    was going. With HTTP(S)_PROXY pointing at it and only loopback exempt, any request the
    SDK (or botocore) would send to a real host, telemetry included, lands here."""

    running: ClassVar[dict] = {}  # url -> recorder

    def __init__(self):
        import socketserver
        import threading

        self.seen: list = []
        recorder = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline().decode(errors="replace").split()
                if len(line) >= 2:
                    recorder.seen.append(line[1])  # CONNECT host:443, or GET http://host/...
                self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        OutboundRecorder.running[self.url] = self

    def env(self) -> dict:
        return {
            "HTTPS_PROXY": self.url,
            "HTTP_PROXY": self.url,
            "NO_PROXY": "127.0.0.1,localhost",
        }


class PriceList:
    """A stand-in for AWS's Price List Query API on 127.0.0.1 (moto has none), answering
    `GetProducts` as AWS documents it (API reference: GetProducts; the AWS CLI's example
    awscli/examples/pricing/get-products.rst): JSON 1.1 over POST, `X-Amz-Target:
    AWSPriceListService.GetProducts`, TERM_MATCH filters, and `PriceList` as a list of JSON
    strings, each a product with its attributes and `terms.OnDemand...pricePerUnit.USD`.
    It prices what a test puts in `prices` ((instanceName, regionCode) -> USD per hour:
    test data, not AWS's prices) for `platoinstancetype` Training, and remembers each
    request's filters."""

    PUBLISHED = "2026-11-30T00:00:00Z"

    def __init__(self):
        import http.server
        import threading

        self.prices: dict = {}
        self.requests: List[dict] = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                target = self.headers.get("X-Amz-Target", "")
                filters = {f["Field"]: f["Value"] for f in body.get("Filters", [])}
                stand_in.requests.append({"target": target, **body, "filters": filters})
                reply = {"FormatVersion": "aws_v1", "PriceList": stand_in.products(filters)}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def products(self, filters: dict) -> List[str]:
        key = (filters.get("instanceName"), filters.get("regionCode"))
        if (
            filters.get("productFamily") != "ML Instance"
            or filters.get("platoinstancetype") != "Training"
            or key not in self.prices
        ):
            return []
        sku = "TESTSKU" + str(abs(hash(key)) % 10**6)
        product = {
            "product": {
                "productFamily": "ML Instance",
                "attributes": {
                    "instanceName": key[0],
                    "regionCode": key[1],
                    "platoinstancetype": "Training",
                    "servicecode": "AmazonSageMaker",
                },
                "sku": sku,
            },
            "serviceCode": "AmazonSageMaker",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "pricePerUnit": {"USD": f"{self.prices[key]:.10f}"},
                            }
                        },
                        "sku": sku,
                    }
                }
            },
            "publicationDate": self.PUBLISHED,
        }
        return [json.dumps(product)]


@pytest.fixture(scope="module")
def price_list():
    stand_in = PriceList()
    yield stand_in
    stand_in.server.shutdown()


@pytest.fixture(scope="module")
def outbound():
    recorder = OutboundRecorder()
    yield recorder
    recorder.server.shutdown()


@pytest.fixture(scope="module")
def aws(tmp_path_factory, outbound, price_list):
    """A moto server and the environment a user's shell would have for it; any request
    that is not for the moto server (or the Price List stand-in, through botocore's
    per-service endpoint variable) is caught by `outbound`."""
    # moto's request recorder appends to MOTO_RECORDER_FILEPATH, default ./moto_recording
    # (moto/moto_api/_internal/recorder/models.py reads it when moto.moto_api is imported):
    # a fresh file per module, never the working tree, so a test reads only its own requests.
    recording = tmp_path_factory.mktemp("moto") / "recording"
    os.environ["MOTO_RECORDER_FILEPATH"] = str(recording)
    import boto3
    from moto.moto_api import recorder
    from moto.server import ThreadedMotoServer

    recorder._location = str(recording)  # moto imported earlier in this process: same file
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ENDPOINT_URL_PRICING": price_list.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "SAGEMAKER_ROLE": ROLE,
        "HOME": str(tmp_path_factory.mktemp("home")),  # no ~/.aws, no ~/.sagemaker config
        **outbound.env(),
    }
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    endpoint = env["AWS_ENDPOINT_URL"]
    names = ("s3", "sagemaker", "sagemaker-runtime", "logs")
    clients = {name: session.client(name, endpoint_url=endpoint) for name in names}
    clients["s3"].create_bucket(Bucket="enet-test-bucket")
    for action in ("reset-recording", "start-recording"):
        urllib.request.urlopen(
            urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method="POST")
        )
    yield env, clients
    server.stop()
    os.environ.pop("MOTO_RECORDER_FILEPATH", None)


def recorded(env, action: str, **match) -> List[dict]:
    """The `action` requests (e.g. "CreateTrainingJob") exactly as the client sent them,
    whose fields equal `match` (moto's request recorder; moto's own describe calls do not
    echo every field back)."""
    url = f"{env['AWS_ENDPOINT_URL']}/moto-api/recorder/download-recording"
    found = []
    for line in urllib.request.urlopen(url).read().decode().splitlines():
        entry = json.loads(line)
        if entry["headers"].get("X-Amz-Target", "").split(".")[-1] != action:
            continue
        body = json.loads(base64.b64decode(entry["body"]) or b"{}")
        if all(body.get(k) == v for k, v in match.items()):
            found.append(body)
    return found


MODULES_PROBE = Path(__file__).with_name("modules_probe.py")


def run_enet_aws(env, *args, timeout=300, outbound_allowed=False, modules_to=None):
    """`enet ARGS` with `env` (the aws fixture's, or a broken one), in this process through
    `main()` (the SDK is imported once per test process, not once per call); asserts that
    nothing but the moto server was contacted. With `modules_to` (a path) or
    `outbound_allowed` (what the SDK sends on its own, telemetry, is the point) it is a real
    process: the top-level modules it imported are written to `modules_to`
    (modules_probe.py), and the SDK's own start-up is a fresh one."""
    unset = ("AWS_PROFILE", "AWS_SESSION_TOKEN", ROOT_ENV, "SM_HP_MP_PARAMETERS")
    recorder = OutboundRecorder.running.get(env.get("HTTPS_PROXY", ""))
    seen = recorder.seen if recorder else []
    before = len(seen)
    if modules_to is None and not outbound_allowed:
        result = invoke(*args, env=env, unset=unset)
    else:
        full_env = {**enet_env(), **env}
        for name in unset:
            full_env.pop(name, None)
        start = ["-m", "enet_cli"] if modules_to is None else [str(MODULES_PROBE), str(modules_to)]
        result = subprocess.run(
            [sys.executable, *start, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
    # Nothing but the moto server on 127.0.0.1 was contacted (no telemetry, no real AWS).
    if not outbound_allowed:
        assert seen[before:] == [], seen[before:]
    return result
