"""What every side shares, and nothing else: settings with their defaults (config.py), the
errors a user sees (errors.py), terminal output (ui.py), the one TensorFlow import
(backend.py), safe file writing (outputs.py), metrics and their log line (metrics.py).

Layer 1 of the package (the lowest): imports nothing from enet_cli outside core/. Importing
it never imports TensorFlow; backend.py does that when a function asks for it.
"""
