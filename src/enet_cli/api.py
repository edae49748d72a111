"""The Python API, for notebooks and scripts: `from enet_cli.api import Segmenter`.

Beside cli.py at the top of the package: it imports the layers below and nothing imports it,
so `import enet_cli` (and `enet --help`, and the edge install) does not load it.
"""

from enet_cli.serving.segmenter import Segmenter

__all__ = ["Segmenter"]
