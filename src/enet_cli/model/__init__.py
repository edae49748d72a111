"""The ENet graph: `build_enet` and its layers.

Layer 3 (beside data/): imports core/ only.
"""

from enet_cli.model.enet import build_enet

__all__ = ["build_enet"]
