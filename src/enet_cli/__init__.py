"""enet-cli: train ENet on CamVid with TensorFlow 2, locally or on Amazon SageMaker.

`from enet_cli import Segmenter` is the Python API (serving/segmenter.py); it is imported on
first use, so `enet --help` and the edge install do not pay for it.
"""

__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str):
    if name == "Segmenter":
        from enet_cli.serving.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'enet_cli' has no attribute {name!r}")
