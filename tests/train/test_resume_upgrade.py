"""A run trained before enet-cli used Keras' OptimizerV2 Adam everywhere (on Keras >= 2.11 it
trained with the newer Keras Adam, whose checkpoint lists Adam's moments as
`optimizer/_variables/<n>`) resumes with its moments, not with fresh ones."""

import numpy as np
import pytest


def _state(optimizer, directory, seed):
    from enet_cli.core.config import ModelConfig
    from enet_cli.model import build_enet
    from enet_cli.train.optim import seed_everything
    from enet_cli.train.state import TrainState, create_slots

    seed_everything(seed)
    model = build_enet(ModelConfig(num_classes=11), (32, 48))
    state = TrainState(model, optimizer, 11, directory, 3, write_directory=directory)
    create_slots(optimizer, model.trainable_variables)
    return state


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_a_checkpoint_of_the_newer_keras_adam_resumes_with_its_moments(tmp_path, precision):
    from enet_cli.core.backend import keras, tf
    from enet_cli.core.config import Precision, TrainConfig
    from enet_cli.train.optim import build_optimizer

    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2**62], [1e-3, 1e-3])
    newer = keras.optimizers.Adam(schedule)  # Keras >= 2.11: the newer optimizer
    assert not hasattr(newer, "get_slot")
    if precision == "mixed_float16":
        newer = keras.mixed_precision.LossScaleOptimizer(newer)
    old = _state(newer, tmp_path, seed=1)
    variables = old.model.trainable_variables
    rng = np.random.default_rng(0)
    for _ in range(2):  # two steps: m and v differ from any one gradient
        grads = [tf.constant(rng.normal(size=v.shape), v.dtype) for v in variables]
        newer.apply_gradients(zip(grads, variables))
    assert old.save() is not None
    inner = getattr(newer, "inner_optimizer", newer)
    moments = [(m.numpy(), v.numpy()) for m, v in zip(inner._momentums, inner._velocities)]
    weights = [v.numpy() for v in variables]
    keys = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(tmp_path))]
    assert any("_variables/1/" in k for k in keys) and not any("OPTIMIZER_SLOT" in k for k in keys)

    cfg = TrainConfig(precision=Precision(precision))
    resumed = _state(build_optimizer(cfg, schedule), tmp_path, seed=2)  # other initial weights
    assert resumed.restore_latest() is not None
    optimizer = getattr(resumed.checkpoint.optimizer, "inner_optimizer", None)
    optimizer = optimizer or resumed.checkpoint.optimizer
    assert int(optimizer.iterations.numpy()) == 2
    for k, variable in enumerate(resumed.model.trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), weights[k], err_msg=variable.name)
        np.testing.assert_array_equal(optimizer.get_slot(variable, "m").numpy(), moments[k][0])
        np.testing.assert_array_equal(optimizer.get_slot(variable, "v").numpy(), moments[k][1])
    assert np.abs(moments[0][0]).max() > 0  # the moments compared are not the zeros of new slots
