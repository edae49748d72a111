"""Workflows that combine the layers below on this machine: the demo (demo.py), `enet
benchmark` (benchmark.py), `enet report` (report/: evaluation and pictures) and `enet
serve` (serve/: the endpoint's handler around a model run here).

Layer 7: may import every layer below (train/, serving/, container/, ...); nothing but
commands imports it.
"""
