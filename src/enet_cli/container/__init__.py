"""What runs inside AWS's containers: the training container's contract (/opt/ml paths,
hyperparameters, the failure file: contract.py), the job's entry script (entry.py, standard
library only), and the TensorFlow Serving endpoint's handler (handler.py, NumPy and Pillow
only).

Layer 5: imports core/, pixels/ and artifacts/. Nothing here may import the SageMaker SDK,
which the containers do not have, or TensorFlow at import time.
"""
