"""The optimisation recipe as objects: seeding, the learning-rate schedule, the optimizer and
the update built on it. The loop and the benchmarks build them here, from a TrainConfig (its
defaults are the recipe), never with numbers of their own."""

import random
from typing import List, Optional

import numpy as np

from enet_cli.core.backend import keras, tf
from enet_cli.core.config import LRSchedule, Precision, TrainConfig
from enet_cli.train.step import Update


def seed_everything(seed: int) -> None:
    """Initial weights depend on Python's, NumPy's and TF's generators (Keras draws from all)."""
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


def build_lr_schedule(cfg: TrainConfig, steps_per_epoch: int, total_steps: int):
    """The learning rate as a function of the optimizer's step (so it resumes for free).

    Always a schedule object, even when constant: Keras optimizers own an extra variable
    when given a schedule, and their slots are checkpointed by position, so switching
    between a float and a schedule across a resume would restore slots into the wrong places.
    """
    schedules = keras.optimizers.schedules
    if cfg.lr_schedule == LRSchedule.cosine:
        return schedules.CosineDecay(cfg.learning_rate, max(total_steps, 1))
    boundaries: List[int] = []
    if cfg.lr_schedule == LRSchedule.step:
        decay_steps = cfg.lr_decay_epochs * steps_per_epoch
        boundaries = list(range(decay_steps, max(total_steps, 1), decay_steps))
    values = [cfg.learning_rate * cfg.lr_decay_factor**k for k in range(len(boundaries) + 1)]
    if not boundaries:  # constant: one boundary past any real run
        boundaries, values = [2**62], [cfg.learning_rate, cfg.learning_rate]
    return schedules.PiecewiseConstantDecay(boundaries, values)


def learning_rate_at(schedule, step: int) -> float:
    return float(schedule(step))


def build_optimizer(cfg: TrainConfig, schedule=None):
    """Adam (PyTorch-ENet's), loss-scaled under mixed_float16; `schedule` None: cfg's
    learning rate, constant (benchmarks)."""
    optimizer = _adam_class()(learning_rate=cfg.learning_rate if schedule is None else schedule)
    if cfg.precision == Precision.mixed_float16:
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def _adam_class():
    """Keras' OptimizerV2 Adam on every TensorFlow: the only Adam of TF 2.6 (the SMP
    container), `optimizers.legacy.Adam` from Keras 2.11 on. One class everywhere keeps one
    checkpoint layout (slots beside their variables) in every container and on a laptop
    (moving a checkpoint across TensorFlow versions is not tested). It applies each
    variable's update as one fused op
    (ResourceApplyAdam) where the newer optimizer builds about fifteen: ENet has 288
    variables, and the train step traced and first ran about 2x faster
    (benchmarks/startup.py). The update is the same Adam (Kingma & Ba, epsilon outside the
    square root)."""
    legacy = getattr(keras.optimizers, "legacy", None)
    return legacy.Adam if legacy is not None else keras.optimizers.Adam


def build_update(cfg: TrainConfig, variables, optimizer: Optional[object] = None) -> Update:
    """The step's update (train/step.py) for `variables` with cfg's weight decay and clip."""
    optimizer = optimizer if optimizer is not None else build_optimizer(cfg)
    return Update(optimizer, variables, cfg.weight_decay, cfg.clip_norm)
