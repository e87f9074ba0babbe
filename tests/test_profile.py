"""profile(): parameters and MACs of layers other than the zoo's."""

import keras
import pytest

from psconv_tf import PSConv2D
from psconv_tf import profile


def test_counts_conv_depthwise_dense_and_psconv_by_hand():
    inputs = keras.Input((10, 10, 8))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", groups=2)(inputs)  # 5x5
    x = keras.layers.DepthwiseConv2D(3, padding="valid", depth_multiplier=2)(x)  # 3x3
    x = PSConv2D(32, 3, padding="same", pattern=(1, 2), use_bias=False)(x)
    x = keras.layers.Dense(4)(x)  # applied at each of the 3x3 positions
    model = keras.Model(inputs, x)
    macs = (
        5 * 5 * 9 * 4 * 16
        + 3 * 3 * 9 * 32
        + 3 * 3 * 9 * 32 * 32
        + 3 * 3 * 32 * 4
    )
    params = (9 * 4 * 16 + 16) + (9 * 32 + 32) + 9 * 32 * 32 + (32 * 4 + 4)
    assert profile(model) == {"params": params, "macs": macs}


def test_unknown_size_needs_an_input_shape():
    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, PSConv2D(8, 3, padding="same")(inputs))
    with pytest.raises(ValueError, match="input_shape"):
        profile(model)
    assert profile(model, input_shape=(7, 7, 8))["macs"] == 7 * 7 * 9 * 8 * 8
