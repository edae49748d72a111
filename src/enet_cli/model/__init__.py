"""The ENet graph: `build_enet` and its layers."""

from enet_cli.model.enet import build_enet

__all__ = ["build_enet"]
