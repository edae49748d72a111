"""Running a trained model: the runtimes (Keras, SavedModel, TFLite, ONNX: runtimes.py,
tflite.py, onnx_model.py), predict on images and video (predict.py, video.py), evaluate with
test-time augmentation (evaluate.py, tta.py) and export (export.py).

Layer 5: imports core/, pixels/, model/, data/ and artifacts/. Training imports the
SavedModel writer from here; nothing here imports training.
"""
