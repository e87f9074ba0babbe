"""convert(): PSConv for keras.applications and other graph models."""

import keras
import numpy as np
import pytest
from keras import ops

from psconv_tf import PSConv2D
from psconv_tf import convert
from psconv_tf import profile


@pytest.fixture(scope="module")
def resnet50():
    return keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))


def _convs_3x3(model):
    return {
        layer.name
        for layer in model.layers
        if type(layer) is keras.layers.Conv2D and layer.kernel_size == (3, 3)
    }


def test_keras_applications_resnet50(resnet50):
    converted = convert(resnet50)
    ps = {layer.name for layer in converted.layers if isinstance(layer, PSConv2D)}
    # Every 3x3 conv of ResNet50 is "same" and fits t = 4: all 16 convert.
    assert ps == _convs_3x3(resnet50) and len(ps) == 16
    assert profile(converted) == profile(resnet50)
    for old, new in zip(resnet50.layers, converted.layers):
        assert old.name == new.name
        if new.name in ps:
            assert new.kernel.shape == old.kernel.shape
            assert new.strides == old.strides and new.use_bias == old.use_bias
            continue
        for a, b in zip(old.get_weights(), new.get_weights()):
            np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    y = ops.convert_to_numpy(converted(x))
    assert y.shape == (2, 1000) and np.isfinite(y).all()


def test_predicate_and_kernel_transfer(resnet50):
    def only_stage_2(layer):
        return layer.name.startswith("conv2_") and layer.kernel_size == (3, 3)

    converted = convert(resnet50, predicate=only_stage_2, pattern=(1, 2),
                        transfer_kernels=True)
    ps = [layer for layer in converted.layers if isinstance(layer, PSConv2D)]
    assert [layer.name for layer in ps] == [
        "conv2_block1_2_conv", "conv2_block2_2_conv", "conv2_block3_2_conv"
    ]
    for layer in ps:
        assert layer.pattern == (1, 2)
        for a, b in zip(resnet50.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_converted_layer_computes_psconv_with_transferred_kernel():
    inputs = keras.Input((12, 12, 8))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    outputs = keras.layers.ReLU()(x)
    model = keras.Model(inputs, outputs)
    converted = convert(model, transfer_kernels=True)
    reference = PSConv2D(8, 3, padding="same")
    reference.build((None, 12, 12, 8))
    reference.set_weights(model.get_layer("conv").get_weights())
    x = np.random.default_rng(1).normal(size=(2, 12, 12, 8)).astype("float32")
    expected = np.maximum(ops.convert_to_numpy(reference(x)), 0)
    np.testing.assert_allclose(ops.convert_to_numpy(converted(x)), expected, rtol=1e-6, atol=1e-6)


def test_sequential_and_nested_models():
    inner = keras.Sequential(
        [keras.Input((16, 16, 8)), keras.layers.Conv2D(8, 3, padding="same", name="inner")],
        name="block",
    )
    inputs = keras.Input((16, 16, 8))
    outputs = keras.layers.Conv2D(4, 3, padding="same", name="outer")(inner(inputs))
    converted = convert(keras.Model(inputs, outputs))
    block = converted.get_layer("block")
    assert isinstance(block.get_layer("inner"), PSConv2D)
    assert isinstance(converted.get_layer("outer"), PSConv2D)


def test_layers_that_do_not_fit_are_left_alone():
    inputs = keras.Input((16, 16, 6))
    x = keras.layers.Conv2D(8, 3, padding="same", name="six_in")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="valid", name="valid")(x)
    x = keras.layers.Conv2D(8, 5, padding="same", name="five")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="fits")(x)
    converted = convert(keras.Model(inputs, x))
    kinds = {layer.name: type(layer).__name__ for layer in converted.layers[1:]}
    assert kinds == {"six_in": "Conv2D", "valid": "Conv2D", "five": "Conv2D", "fits": "PSConv2D"}


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(8, 3, padding="same")

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 8, 8, 8), "float32"))
    with pytest.raises(ValueError, match="subclassed model"):
        convert(net)


@pytest.mark.parametrize(
    "layer, message",
    [
        (keras.layers.Conv2D(8, 3, padding="valid", name="v"), "'v' has padding='valid'"),
        (keras.layers.Conv2D(6, 3, padding="same", name="six"), "'six' cannot become"),
        (keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2, name="d"), "'d' is dilated"),
    ],
)
def test_chosen_layers_that_cannot_convert_are_named(layer, message):
    inputs = keras.Input((16, 16, 8))
    model = keras.Model(inputs, layer(inputs))
    with pytest.raises(ValueError, match=message):
        convert(model, predicate=lambda l: True)


def _mobilenet_like():
    """Depthwise 3x3 and pointwise convs only, as MobileNetV2's blocks."""
    inputs = keras.Input((16, 16, 8))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(16, 1)(x), name="mobile")


@pytest.mark.parametrize("make_model, predicate, message", [
    (lambda: keras.layers.Conv2D(8, 3, padding="same", name="conv"), None,
     "takes a model; got the layer 'conv' \\(Conv2D\\)"),
    (lambda: keras.Sequential([keras.layers.Conv2D(8, 3, padding="same")], name="seq"), None,
     "Sequential model 'seq' is not built"),
    (_mobilenet_like, None,
     "would convert no layer of model 'mobile': none of its 1 Conv2D layers"),
    (lambda: keras.Sequential([keras.Input((8, 8, 4)), keras.layers.DepthwiseConv2D(3)],
                              name="depthwise"), None,
     "would convert no layer of model 'depthwise': it has no Conv2D layers"),
    (_mobilenet_like, lambda layer: layer.name == "none", "the predicate chose none"),
], ids=["layer", "unbuilt-sequential", "no-fitting-conv", "no-conv", "predicate-none"])
def test_what_cannot_be_converted_is_explained(make_model, predicate, message):
    with pytest.raises(ValueError, match=message):
        convert(make_model(), predicate=predicate)


def test_zoo_grouped_twin_convs_convert_with_their_kernels():
    """The zoo's standard ResNeXt twins use NativeConv2D for grouped 3x3
    convs; convert() treats it as the Conv2D it is."""
    from psconv_tf.layers.native_conv import NativeConv2D

    inputs = keras.Input((12, 12, 16))
    native = NativeConv2D(16, 3, padding="same", groups=2, use_bias=False, name="g")
    model = keras.Model(inputs, native(inputs))
    converted = convert(model, pattern=(1,), transfer_kernels=True)
    layer = converted.get_layer("g")
    assert type(layer) is PSConv2D and layer.groups == 2
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 16)).astype("float32")
    np.testing.assert_allclose(converted(x), model(x), rtol=1e-5, atol=1e-5)
