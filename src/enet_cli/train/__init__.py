"""Training: one loop (loop.py) for every mode; what differs by mode lives in engines/."""
