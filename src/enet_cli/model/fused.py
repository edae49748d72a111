"""Fused CPU kernels for training, compiled on first use against the running TensorFlow.

ENet applies PReLU after nearly every convolution. TensorFlow has no PReLU kernel: Keras
composes it from Relu, Neg, Mul and AddV2, and their gradients, so every activation is read
and written about ten times per step. On a two-core CPU that was a quarter of the training
step. `csrc/prelu.cc` does the forward in one pass and the backward (dx and the slope's
gradient) in another: the step ran 1.20x faster (paired A/B, benchmarks/fused_prelu.py).

A custom op must be compiled for the exact TensorFlow it is loaded into, so it is built here,
like torch.utils.cpp_extension.load does, with the compiler flags TensorFlow reports
(`tf.sysconfig`), into a cache keyed by the source, the TensorFlow version and those flags.
Whenever that is not possible (no C++ compiler, no TensorFlow headers, a GPU, where the
composed ops run on the device) training falls back to the composed ops, which compute the
same numbers. Only training uses the kernel: inference, exports and SavedModels keep
standard ops, so they load anywhere.

Environment: ENET_FUSED_KERNELS=0 turns the kernel off; ENET_KERNEL_CACHE sets the cache
directory (default: $XDG_CACHE_HOME/enet-cli/kernels, else ~/.cache/enet-cli/kernels);
CXX names the compiler (default: c++).
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from enet_cli.core.backend import tf
from enet_cli.core.cache import user_cache

SOURCE = Path(__file__).parent / "csrc" / "prelu.cc"
BUILD_TIMEOUT_S = 600

_lock = threading.Lock()
_loaded = {}  # "prelu" -> the op function, or None when unavailable
_reason = {}  # "prelu" -> why it is unavailable


def cache_dir() -> Path:
    return user_cache("kernels", "ENET_KERNEL_CACHE")


def _compile_command(source: Path, output: Path) -> List[str]:
    flags = list(tf.sysconfig.get_compile_flags())
    if not any(flag.startswith("--std") or flag.startswith("-std") for flag in flags):
        # TensorFlow < 2.9 was built as C++14: its absl::string_view is not std::string_view
        # under C++17, and the kernel registration symbols would not resolve.
        flags.append("-std=c++14")
    compiler = os.environ.get("CXX") or "c++"
    return [
        compiler,
        "-shared",
        "-fPIC",
        "-O3",
        "-fno-trapping-math",  # lets the comparisons vectorise; results are unchanged
        "-w",
        str(source),
        "-o",
        str(output),
        *flags,
        *tf.sysconfig.get_link_flags(),
    ]


def library_path(source: Path = SOURCE) -> Path:
    """Where the build of `source` for this TensorFlow lives in the cache."""
    key = hashlib.sha256()
    key.update(source.read_bytes())
    key.update(tf.__version__.encode())
    key.update(" ".join(_compile_command(Path("src"), Path("out"))).encode())
    return cache_dir() / f"{source.stem}-tf{tf.__version__}-{key.hexdigest()[:16]}.so"


def build(source: Path = SOURCE) -> Path:
    """Compile `source` unless the cache has it; the library appears whole or not at all.

    Concurrent builders (data-parallel workers starting together) each compile into their
    own temporary file and rename it into place: the last rename wins, all are identical.
    """
    target = library_path(source)
    if target.is_file():
        return target
    compiler = _compile_command(source, target)[0]
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    from enet_cli.core import ui

    ui.info(f"compiling the fused {source.stem} kernel for TensorFlow {tf.__version__} (once)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        done = subprocess.run(
            _compile_command(source, tmp),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "error" in line]
            raise RuntimeError(f"{compiler} failed: {(lines or ['(no message)'])[0].strip()}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _prelu_from(library) -> Callable:
    @tf.custom_gradient
    def prelu(x, alpha):
        slope = tf.reshape(alpha, [])

        def grad(dy):
            dx, dslope = library.enet_prelu_grad(dy, x, slope)
            return dx, tf.reshape(dslope, tf.shape(alpha))

        return library.enet_prelu(x, slope), grad

    return prelu


def _load_prelu() -> Optional[Callable]:
    if os.environ.get("ENET_FUSED_KERNELS", "1") == "0":
        return None  # asked for
    if tf.config.list_physical_devices("GPU"):
        return None  # the layers run on the GPU, where the composed ops are fused by XLA/cuDNN
    return _prelu_from(tf.load_op_library(str(build())))


def prelu() -> Optional[Callable]:
    """`prelu(x, alpha)` with one slope for all of x (float32), or None if unavailable.

    Built and loaded once per process. None when turned off, when a GPU is visible, or when
    the build failed: then `unavailable_reason()` says why.
    """
    with _lock:
        if "prelu" not in _loaded:
            try:
                _loaded["prelu"] = _load_prelu()
            except (RuntimeError, OSError, subprocess.SubprocessError, tf.errors.OpError) as err:
                _loaded["prelu"] = None
                _reason["prelu"] = str(err)
        return _loaded["prelu"]


def unavailable_reason() -> Optional[str]:
    """Why building or loading the kernel failed; None if it did not fail (or was not tried)."""
    return _reason.get("prelu")


@contextlib.contextmanager
def turned_off() -> Iterator[None]:
    """Trace or run without the kernel inside this block: the before of an A/B, in tests
    and benchmarks/fused_prelu.py (a tf.function keeps what its first call traced)."""
    prelu()  # build first, so the block's end restores what the process really has
    with _lock:
        saved = _loaded["prelu"]
        _loaded["prelu"] = None
    try:
        yield
    finally:
        with _lock:
            _loaded["prelu"] = saved
