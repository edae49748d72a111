"""`enet report`: what a trained model learned, as one HTML page that opens from disk.

collect.py reads each run (history, settings, environment) and scores it with `enet
evaluate`'s own code, keeping the images it gets most and least right; figures.py draws
(matplotlib, the `report` extra); page.py writes the page around them.
"""
