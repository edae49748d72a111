"""Train step and Keras inference of the enet_cli on PYTHONPATH, as JSON (versus_pytorch.py).

Uses only APIs that every version of enet_cli since the training core has, so an older
checkout (the "before" of a speed change) is measured by the same code as the current one.
"""

import json
import statistics
import sys
import time

from enet_cli.core.backend import tf
from enet_cli.core.config import ModelConfig, TrainConfig
from enet_cli.model import build_enet
from enet_cli.train.engines.single import SingleEngine
from enet_cli.train.optim import build_update
from enet_cli.train.task import SegmentationTask


def train_step(size, batch):
    """(model, run): a fresh ENet and a callable running one real train step on fixed data
    (the engine's step: weighted loss, Adam, weight decay). Also used by fused_kernels.py."""
    model = build_enet(ModelConfig(num_classes=11), size)
    task = SegmentationTask(11, 11, tuple([1.0] * 11))
    update = build_update(TrainConfig(), model.trainable_variables)
    step = SingleEngine().make_train_step(model, update, task)
    images = tf.random.uniform((batch, *size, 3), seed=1)
    labels = tf.random.uniform((batch, *size), maxval=12, dtype=tf.int32, seed=2)
    return model, lambda: step((images, labels))["loss"].numpy()


def main(size=(360, 480), batch=4, steps=12, runs=30) -> None:
    model, run_step = train_step(size, batch)
    rates = []
    for i in range(2 + steps):
        start = time.perf_counter()
        run_step()
        if i >= 2:
            rates.append(batch / (time.perf_counter() - start))
    forward = tf.function(lambda x: model(x, training=False))
    image = tf.random.uniform((1, *size, 3), seed=3)
    ms = []
    for i in range(3 + runs):
        start = time.perf_counter()
        forward(image).numpy()
        if i >= 3:
            ms.append(1000 * (time.perf_counter() - start))
    print(json.dumps({"train": statistics.median(rates), "infer_keras": statistics.median(ms)}))


if __name__ == "__main__":
    main(steps=int(sys.argv[1]) if len(sys.argv) > 1 else 12)
