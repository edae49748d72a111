"""The `enet` command: the app, its global options, and `main()`, which turns every user
mistake into one red line on stderr and an exit code (core/errors.py). What each command
does lives in commands/, one module per side, each registering its commands here.

TensorFlow is imported inside the commands that need it, so `enet --help` stays fast.
Anything that is not an `EnetError` or a usage error is a bug and keeps its traceback.
"""

import contextlib
import sys
from typing import List, Optional

import typer
from rich.markup import escape

from enet_cli import __version__
from enet_cli.commands import cloud, data, report, serve, server, train
from enet_cli.commands.options import FLAG_METAVAR
from enet_cli.core.errors import EnetError, PeerLost
from enet_cli.core.ui import LOG_LEVEL_ENV, Interrupts, stderr, stdout

app = typer.Typer(
    name="enet",
    help="Train, evaluate and ship ENet semantic segmentation on CamVid, locally or on SageMaker.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"enet-cli {__version__} (Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="Show the version.",
        metavar=FLAG_METAVAR,
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Show TensorFlow's own log lines too (start-up included); as ENET_LOG_LEVEL=debug.",
        metavar=FLAG_METAVAR,
    ),
) -> None:
    """Train, evaluate and ship ENet semantic segmentation on CamVid, locally or on SageMaker."""
    if verbose:  # read when TensorFlow is first imported, which no command has done yet
        import os

        os.environ[LOG_LEVEL_ENV] = "debug"


for side in (data, train, serve, report, server, cloud):  # --help lists the commands in this order
    side.register(app)


# Typer >= 0.2x vendors click; its exception classes are reachable through public names.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _fail(message: str, code: int) -> "None":
    import signal

    with contextlib.suppress(ValueError):  # only the main thread may; elsewhere irrelevant
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # more Ctrl-C while exiting: no traceback
    stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def main(argv: Optional[List[str]] = None) -> None:
    """Run `enet`: one line on stderr and an exit code for every user mistake, never a traceback."""
    interrupts = Interrupts()  # SIGTERM as Ctrl-C: every command's clean-ups run
    try:
        with interrupts.raising():  # train and predict install their own handlers inside
            result = app(args=argv, prog_name="enet", standalone_mode=False)
    except PeerLost as err:
        from enet_cli.train.launcher import is_worker

        if is_worker():  # the launcher reports which worker died and where its log is
            sys.exit(err.exit_code)
        _fail(str(err), err.exit_code)
    except EnetError as err:
        _fail(str(err), err.exit_code)
    except _ClickException as err:
        if type(err).__name__ == "NoArgsIsHelpError":
            stderr.print(err.format_message())
            sys.exit(err.exit_code)
        hint = ""
        ctx = getattr(err, "ctx", None)
        if ctx is not None:
            hint = f" (see {ctx.command_path} --help)"
        message = err.format_message().strip().splitlines()[0].replace("Value error, ", "")
        _fail(message + hint, err.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    if interrupts.signal_name:  # Typer turns the KeyboardInterrupt into exit code 130
        _fail(
            f"stopped by {interrupts.signal_name}; what it was writing was removed, nothing "
            f"half-written is left: run the command again",
            130,
        )
    sys.exit(result if isinstance(result, int) else 0)
