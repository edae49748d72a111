"""`enet serve`: the endpoint `enet deploy` would start, on this machine (workflows/serve/)."""

import errno
from pathlib import Path
from typing import Optional

import typer

from enet_cli.commands.options import flag, model_path
from enet_cli.core import ui
from enet_cli.core.errors import ConfigError
from enet_cli.core.formats import InferenceRuntime
from enet_cli.workflows.serve.server import DEFAULT_MAX_BODY, LOOPBACK, ServeConfig


def serve(
    model: Path = typer.Argument(
        ...,
        help="Run directory, SavedModel, checkpoint directory, TFLite or ONNX export, or a "
        "preset's name (enet models).",
    ),
    host: str = typer.Option(
        LOOPBACK, "--host", help="Address to listen on; 0.0.0.0 lets other machines call it."
    ),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0: any free one)."),
    max_body: int = typer.Option(
        DEFAULT_MAX_BODY,
        "--max-body",
        min=1,
        help="Largest request body in bytes (default: a SageMaker real-time endpoint's 6 MB).",
    ),
    runtime: Optional[InferenceRuntime] = typer.Option(
        None, "--runtime", help="Run the model in this runtime (default: the fastest it has)."
    ),
    copies: int = typer.Option(
        1,
        "--copies",
        min=1,
        help="TFLite/ONNX: copies of the runtime, each on a share of the cores; as many "
        "requests run at once.",
    ),
    access_log: bool = flag(False, "--access-log", help="Print a line per request on stderr."),
) -> None:
    """Serve a model behind the SageMaker endpoint's contract (GET /ping, POST
    /invocations), with a page at / to drop images and videos on.

    The handler is the one enet deploy packs: same content types, Accept rules and
    replies; enet invoke http://HOST:PORT photo.png calls it as it calls an endpoint.
    Ctrl-C stops it after the requests in flight.

    Example: enet serve camvid, then open http://127.0.0.1:8080/
    """
    from enet_cli.serving.runtimes import load_predictor
    from enet_cli.workflows.serve.server import bind, serve_until

    cfg = ServeConfig(host=host, port=port, max_body=max_body, access_log=access_log)
    predictor = load_predictor(model_path(model), runtime, copies)
    try:
        server = bind(cfg, predictor, ui.info)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port} is in use on {host}; give another --port") from None
        why = err.strerror or err
        raise ConfigError(f"cannot listen on {host}:{port} ({why}); check --host") from None
    bound_host, bound_port = server.server_address[:2]
    url = f"http://{bound_host}:{bound_port}"
    ui.info(f"model: {predictor.source} (runtime {predictor.runtime.value})")
    if host != LOOPBACK:
        ui.warn(f"listening on {host}: anyone who can reach this machine can call the model")
    ui.info(f"serving on {url}/ (POST /invocations, GET /ping); Ctrl-C stops")
    with ui.StopRequest("finishing the requests in flight, then stopping").installed() as stop:
        serve_until(server, lambda: stop.requested)
    ui.info(f"stopped after {server.stats.describe()}")


def register(app: typer.Typer) -> None:
    app.command()(serve)
