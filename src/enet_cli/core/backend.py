"""The one place TensorFlow is imported, so that Keras 2 is what `keras` means everywhere.

TF >= 2.16 ships Keras 3 as `tf.keras` unless TF_USE_LEGACY_KERAS=1 is set *before* the
first TensorFlow import, in which case `tf.keras` is the `tf-keras` package (Keras 2). The
SageMaker SMP and SMDDP containers (TF 2.6, TF 2.11) have Keras 2 built in. Our layers,
checkpoints and SavedModels use the Keras 2 API, so every module imports `tf` and `keras`
from here and never `import tensorflow` directly.
"""

import os

from enet_cli.core.errors import EnvironmentProblem
from enet_cli.core.noise import startup_noise_filtered
from enet_cli.core.ui import verbose

os.environ["TF_USE_LEGACY_KERAS"] = "1"
if verbose():  # every line TensorFlow prints, start-up included
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    with startup_noise_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # CUDA's own start-up lines come out here
except ModuleNotFoundError as err:
    if err.name != "tensorflow":
        raise
    raise EnvironmentProblem(
        "this needs TensorFlow, which is not installed (exported .tflite and .onnx models "
        "run without it): pip install 'enet-cli[tensorflow]'"
    ) from None


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
