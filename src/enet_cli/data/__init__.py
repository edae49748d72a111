"""Datasets: the five layouts `enet preprocess` reads (layouts/), class schemes and palettes
(classes.py), raw data -> TFRecord shards + manifest.json (preprocess.py, manifest.py), and
the tf.data input every training mode reads (dataset.py), and the same shards read without
TensorFlow for `enet evaluate` (records.py).

Layer 3 (beside model/): imports core/ and pixels/ only.
"""
