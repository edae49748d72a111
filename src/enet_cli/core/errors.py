"""User-facing errors: the core raises them, `cli.py` prints each as one line with an exit code.

Anything that is not an `EnetError` is a bug and keeps its traceback.
"""


class EnetError(Exception):
    """A mistake the user can fix; the message says what, where, and what to do."""

    exit_code = 1


class ConfigError(EnetError):
    exit_code = 2


class OutputError(EnetError):
    """An output that must not or cannot be written (an input, someone else's files, a
    directory in use by another enet process, no permission)."""

    exit_code = 2


class DataError(EnetError):
    exit_code = 3


class AwsError(EnetError):
    """AWS refused or failed a request (a job, an endpoint, an upload), said in one line."""

    exit_code = 4


class TrainingError(EnetError):
    exit_code = 5


class PeerLost(TrainingError):
    """A worker of a multi-worker run lost its peers (one of them died). Under
    `--local-workers` the launcher names the worker that died, so the others say nothing."""


class EnvironmentProblem(EnetError):
    """The installed software cannot do what was asked (e.g. Keras 3 without tf-keras)."""

    exit_code = 6


class Interrupted(EnetError):
    """SIGINT or SIGTERM stopped the work; the message says what was kept or cleaned up."""

    exit_code = 130
