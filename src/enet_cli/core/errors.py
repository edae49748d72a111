"""User-facing errors: the core raises them, `cli.py` prints each as one line with an exit code.

Anything that is not an `EnetError` is a bug and keeps its traceback.
"""

import errno
import re

# TensorFlow wraps an op's error in the name of the graph function that ran it:
# "{{function_node __wrapped__SaveV2_dtypes_1079_device_/job:localhost/...}} <message>
# [Op:SaveV2] name: ". A user needs the message.
_TF_WRAPPING = re.compile(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\]|\s+name:\s*\S*\s*$")
NO_SPACE = "no space left on device"


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


def disk_full(err: BaseException) -> bool:
    """Did `err` come from a full disk? OSError's errno, or the text TensorFlow, PyAV and
    protobuf carry it in (their exceptions do not keep the errno)."""
    if getattr(err, "errno", None) == errno.ENOSPC:
        return True
    return "no space left on device" in str(getattr(err, "message", err)).lower()


def reason(err: BaseException, limit: int = 160) -> str:
    """One line a user can read for a library's exception: its first line, without
    TensorFlow's function wrapping; a full disk is said as such."""
    if disk_full(err):
        return NO_SPACE
    text = getattr(err, "strerror", None) or str(getattr(err, "message", err))
    lines = [line for line in _TF_WRAPPING.sub("", str(text)).splitlines() if line.strip()]
    return lines[0].strip()[:limit] if lines else type(err).__name__
