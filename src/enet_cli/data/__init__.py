"""Datasets: the five layouts `enet preprocess` reads (layouts/), class schemes and palettes
(classes.py), raw data -> TFRecord shards + manifest.json (preprocess.py, manifest.py), and
the tf.data input every mode and `enet evaluate` read (dataset.py).

Layer 3 (beside model/): imports core/ and pixels/ only.
"""
