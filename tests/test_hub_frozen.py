"""frozen_stages and norm_eval, on the zoo builders and the keras-hub
backbone: what is frozen stays bit-identical through training steps."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from psconv_tf import hub
from psconv_tf import models
from psconv_tf.models.resnet import FrozenStatisticsBatchNormalization
from psconv_tf.models.resnet import stage_of

SIZE = 32
TINY = dict(stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_filters=[8, 8, 16, 16],
            stem_filters=8, conv="psconv", image_shape=(SIZE, SIZE, 3))


def _snapshot(model):
    return {v.path: np.array(v.numpy()) for v in model.weights}


def _train_steps(model, steps=2):
    """SGD steps on a data-dependent loss (mean of squares of the output)."""
    optimizer = keras.optimizers.SGD(0.1)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = rng.uniform(-1, 1, (4, SIZE, SIZE, 3)).astype("float32")
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            outputs = outputs if isinstance(outputs, dict) else {"y": outputs}
            loss = sum(tf.reduce_mean(tf.square(tf.cast(y, tf.float32))) for y in outputs.values())
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))


def _changed(before, after):
    return {path for path in before if not np.array_equal(before[path], after[path])}


def _stage(path):
    return stage_of(path.split("/")[-2])


def _zoo(**kwargs):
    return models.get("ps_resnet18", include_top=False, feature_maps=True,
                      input_shape=(SIZE, SIZE, 3), **kwargs)


def _backbone(**kwargs):
    return hub.PSResNetBackbone(**TINY, **kwargs)


@pytest.mark.parametrize("build", [_zoo, _backbone], ids=["zoo", "hub"])
@pytest.mark.parametrize("frozen_stages", [0, 2])
def test_frozen_stages_do_not_change(build, frozen_stages):
    model = build(frozen_stages=frozen_stages)
    before = _snapshot(model)
    _train_steps(model)
    changed = _changed(before, _snapshot(model))
    frozen = {p for p in before if _stage(p) <= frozen_stages}
    assert frozen and not (changed & frozen)
    # Everything else trained, moving statistics included.
    assert changed == set(before) - frozen


@pytest.mark.parametrize("build", [_zoo, _backbone], ids=["zoo", "hub"])
def test_norm_eval_keeps_statistics_and_trains_scales(build):
    model = build(norm_eval=True)
    batch_norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert batch_norms and all(isinstance(l, FrozenStatisticsBatchNormalization) for l in batch_norms)
    before = _snapshot(model)
    _train_steps(model)
    changed = _changed(before, _snapshot(model))
    statistics = {v.path for l in batch_norms for v in (l.moving_mean, l.moving_variance)}
    assert not changed & statistics
    assert changed == set(before) - statistics  # gamma, beta and kernels train


def test_norm_eval_normalizes_with_moving_statistics():
    # Independent of the layer: y = gamma (x - mean) / sqrt(var + eps) + beta.
    layer = FrozenStatisticsBatchNormalization(epsilon=1e-5)
    x = np.random.default_rng(0).normal(3, 2, (8, 4)).astype("float32")
    layer.build(x.shape)
    layer.moving_mean.assign([1.0, 2.0, 3.0, 4.0])
    layer.moving_variance.assign([1.0, 4.0, 9.0, 16.0])
    expected = (x.astype(np.float64) - [1, 2, 3, 4]) / np.sqrt(np.array([1, 4, 9, 16]) + 1e-5)
    np.testing.assert_allclose(layer(x, training=True), expected, rtol=1e-5)


def test_options_survive_a_preset(tmp_path):
    backbone = _backbone(frozen_stages=1, norm_eval=True)
    backbone.save_to_preset(tmp_path)
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert [v.path for v in loaded.trainable_weights] == [v.path for v in backbone.trainable_weights]
    assert any(isinstance(l, FrozenStatisticsBatchNormalization) for l in loaded.layers)


@pytest.mark.parametrize("kwargs, message", [
    (dict(frozen_stages=5), "frozen_stages"),
    (dict(frozen_stages=-2), "frozen_stages"),
    (dict(frozen_stages=True), "frozen_stages"),
    (dict(norm_eval="yes"), "norm_eval"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _zoo(**kwargs)
