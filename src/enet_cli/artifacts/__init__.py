"""What a trained model is on disk: a run directory's paths and its enet.json (run.py), the
checkpoints in it and how to find and restore them (checkpoints.py).

Layer 4: imports core/, pixels/, model/ and data/ (a run's metadata names its dataset).
Serving, training and the cloud side read models through here, never through each other.
"""
