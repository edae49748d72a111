"""Training: one loop (loop.py) for every mode; what differs by mode lives in engines/; the
settings check against the engine table (settings.py); a run's state and checkpoints
(state.py); the local multi-worker launcher (launcher.py).

Layer 6: imports the layers below; serving's SavedModel writer is how a run exports its
best weights. Nothing below imports training.
"""
