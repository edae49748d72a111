"""One process, one device: TensorFlow's default strategy (a GPU when there is one)."""

from enet_cli.core.backend import tf
from enet_cli.train.engines.base import StrategyEngine


class SingleEngine(StrategyEngine):
    def __init__(self):
        super().__init__(tf.distribute.get_strategy(), name="single")

    def describe(self) -> str:
        gpus = tf.config.list_physical_devices("GPU")
        device = f"GPU ({gpus[0].name})" if gpus else "CPU"
        return f"single engine on {device}"
