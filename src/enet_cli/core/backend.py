"""The one place TensorFlow is imported, so that Keras 2 is what `keras` means everywhere.

TF >= 2.16 ships Keras 3 as `tf.keras` unless TF_USE_LEGACY_KERAS=1 is set *before* the
first TensorFlow import, in which case `tf.keras` is the `tf-keras` package (Keras 2). The
SageMaker SMP and SMDDP containers (TF 2.6, TF 2.11) have Keras 2 built in. Our layers,
checkpoints and SavedModels use the Keras 2 API, so every module imports `tf` and `keras`
from here and never `import tensorflow` directly.
"""

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

from enet_cli.core.ui import verbose

os.environ["TF_USE_LEGACY_KERAS"] = "1"
VERBOSE = verbose()  # every line TensorFlow prints, start-up included
if VERBOSE:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's C++ start-up lines (written to fd 2 before absl's logging is initialised, so
# TF_CPP_MIN_LOG_LEVEL cannot silence them): oneDNN, CUDA stubs, cuInit on a machine
# without a GPU. They would surround our one-line errors; everything else is kept.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \S+ +\d+ \S+\.cc:\d+\]"
    r"|E\d{4} \S+ +\d+ \S+\.cc:\d+\] .*(cuInit|CUDA|cuda|cuDNN|cuFFT|cuBLAS)"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|.*This TensorFlow binary is optimized to use available CPU instructions"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
    # the TFLite converter's quantizer, at each int8 conversion
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: )"
)


@contextlib.contextmanager
def startup_noise_filtered() -> Iterator[None]:
    """Run the block with fd 2 captured, then replay what it wrote minus the start-up noise
    (TensorFlow's import, a TFLite interpreter's creation, the converter's quantizer)."""
    if VERBOSE:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if not _STARTUP_NOISE.match(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


with startup_noise_filtered():
    import tensorflow as tf

    tf.config.list_physical_devices("GPU")  # CUDA's own start-up lines come out here

from enet_cli.core.errors import EnvironmentProblem  # noqa: E402


def _keras():
    try:
        keras = tf.keras
        keras.layers.Layer  # noqa: B018  (tf.keras is lazy on TF >= 2.16: touch it to load)
    except (ImportError, AttributeError) as err:
        major_minor = ".".join(tf.__version__.split(".")[:2])
        raise EnvironmentProblem(
            f"TensorFlow {tf.__version__} needs the tf-keras package for Keras 2: "
            f"pip install 'tf-keras~={major_minor}.0' ({err})"
        ) from None
    if callable(getattr(keras, "version", None)) and str(keras.version()).startswith("3"):
        raise EnvironmentProblem(
            "tf.keras is Keras 3, but enet-cli needs Keras 2: import enet_cli before "
            "tensorflow, or set TF_USE_LEGACY_KERAS=1 and install tf-keras"
        )
    return keras


with startup_noise_filtered():
    keras = _keras()

TF_VERSION = tuple(int(p) for p in tf.__version__.split(".")[:2])

__all__ = ["TF_VERSION", "keras", "startup_noise_filtered", "tf"]
