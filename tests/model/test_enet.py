"""The ENet graph: parameter count from the architecture, shapes, gradients, train vs inference."""

import numpy as np
import pytest

from enet_cli.core.backend import keras, tf
from enet_cli.core.config import ModelConfig
from enet_cli.core.errors import ConfigError
from enet_cli.model import build_enet
from enet_cli.model.summary import summarize
from enet_testing import SMALL_BOTTLENECKS, enet_multiply_adds


def bn(channels):
    return 2 * channels  # gamma and beta; moving statistics are not trainable


def expected_parameters(num_classes: int, bottlenecks=(4, 8, 8, 2, 1)) -> int:
    """Count ENet's trainable parameters from the architecture table (PyTorch-ENet's layers).

    Convolutions have no bias. Encoder blocks each share one PReLU slope (+1); the decoder
    uses ReLU. Regular bottleneck of C channels: 1x1 C->C/4, main conv, 1x1 C/4->C. A
    shallower ENet keeps the first `bottlenecks[k]` bottlenecks of stage k+1.
    """
    n1, n2, n3, n4, n5 = bottlenecks

    def regular(c, asymmetric=False, prelu=1):
        m = c // 4
        main = 2 * (5 * m * m + bn(m)) if asymmetric else 9 * m * m + bn(m)
        return c * m + bn(m) + main + m * c + bn(c) + prelu

    def down(cin, cout):
        m = cin // 4
        return 4 * cin * m + bn(m) + 9 * m * m + bn(m) + m * cout + bn(cout) + 1

    def up(cin, cout):
        m = cin // 4
        return cin * cout + bn(cout) + cin * m + bn(m) + 4 * m * m + bn(m) + m * cout + bn(cout)

    initial = 9 * 3 * 13 + bn(16) + 1
    stage1 = down(16, 64) + n1 * regular(64)
    stage2_pattern = [False, False, True, False, False, False, True, False]
    stage2 = down(64, 128) + sum(regular(128, a) for a in stage2_pattern[:n2])
    stage3 = sum(regular(128, a) for a in stage2_pattern[:n3])
    stage4 = up(128, 64) + n4 * regular(64, prelu=0)
    stage5 = up(64, 16) + n5 * regular(16, prelu=0)
    full = 9 * 16 * num_classes
    return initial + stage1 + stage2 + stage3 + stage4 + stage5 + full


def trainable_count(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


@pytest.mark.compat
def test_parameter_count_matches_the_architecture():
    # PyTorch-ENet reports 350,652 for 12 classes: it counts each block's shared nn.PReLU
    # once per use. 23 encoder blocks use their slope 93 times in all, so 70 are repeats.
    assert expected_parameters(12) == 350_652 - 70 == 350_582
    assert trainable_count(build_enet(ModelConfig(num_classes=12), (64, 64))) == 350_582
    assert trainable_count(build_enet(ModelConfig(num_classes=11), (64, 64))) == (
        expected_parameters(11)
    )


@pytest.mark.parametrize("size", [(360, 480), (720, 960), (368, 496)])
def test_output_shape_follows_input(size):
    model = build_enet(ModelConfig(num_classes=12), size)
    assert model.output_shape == (None, *size, 12)
    logits = model(tf.zeros((1, *size, 3)), training=False)
    assert tuple(logits.shape) == (1, *size, 12)
    assert logits.dtype == tf.float32


def test_dynamic_size_model_serves_several_resolutions():
    model = build_enet(ModelConfig(num_classes=5))
    for size in [(64, 96), (368, 496)]:
        assert tuple(model(tf.zeros((2, *size, 3))).shape) == (2, *size, 5)


@pytest.mark.compat
@pytest.mark.parametrize(
    "size,inside", [((361, 480), "368x480"), ((720, 962), "720x968"), ((3, 3), "8x8")]
)
def test_the_graph_is_built_at_multiples_of_eight_only(size, inside):
    """Other sizes are padded up by the callers (preprocessor.run_padded, the pipeline)."""
    with pytest.raises(ConfigError) as err:
        build_enet(ModelConfig(), size)
    assert f"{size[0]}x{size[1]}" in str(err.value)
    assert f"build it at {inside}" in str(err.value)


@pytest.mark.compat
def test_forward_backward_reaches_every_trainable_variable():
    model = build_enet(ModelConfig(num_classes=4), (32, 48))
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(size=(2, 32, 48, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, 4, size=(2, 32, 48)))
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        )
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.name for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not missing
    zero = [
        v.name
        for v, g in zip(model.trainable_variables, grads)
        if float(tf.reduce_max(tf.abs(g))) == 0.0
    ]
    assert not zero
    optimizer = keras.optimizers.SGD(0.1)
    before = float(loss)
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=labels, logits=model(images, training=True)
                )
            )
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        )
    assert float(loss) < before


def _snapshot(variables):
    return [v.numpy().copy() for v in variables]


def test_training_and_inference_differ_only_by_dropout_and_batch_norm():
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(size=(2, 32, 32, 3)).astype("float32"))

    no_dropout = build_enet(ModelConfig(num_classes=3, stage1_dropout=0, dropout=0), (32, 32))
    trainable = _snapshot(no_dropout.trainable_variables)
    stats = _snapshot(no_dropout.non_trainable_variables)

    # Inference: deterministic, and touches no variable.
    a, b = no_dropout(images, training=False), no_dropout(images, training=False)
    np.testing.assert_array_equal(a, b)
    for before, v in zip(stats, no_dropout.non_trainable_variables):
        np.testing.assert_array_equal(before, v.numpy())

    # Training without dropout: deterministic (batch statistics), but differs from inference
    # (moving statistics), and only the batch-norm moving statistics change.
    c, d = no_dropout(images, training=True), no_dropout(images, training=True)
    np.testing.assert_allclose(c, d, rtol=1e-5, atol=1e-5)
    assert np.abs(c.numpy() - a.numpy()).max() > 1e-3
    for before, v in zip(trainable, no_dropout.trainable_variables):
        np.testing.assert_array_equal(before, v.numpy())
    moved = [
        v.name
        for before, v in zip(stats, no_dropout.non_trainable_variables)
        if not np.array_equal(before, v.numpy())
    ]
    statistics = [v.name for v in no_dropout.non_trainable_variables if "moving_" in v.name]
    assert sorted(moved) == sorted(statistics)  # dropout counters stay put at rate 0

    # With dropout, two training passes differ, inference passes do not.
    with_dropout = build_enet(ModelConfig(num_classes=3, dropout=0.5), (32, 32))
    e, f = with_dropout(images, training=True), with_dropout(images, training=True)
    assert np.abs(e.numpy() - f.numpy()).max() > 1e-3
    np.testing.assert_array_equal(
        with_dropout(images, training=False), with_dropout(images, training=False)
    )


@pytest.mark.compat
def test_model_builds_from_config():
    cfg = ModelConfig(num_classes=32, stage1_dropout=0.0, dropout=0.2)
    model = build_enet(cfg, (64, 64))
    assert model.output_shape[-1] == 32
    rates = {layer.name: layer.dropout for layer in model.layers if hasattr(layer, "dropout")}
    assert rates["stage1_1_regular"] == 0.0
    assert rates["stage2_8_dilated16"] == 0.2
    assert rates["stage5_1_regular"] == 0.2


def test_summary_rows_add_up_to_the_model():
    model = build_enet(ModelConfig(num_classes=12), (360, 480))
    rows = summarize(model)
    assert [r.name for r in rows][:3] == ["initial", "stage1_0_down", "stage1_1_regular"]
    assert rows[-1].name == "fullconv" and rows[-1].output_shape == (None, 360, 480, 12)
    assert sum(r.params for r in rows) == trainable_count(model)
    # Full conv: 3x3x16x12 kernel applied at each of the 180x240 input pixels.
    assert rows[-1].multiply_adds == 9 * 16 * 12 * 180 * 240
    # A regular 64-channel bottleneck at 90x120: 1x1 64->16, 3x3 16->16, 1x1 16->64.
    assert rows[2].multiply_adds == (64 * 16 + 9 * 16 * 16 + 16 * 64) * 90 * 120
    assert sum(r.multiply_adds for r in rows) == enet_multiply_adds(360, 480, 12)
    small = summarize(build_enet(ModelConfig(num_classes=5), (96, 128)))
    assert sum(r.multiply_adds for r in small) == enet_multiply_adds(96, 128, 5)


@pytest.mark.parametrize("depth", [(1, 3, 0, 1, 1), (0, 0, 0, 0, 0), (4, 8, 2, 2, 0)])
def test_a_shallower_enet_is_the_papers_graph_with_bottlenecks_left_out(depth):
    """--bottlenecks: the parameters and multiply-adds of the blocks kept, counted from the
    architecture; the blocks kept carry the paper's names (and so its checkpoint keys), in
    order; the skips still join stage 4 to stage 2's input and stage 5 to stage 1's."""
    full = build_enet(ModelConfig(num_classes=11), (96, 128))
    model = build_enet(ModelConfig(num_classes=11, bottlenecks=depth), (96, 128))
    assert trainable_count(model) == expected_parameters(11, depth)
    rows = summarize(model)
    assert sum(r.multiply_adds for r in rows) == enet_multiply_adds(96, 128, 11, depth)
    names, full_names = [r.name for r in rows], [r.name for r in summarize(full)]
    assert names == [n for n in full_names if n in names]
    assert len(names) == len(full_names) - sum(np.subtract((4, 8, 8, 2, 1), depth))
    assert {w.name for w in model.weights} <= {w.name for w in full.weights}
    stage2_input = model.get_layer("stage2_0_down").input
    assert model.get_layer("stage4_0_up").input[1] is stage2_input
    assert model.get_layer("stage5_0_up").input[1] is model.get_layer("initial").output
    assert model.output_shape == (None, 96, 128, 11)


@pytest.mark.parametrize(
    "value", ["1,3,0,1", "5,8,8,2,1", "1,3,0,1,-1", "a,b,c,d,e", [4, 8, 8, 2, 1.5]]
)
def test_bottlenecks_are_five_counts_up_to_the_papers(value):
    with pytest.raises(ValueError, match=r"five counts, each from 0 to the paper's \(4,8,8,2,1\)"):
        ModelConfig(bottlenecks=value)
    assert ModelConfig(bottlenecks="1,3,0,1,1").bottlenecks == (1, 3, 0, 1, 1)
    assert ModelConfig().bottlenecks == (4, 8, 8, 2, 1)


def test_saved_model_round_trip(tmp_path):
    """Every kind of block (a shallower ENet has each) saves and loads as Keras layers."""
    model = build_enet(ModelConfig(num_classes=4, bottlenecks=SMALL_BOTTLENECKS), (32, 32))
    images = tf.constant(np.random.default_rng(2).uniform(size=(1, 32, 32, 3)).astype("float32"))
    expected = model(images, training=False).numpy()
    model.save(str(tmp_path / "enet"))
    restored = keras.models.load_model(str(tmp_path / "enet"))
    np.testing.assert_allclose(restored(images, training=False), expected, rtol=1e-5, atol=1e-5)
