"""Pixels in and out of a model, without TensorFlow at import: the model-size convention
(preprocessor.py, the keras-hub Preprocessor role) and drawing class maps, palettes and
overlays (drawing.py).

Layer 2: imports core/ only. The SageMaker endpoint's handler ships these modules into the
TensorFlow Serving container, whose Python has NumPy and Pillow and no TensorFlow.
"""
