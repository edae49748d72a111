"""enet-cli: train ENet on CamVid with TensorFlow 2, locally or on Amazon SageMaker."""

__version__ = "0.1.0"
