"""Fused CPU kernels for training, compiled on first use against the running TensorFlow.

ENet's step on a CPU is bound by passes over memory, not arithmetic. Two patterns cost the
most passes, and each has a kernel in csrc/:
- PReLU after nearly every convolution (`prelu.cc`): TensorFlow has no PReLU kernel, and
  Keras composes it from Relu, Neg, Mul and AddV2 and their gradients, about ten reads and
  writes of every activation; the kernel does one pass forward and one backward.
- Batch norm followed by the block's activation (`batch_norm_act.cc`): oneDNN's training
  batch norm ran on one core of two, and the activation then read and wrote its output
  again; the kernel computes the statistics, normalises and activates in two passes forward
  and two backward, with Keras' update of the moving statistics.
Their gains are measured by benchmarks/fused_kernels.py (docs: Results).

A custom op must be compiled for the exact TensorFlow it is loaded into, so it is built here,
like torch.utils.cpp_extension.load does, with the compiler flags TensorFlow reports
(`tf.sysconfig`), into a cache keyed by the sources, the TensorFlow version and those flags.
Whenever that is not possible (no C++ compiler, no TensorFlow headers, a GPU, where the
composed ops run on the device) training falls back to the composed ops, which compute the
same numbers to float32 round-off. Only training uses the kernels: inference, exports and
SavedModels keep standard ops, so they load anywhere.

Environment: ENET_FUSED_KERNELS=0 turns the kernels off; ENET_KERNEL_CACHE sets the cache
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
from typing import Callable, Iterator, List, Optional, Sequence

from enet_cli.core.backend import tf
from enet_cli.core.cache import user_cache

SOURCES = tuple(
    Path(__file__).parent / "csrc" / name
    for name in ("prelu.cc", "batch_norm_act.cc", "confusion.cc", "cross_entropy.cc")
)
BUILD_TIMEOUT_S = 600

KERNELS = ("prelu", "batch_norm_act", "confusion", "cross_entropy")

_lock = threading.Lock()
_loaded = {}  # "library" -> the loaded op library, or None when unavailable
_reason = {}  # "library" -> why it is unavailable


def cache_dir() -> Path:
    return user_cache("kernels", "ENET_KERNEL_CACHE")


def _compile_command(sources: Sequence[Path], output: Path) -> List[str]:
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
        *map(str, sources),
        "-o",
        str(output),
        *flags,
        *tf.sysconfig.get_link_flags(),
    ]


def library_path(sources: Sequence[Path] = SOURCES) -> Path:
    """Where the build of `sources` (and the headers beside them) for this TensorFlow lives
    in the cache."""
    key = hashlib.sha256()
    headers = sorted({h for source in sources for h in source.parent.glob("*.h")})
    for source in [*sources, *headers]:
        key.update(source.read_bytes())
    key.update(tf.__version__.encode())
    key.update(" ".join(_compile_command([Path("src")], Path("out"))).encode())
    return cache_dir() / f"kernels-tf{tf.__version__}-{key.hexdigest()[:16]}.so"


def build(sources: Sequence[Path] = SOURCES) -> Path:
    """Compile `sources` into one library unless the cache has it; it appears whole or not
    at all.

    Concurrent builders (data-parallel workers starting together) each compile into their
    own temporary file and rename it into place: the last rename wins, all are identical.
    """
    target = library_path(sources)
    if target.is_file():
        return target
    compiler = _compile_command(sources, target)[0]
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    from enet_cli.core import ui

    ui.info(f"compiling the fused training kernels for TensorFlow {tf.__version__} (once)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        done = subprocess.run(
            _compile_command(sources, tmp),
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


def _batch_norm_act_from(library) -> Callable:
    floor = _epsilon_floor()

    def batch_norm_act(
        x, gamma, beta, slope, moving_mean, moving_variance, epsilon, momentum, mask=None
    ):
        moving = []
        epsilon = max(float(epsilon), floor)
        if mask is None:
            mask = tf.ones(tf.stack([tf.shape(x)[0], tf.shape(x)[-1]]), x.dtype)
        mask = tf.reshape(mask, [-1])

        @tf.custom_gradient
        def normalize(x, gamma, beta, slope):
            scalar = tf.reshape(slope, [])
            y, mean, inv_std, new_mean, new_variance = library.enet_batch_norm_act(
                x, gamma, beta, scalar, moving_mean, moving_variance, mask,
                epsilon=epsilon, momentum=momentum,
            )  # fmt: skip
            moving.extend([new_mean, new_variance])

            def grad(dy):
                dx, dgamma, dbeta, dslope = library.enet_batch_norm_act_grad(
                    dy, x, gamma, beta, scalar, mean, inv_std, mask
                )
                return dx, dgamma, dbeta, tf.reshape(dslope, tf.shape(slope))

            return y, grad

        y = normalize(x, gamma, beta, slope)
        return y, moving[0], moving[1]

    return batch_norm_act


def _cross_entropy_from(library) -> Callable:
    def cross_entropy(logits, labels, class_weights, ignore_index):
        weights = tf.constant(class_weights, tf.float32)

        @tf.custom_gradient
        def loss(logits):
            loss_sum, weight_sum = library.enet_cross_entropy(
                logits, labels, weights, ignore_index=ignore_index
            )

            def grad(dloss, dweight):
                del dweight  # the weights come from the labels alone
                return library.enet_cross_entropy_grad(
                    dloss, logits, labels, weights, ignore_index=ignore_index
                )

            return (loss_sum, weight_sum), grad

        return loss(logits)

    return cross_entropy


def _epsilon_floor() -> float:
    """The smallest epsilon TensorFlow's fused batch norm (what Keras' layer calls) uses.

    Until about TF 2.12, `tf.compat.v1.nn.fused_batch_norm` raised any epsilon below
    1.001e-5 to it (an old cuDNN limit); later versions use it as given. Measured rather
    than looked up by version: a two-pixel batch with variance 1e-6 gives 1e-3 / sqrt(1e-6 +
    epsilon), which tells 1e-5 from 1.001e-5 by 4e-4.
    """
    with tf.init_scope():  # eager, even when the library loads inside a tf.function trace
        x = tf.constant([[[[1e-3], [-1e-3]]]])
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, [1.0], [0.0], epsilon=1e-5, is_training=True)
        used = (1e-3 / float(y[0, 0, 0, 0])) ** 2 - 1e-6
    return 1.001e-5 if used > 1.0005e-5 else 0.0


def _load_library():
    if os.environ.get("ENET_FUSED_KERNELS", "1") == "0":
        return None  # asked for
    if tf.config.list_physical_devices("GPU"):
        return None  # the layers run on the GPU, where the composed ops are fused by XLA/cuDNN
    library = tf.load_op_library(str(build()))
    return {
        "prelu": _prelu_from(library),
        "batch_norm_act": _batch_norm_act_from(library),
        "confusion": lambda logits, labels, ignore_index: library.enet_confusion(
            logits, labels, ignore_index=ignore_index
        ),
        "cross_entropy": _cross_entropy_from(library),
    }


def _kernel(name: str) -> Optional[Callable]:
    with _lock:
        if "library" not in _loaded:
            try:
                _loaded["library"] = _load_library()
            except (RuntimeError, OSError, subprocess.SubprocessError, tf.errors.OpError) as err:
                _loaded["library"] = None
                _reason["library"] = str(err)
        kernels = _loaded["library"]
        return None if kernels is None or name in _off else kernels[name]


def prelu() -> Optional[Callable]:
    """`prelu(x, alpha)` with one slope for all of x (float32), or None if unavailable.

    Built and loaded once per process. None when turned off, when a GPU is visible, or when
    the build failed: then `unavailable_reason()` says why.
    """
    return _kernel("prelu")


def batch_norm_act() -> Optional[Callable]:
    """Training-mode batch norm then PReLU (ReLU: slope 0) over the last axis, or None.

    `batch_norm_act(x, gamma, beta, slope, moving_mean, moving_variance, epsilon, momentum,
    mask=None)` returns (y, new moving mean, new moving variance), which the caller assigns;
    `mask` (N, C) multiplies each image's channels after the activation (spatial dropout;
    ones if None). The update is Keras' BatchNormalization's, moving -= (moving - batch) *
    (1 - momentum), with the batch variance under Bessel's correction. Gradients flow to x,
    gamma, beta and slope. None as for `prelu()`.
    """
    return _kernel("batch_norm_act")


def confusion() -> Optional[Callable]:
    """`confusion(logits, labels, ignore_index)`: the (K, K) int32 counts of
    core.metrics.confusion_matrix(labels, argmax(logits)) for float32 logits with K classes
    on the last axis, or None as for `prelu()`."""
    return _kernel("confusion")


def cross_entropy() -> Optional[Callable]:
    """`cross_entropy(logits, labels, class_weights, ignore_index)` -> (sum over pixels of
    w[label] * softmax cross-entropy, sum of w[label]), void and labels outside [0, K)
    weighing 0, with its gradient to the float32 logits; or None as for `prelu()`."""
    return _kernel("cross_entropy")


def unavailable_reason() -> Optional[str]:
    """Why building or loading the kernels failed; None if it did not fail (or was not tried)."""
    return _reason.get("library")


_off: set = set()


@contextlib.contextmanager
def turned_off(*names: str) -> Iterator[None]:
    """Trace or run without the named kernels (KERNELS; all if none named)
    inside this block: the before of an A/B, in tests and benchmarks/fused_kernels.py (a
    tf.function keeps what its first call traced)."""
    prelu()  # build first, so the block's end restores what the process really has
    names = names or KERNELS
    with _lock:
        added = [name for name in names if name not in _off]
        _off.update(added)
    try:
        yield
    finally:
        with _lock:
            _off.difference_update(added)
