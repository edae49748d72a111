"""Load on `enet serve`: requests/s and p50/p99 latency of POST /invocations, 127.0.0.1 only.

    python benchmarks/serve_load.py MODEL [--requests 200] [--concurrency 8] \
        [--copies 1,2] [--write]

Starts `enet serve MODEL --port P --copies C` as a real process for each --copies value,
waits for GET /ping, sends --requests CamVid test images (360x480 PNG, Accept image/png),
--concurrency at a time, each on its own connection, and stops the server with SIGINT
(checking it exits 0). Prints a table; --write puts it in docs/results/serve_load.md
(the serve guide shows it).
tests/test_serve.py runs `load` against the server in its own process and asserts no
request failed and no thread was left behind.
"""

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIXTURES, machine, publish

IMAGE = FIXTURES / "camvid-segnet-mini" / "test" / "0001TP_007590.png"


def load(
    url: str,
    body: bytes,
    content_type: str = "image/png",
    requests: int = 200,
    concurrency: int = 8,
    accept: str = "image/png",
) -> Dict[str, object]:
    """`requests` POST /invocations at `url`, `concurrency` at a time: requests/s, latency
    percentiles (ms), and the failures (status or error, by request)."""
    where = urllib.parse.urlsplit(url)
    headers = {"Content-Type": content_type, "Accept": accept}

    def one(_: int) -> Tuple[str, float]:
        start = time.perf_counter()
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=300)
        try:
            connection.request("POST", "/invocations", body=body, headers=headers)
            reply = connection.getresponse()
            reply.read()
            outcome = "" if reply.status == 200 else f"HTTP {reply.status}"
        except OSError as err:
            outcome = f"{type(err).__name__}: {err}"
        finally:
            connection.close()
        return outcome, time.perf_counter() - start

    with ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        done = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    latencies = sorted(1000 * seconds for _, seconds in done)
    failed = [outcome for outcome, _ in done if outcome]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "requests_per_s": requests / wall,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "failed": failed,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serving(model: str, copies: int) -> Tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(
        [sys.executable, "-m", "enet_cli", "serve", model, "--port", str(port),
         "--copies", str(copies)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"enet serve exited: {process.stderr.read()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("enet serve did not answer /ping within a minute")


def in_process(model: str, body: bytes, requests: int) -> float:
    """Requests/s of the handler and model called directly, one at a time, no HTTP: what
    the server's own overhead is measured against."""
    from enet_cli.serving.runtimes import load_predictor
    from enet_cli.workflows.serve.server import Model

    served = Model(load_predictor(Path(model)))
    served.answer(body, "image/png", "image/png")  # warm-up
    start = time.perf_counter()
    for _ in range(requests):
        served.answer(body, "image/png", "image/png")
    return requests / (time.perf_counter() - start)


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--copies", default="1,2", help="Comma-separated --copies values.")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    at_start = machine()
    print(at_start)
    body = IMAGE.read_bytes()
    header = ["how", "--copies", "requests", "at a time", "requests/s", "p50 ms", "p99 ms",
              "failed"]  # fmt: skip
    rows, measured = [], {}
    for copies in (int(c) for c in args.copies.split(",")):
        process, url = _serving(args.model, copies)
        try:
            load(url, body, requests=8, concurrency=args.concurrency)  # warm-up
            found = load(url, body, requests=args.requests, concurrency=args.concurrency)
        finally:
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
        stderr = process.stderr.read()
        if code != 0:
            raise SystemExit(f"enet serve exited {code} on SIGINT: {stderr[-500:]}")
        measured[f"copies_{copies}"] = {**found, "failed": len(found["failed"])}
        rows.append([
            "enet serve over HTTP", copies, found["requests"], found["concurrency"],
            f"{found['requests_per_s']:.1f}", f"{found['p50_ms']:.0f}",
            f"{found['p99_ms']:.0f}", len(found["failed"]),
        ])  # fmt: skip
        print(" | ".join(map(str, rows[-1])), flush=True)
    direct = in_process(args.model, body, 50)
    measured["direct_requests_per_s"] = direct
    rows.append(["handler + model called directly, no HTTP", 1, 50, 1, f"{direct:.1f}",
                 "", "", ""])  # fmt: skip
    print(" | ".join(map(str, rows[-1])))
    if args.write:
        command = f"python benchmarks/serve_load.py {args.model} --write"
        note = (
            f"Each request a {IMAGE.name} 360x480 PNG, `Accept: image/png`, on its own "
            f"connection; the load from the same machine (127.0.0.1)."
        )
        print(f"wrote {publish('serve_load', command, header, rows, note, at_start, measured)}")


if __name__ == "__main__":
    main(sys.argv[1:])
