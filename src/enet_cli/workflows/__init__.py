"""Workflows that combine training and serving on this machine: the demo (demo.py) and
`enet benchmark` (benchmark.py).

Layer 7: may import every layer below (train/, serving/, ...); nothing but commands imports it.
"""
