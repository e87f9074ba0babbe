"""Freezing a DynamicPSConv2D, a layer or a whole model: the static PSConv2D
computes the same function, saves, and exports to TFLite with parity."""

import keras
import numpy as np
import pytest
from keras import ops

from export_data import run_tflite
from psconv_tf import DynamicPSConv2D
from psconv_tf import PSConv2D
from psconv_tf import export
from psconv_tf import freeze
from psconv_tf import models
from psconv_tf import profile
from psconv_tf.models import Stage
from test_dynamic_ps_conv2d import numpy_rates
from test_dynamic_ps_conv2d import randomize_factors

RNG = np.random.default_rng(1)


def randomize_model(model, rng):
    for layer in model.layers:
        if isinstance(layer, DynamicPSConv2D):
            randomize_factors(layer, rng)


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("padding", ["same", "symmetric", "valid"])
def test_frozen_layer_equals_the_dynamic_layer_in_float64(strides, groups, padding):
    layer = DynamicPSConv2D(
        8, 3, strides=strides, padding=padding, groups=groups, dtype="float64",
        mask_initializer="random", name="dyn",
    )
    x = RNG.normal(size=(2, 11, 11, 8))
    layer.build(x.shape)
    randomize_factors(layer, RNG)
    layer.bias.assign(RNG.normal(size=8))
    static = layer.freeze()
    assert type(static) is PSConv2D and static.name == "dyn"
    np.testing.assert_array_equal(static.dilation_matrix(), numpy_rates(layer))
    assert len(static.weights) == 2  # kernel and bias, no latent factors
    np.testing.assert_allclose(
        ops.convert_to_numpy(static(x)), ops.convert_to_numpy(layer(x, training=False)),
        rtol=1e-12, atol=1e-12,
    )


def test_frozen_layer_keeps_a_filter_without_large_rate():
    layer = DynamicPSConv2D(4, 3, padding="same", factor_shapes=((4, 1), (1, 4)))
    layer.build((None, 7, 7, 4))
    layer.mask_factors[0].assign([[1.0], [-1.0], [-1.0], [1.0]])
    layer.mask_factors[1].assign([[1.0, 1.0, 1.0, 1.0]])
    static = layer.freeze()
    np.testing.assert_array_equal(static.dilation_matrix()[:, 0], [2, 1, 1, 2])
    x = RNG.normal(size=(1, 7, 7, 4)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(static(x)),
                               ops.convert_to_numpy(layer(x)), atol=1e-5)


def test_valid_padding_without_the_large_rate_cannot_freeze():
    layer = DynamicPSConv2D(4, 3, padding="valid", name="narrow")
    layer.build((None, 9, 9, 4))
    layer.mask_factors[0].assign(-np.ones(layer.mask_factors[0].shape))
    layer.mask_factors[1].assign(np.ones(layer.mask_factors[1].shape))
    with pytest.raises(ValueError, match="'narrow'.*large rate"):
        layer.freeze()


def test_unbuilt_layer_cannot_freeze():
    with pytest.raises(ValueError, match="built"):
        DynamicPSConv2D(4, 3).freeze()


def test_freeze_a_zoo_model_in_one_call():
    model = models.get("dps_cifar_resnet20", input_shape=(16, 16, 3))
    randomize_model(model, RNG)
    frozen = freeze(model)
    assert not any(isinstance(l, DynamicPSConv2D) for l in frozen.layers)
    static = [l for l in frozen.layers if isinstance(l, PSConv2D)]
    dynamic = {l.name: l for l in model.layers if isinstance(l, DynamicPSConv2D)}
    assert len(static) == len(dynamic) == 18
    for layer in static:
        np.testing.assert_array_equal(layer.dilation_matrix(), numpy_rates(dynamic[layer.name]))
    x = RNG.normal(size=(4, 16, 16, 3)).astype("float32")
    expected = ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(ops.convert_to_numpy(frozen(x, training=False)), expected,
                               rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    counts, frozen_counts = profile(model), profile(frozen)
    assert frozen_counts == {
        "params": counts["params"] - counts["latent_params"], "macs": counts["macs"]
    }
    assert frozen_counts == profile(models.get("ps_cifar_resnet20", input_shape=(16, 16, 3)))


def test_freeze_leaves_static_models_alone_and_refuses_subclassed_ones():
    static = models.get("ps_cifar_resnet20")
    assert freeze(static) is static

    class Wrapper(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = DynamicPSConv2D(4, 3, padding="same")

        def call(self, x):
            return self.conv(x)

    wrapper = Wrapper()
    wrapper(np.zeros((1, 8, 8, 4), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        freeze(wrapper)


def test_frozen_model_saves_and_exports_to_tflite_with_parity(tmp_path):
    # Two blocks of the zoo's dynamic ResNet-20, at strides 1 and 2.
    model = models.get("dps_cifar_resnet20", input_shape=(28, 28, 1),
                       stages=(Stage(1, 8, 1), Stage(1, 16, 2)), stem_filters=8)
    randomize_model(model, RNG)
    frozen = freeze(model)
    path = str(tmp_path / "frozen.keras")
    frozen.save(path)
    loaded = keras.models.load_model(path)
    images = RNG.integers(0, 256, (4, 28, 28, 1)).astype("float32")
    expected = ops.convert_to_numpy(model(images / 255.0, training=False))
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(images / 255.0)), expected,
                               rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    saved_model = export.export_saved_model(
        loaded, str(tmp_path / "saved_model"), normalization=((0.0,), (1.0,))
    )
    outputs = run_tflite(export.convert_to_tflite(saved_model, "float32"), images)
    error = np.abs(outputs - expected).max() / np.abs(expected).max()
    assert error <= 1e-5, error
