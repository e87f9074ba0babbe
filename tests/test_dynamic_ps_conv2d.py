"""DynamicPSConv2D: exact binary forward, the documented STE gradient, the
Kronecker structure during training, Eq. 3 in training mode, round trips.

References are independent of the layer: the mask is rebuilt from the stored
factors with NumPy's sign and kron, outputs come from the float64 Eq. 3 of
reference.py, and the gradient of the loss with respect to a relaxed
(real-valued) mask comes from central differences of that reference.
"""

import keras
import numpy as np
import pytest
from keras import ops

import reference
from psconv_tf import DynamicPSConv2D
from psconv_tf import PSConv2D
from psconv_tf.layers.kronecker_mask import binarize

RNG = np.random.default_rng(0)
# Gradients are taken with tf.GradientTape; the rest runs on every backend
# (test_dynamic_backends.py).
tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="uses tf.GradientTape"
)


def numpy_signs(layer):
    """+-1 mask of `layer` from its stored factors (sign(0) = +1)."""
    scale = np.sqrt(layer.mask_learning_rate_multiplier)
    signs = [np.where(scale * f.numpy() >= 0, 1, -1) for f in layer.mask_factors]
    product = signs[0]
    for factor in signs[1:]:
        product = np.kron(product, factor)
    return product, signs


def numpy_rates(layer):
    """(filters, in_channels) D of `layer` from its factors, 0 across groups."""
    signs, _ = numpy_signs(layer)
    compact = np.where(signs > 0, layer.large_rate, layer.small_rate)
    filters, n_in = compact.shape
    ones = np.kron(np.eye(layer.groups, dtype=np.int64),
                   np.ones((filters // layer.groups, n_in), np.int64))
    return np.tile(compact, (1, layer.groups)) * ones


def randomize_factors(layer, rng):
    for factor in layer.mask_factors:
        factor.assign(rng.uniform(-1.5, 1.5, factor.shape))


@pytest.mark.parametrize("surrogate", ["clipped_identity", "identity", "tanh"])
def test_binarize_forward_is_exactly_plus_minus_one(surrogate):
    values = np.array([-3.0, -1.0, -0.3, -1e-30, -0.0, 0.0, 1e-30, 0.1, 0.7, 1.0, 7.0])
    for dtype in ("float16", "float32", "float64"):
        out = ops.convert_to_numpy(binarize(ops.convert_to_tensor(values, dtype), surrogate))
        cast = values.astype(dtype)  # float16 rounds -1e-30 to -0.0: +1
        np.testing.assert_array_equal(out, np.where(cast >= 0, 1.0, -1.0))


def test_mask_is_exactly_binary_for_random_factors():
    layer = DynamicPSConv2D(8, 3, padding="same", mask_initializer="random")
    layer.build((None, 6, 6, 8))
    randomize_factors(layer, RNG)
    mask = ops.convert_to_numpy(layer.mask())
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask, (numpy_signs(layer)[0] + 1) / 2)


def _surrogate_derivative(name, a):
    if name == "clipped_identity":
        return (np.abs(a) <= 1).astype(np.float64)
    if name == "identity":
        return np.ones_like(a)
    return 1 - np.tanh(a) ** 2


def _expected_factor_gradients(layer, d_mask, surrogate):
    """Hand-written chain rule for M = (1 + kron(sign A1, sign A2)) / 2 with
    A = sqrt(mu) V: dL/dV = sqrt(mu) * s'(A) * dL/dsign(A)."""
    scale = np.sqrt(layer.mask_learning_rate_multiplier)
    _, (s1, s2) = numpy_signs(layer)
    (m1, n1), (m2, n2) = s1.shape, s2.shape
    blocks = (d_mask / 2).reshape(m1, m2, n1, n2)  # [i, p, j, q]
    d_signs = (np.einsum("ipjq,pq->ij", blocks, s2), np.einsum("ipjq,ij->pq", blocks, s1))
    return [
        scale * _surrogate_derivative(surrogate, scale * f.numpy()) * d_sign
        for f, d_sign in zip(layer.mask_factors, d_signs)
    ]


def _dynamic_layer(surrogate, dtype):
    mu = 4.0
    layer = DynamicPSConv2D(
        4, 3, padding="same", use_bias=False, dtype=dtype, surrogate=surrogate,
        factor_shapes=((2, 2), (2, 2)), mask_learning_rate_multiplier=mu,
    )
    layer.build((None, 6, 6, 4))
    # Factor values inside and outside the clipping window [-1, 1].
    layer.mask_factors[0].assign(np.array([[0.3, -0.8], [0.6, -0.2]]) / np.sqrt(mu))
    layer.mask_factors[1].assign(np.array([[-0.4, 0.9], [1.2, -1.7]]) / np.sqrt(mu))
    return layer


@tensorflow_only
@pytest.mark.parametrize("surrogate", ["clipped_identity", "identity", "tanh"])
def test_mask_gradient_is_the_documented_surrogate_in_float64(surrogate):
    """L = sum(C * M) for a random C: dL/dM = C, through the STE by hand."""
    import tensorflow as tf

    layer = _dynamic_layer(surrogate, "float64")
    weights = RNG.normal(size=(4, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(weights * layer.mask())
    gradients = tape.gradient(loss, layer.mask_factors)
    expected = _expected_factor_gradients(layer, weights, surrogate)
    for gradient, value in zip(gradients, expected):
        np.testing.assert_allclose(gradient.numpy(), value, rtol=1e-12, atol=1e-15)
    if surrogate == "clipped_identity":
        assert gradients[1].numpy()[1, 1] == 0.0  # |A| = 1.7: outside the window


def _reference_loss(x, dense, mask, cotangent):
    """sum(cotangent * y) of Eq. 3 in float64 for a real-valued mask M
    (1: large rate): linear in M."""
    ones = np.ones(mask.shape, np.int64)
    y = reference.psconv(x, dense * (1 - mask).T, ones, (1, 1), "same")
    y = y + reference.psconv(x, dense * mask.T, 2 * ones, (1, 1), "same")
    return float(np.sum(cotangent * y))


@tensorflow_only
@pytest.mark.parametrize("surrogate", ["clipped_identity", "identity", "tanh"])
def test_layer_factor_gradient_is_the_surrogate_of_the_eq3_gradient(surrogate):
    """Through the convolutions (TensorFlow's CPU kernels differentiate
    dilated convolutions in float32 only): dL/dM from the float64 reference,
    exactly, since the loss is linear in M."""
    import tensorflow as tf

    layer = _dynamic_layer(surrogate, "float32")
    x = RNG.normal(size=(1, 6, 6, 4))
    layer.kernel.assign(RNG.normal(size=layer.kernel.shape))
    cotangent = RNG.normal(size=(1, 6, 6, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(cotangent.astype("float32") * layer(x.astype("float32")))
    gradients = tape.gradient(loss, layer.mask_factors)

    dense = layer.kernel.numpy().astype(np.float64)
    mask = (numpy_signs(layer)[0] + 1) / 2.0
    base = _reference_loss(x, dense, np.zeros_like(mask), cotangent)
    d_mask = np.zeros_like(mask)
    for index in np.ndindex(mask.shape):
        unit = np.zeros_like(mask)
        unit[index] = 1.0
        d_mask[index] = _reference_loss(x, dense, unit, cotangent) - base
    expected = _expected_factor_gradients(layer, d_mask, surrogate)
    for gradient, value in zip(gradients, expected):
        np.testing.assert_allclose(
            gradient.numpy(), value, rtol=1e-4, atol=1e-4 * np.abs(value).max()
        )


def _is_kronecker(signs, shapes):
    """S = kron(F1, F2) of the given shapes iff its rearrangement has rank 1."""
    (m1, n1), (m2, n2) = shapes
    blocks = signs.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
    return np.linalg.matrix_rank(blocks.astype(np.float64)) == 1


@tensorflow_only
def test_kronecker_structure_holds_at_every_optimizer_step():
    import tensorflow as tf

    layer = DynamicPSConv2D(
        8, 3, padding="same", factor_shapes=((2, 2), (2, 2), (2, -1)),
        surrogate="identity", mask_learning_rate_multiplier=100.0,
    )
    x = RNG.normal(size=(4, 6, 6, 8)).astype("float32")
    target = RNG.normal(size=(4, 6, 6, 8)).astype("float32")
    layer.build(x.shape)
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    masks = [2 * ops.convert_to_numpy(layer.mask()) - 1]
    for _ in range(8):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((layer(x) - target) ** 2)
        variables = layer.trainable_variables
        optimizer.apply(tape.gradient(loss, variables), variables)
        signs = 2 * ops.convert_to_numpy(layer.mask()) - 1
        assert _is_kronecker(signs, ((2, 2), (4, 4)))
        assert _is_kronecker(signs, ((4, 4), (2, 2)))
        masks.append(signs)
    assert any(not np.array_equal(masks[0], m) for m in masks[1:]), "no rate flipped"


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("padding", ["same", "symmetric", "valid"])
def test_training_output_is_eq3_in_float64(strides, groups, padding):
    layer = DynamicPSConv2D(
        8, 3, strides=strides, padding=padding, groups=groups, rates=(1, 3),
        dtype="float64", mask_initializer="random",
    )
    x = RNG.normal(size=(2, 11, 11, 8))
    layer.build(x.shape)
    randomize_factors(layer, RNG)
    layer.bias.assign(RNG.normal(size=8))
    y = ops.convert_to_numpy(layer(x, training=True))
    dense = reference.dense_from_grouped(layer.kernel.numpy(), groups)
    expected = reference.psconv(
        x, dense, numpy_rates(layer), (strides, strides), padding, layer.bias.numpy()
    )
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(layer.dilation_matrix(), numpy_rates(layer))


@pytest.mark.parametrize("strides, groups, padding", [(1, 1, "same"), (2, 2, "valid")])
def test_non_finite_inputs_propagate_as_eq3(strides, groups, padding):
    """Inf and NaN pixels reach exactly the outputs that Eq. 3 makes
    non-finite: the two masked convolutions add no Inf * 0."""
    layer = DynamicPSConv2D(8, 3, strides=strides, padding=padding, groups=groups,
                            rates=(1, 3), mask_initializer="random")
    x = RNG.normal(size=(2, 13, 13, 8))
    x[0, 5, 6, 3], x[1, 2, 2, 5], x[0, 9, 3, 0] = np.inf, -np.inf, np.nan
    layer.build(x.shape)
    randomize_factors(layer, RNG)
    y = ops.convert_to_numpy(layer(x.astype("float32"), training=True))
    dense = reference.dense_from_grouped(layer.kernel.numpy().astype(np.float64), groups)
    expected = reference.psconv_exact(
        x, dense, numpy_rates(layer), (strides, strides), padding, layer.bias.numpy()
    )
    assert np.isnan(expected).any() and np.isinf(expected).any()
    for kind in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(kind(y), kind(expected), err_msg=kind.__name__)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-4, atol=1e-4)


def test_channels_first_equals_channels_last():
    x = RNG.normal(size=(2, 9, 9, 8)).astype("float32")
    last = DynamicPSConv2D(8, 3, padding="same", mask_initializer="random")
    last.build(x.shape)
    randomize_factors(last, RNG)
    first = DynamicPSConv2D(8, 3, padding="same", data_format="channels_first")
    first.build((2, 8, 9, 9))
    first.set_weights(last.get_weights())
    np.testing.assert_allclose(
        ops.convert_to_numpy(first(np.transpose(x, (0, 3, 1, 2)))),
        np.transpose(ops.convert_to_numpy(last(x)), (0, 3, 1, 2)), atol=1e-5,
    )


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("pattern", [(1, 2, 1, 2), (1, 2, 1, 1), (2, 1, 1, 1, 2, 2)])
def test_lattice_initialization_is_the_static_lattice(groups, pattern):
    channels = 2 * groups * len(pattern)
    layer = DynamicPSConv2D(channels, 3, groups=groups, initial_pattern=pattern)
    layer.build((None, 9, 9, channels))
    static = PSConv2D(channels, 3, groups=groups, pattern=pattern)
    static.build((None, 9, 9, channels))
    np.testing.assert_array_equal(layer.dilation_matrix(), static.dilation_matrix())


def test_shares_and_costs():
    layer = DynamicPSConv2D(16, 3, padding="same", use_bias=False)
    layer.build((None, 8, 8, 16))
    assert layer.rate_shares() == {1: 0.5, 2: 0.5}
    assert layer.macs((8, 8, 16)) == 8 * 8 * 9 * 16 * 16
    assert layer.training_macs((8, 8, 16)) == 2 * 8 * 8 * 9 * 16 * 16
    assert layer.latent_parameters() == 4 * 4 + 4 * 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rates=(2, 1)), "rates"),
        (dict(rates=(1, 2, 4)), "rates"),
        (dict(rates=(0, 2)), "rates"),
        (dict(pattern=(1, 2)), "pattern"),
        (dict(dilation_rate=2), "dilation_rate"),
        (dict(surrogate="sigmoid"), "surrogate"),
        (dict(mask_initializer="ones"), "mask_initializer"),
        (dict(initial_pattern=(1, 4)), "initial_pattern"),
        (dict(mask_learning_rate_multiplier=float("nan")), "multiplier"),
        (dict(mask_learning_rate_multiplier=0), "multiplier"),
        (dict(mask_learning_rate_multiplier=True), "multiplier"),
        (dict(factor_shapes=((-1, 2), (-1, 2))), "factor_shapes"),
        (dict(factor_shapes=((2, 0),)), "factor_shapes"),
        (dict(factor_shapes="4x4"), "factor_shapes"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicPSConv2D(8, 3, **kwargs)


def test_factor_shapes_that_do_not_fit_are_named_at_build():
    layer = DynamicPSConv2D(8, 3, factor_shapes=((3, 2), (-1, -1)))
    with pytest.raises(ValueError, match="factor_shapes.*multiply to 8"):
        layer.build((None, 9, 9, 8))


def test_lattice_that_is_no_kronecker_product_is_named():
    layer = DynamicPSConv2D(8, 3, factor_shapes=((2, 2), (-1, -1)),
                            initial_pattern=(1, 2, 1, 1))
    with pytest.raises(ValueError, match="not a Kronecker product"):
        layer.build((None, 9, 9, 8))


def test_keras_file_round_trip_keeps_the_learned_mask(tmp_path):
    inputs = keras.Input((9, 9, 8))
    layer = DynamicPSConv2D(8, 3, padding="same", surrogate="tanh",
                            factor_shapes=((2, 2), (-1, -1)),
                            mask_learning_rate_multiplier=3.0, name="dyn")
    model = keras.Model(inputs, layer(inputs))
    randomize_factors(layer, RNG)  # a mask the initializer would not give
    path = str(tmp_path / "dynamic.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    twin = loaded.get_layer("dyn")
    assert isinstance(twin, DynamicPSConv2D)
    assert twin.get_config() == layer.get_config()
    np.testing.assert_array_equal(twin.dilation_matrix(), layer.dilation_matrix())
    x = RNG.normal(size=(2, 9, 9, 8)).astype("float32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x))
    )
