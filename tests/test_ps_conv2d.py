"""PSConv2D against a float64 reference of Eq. 3 and against Conv2D."""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

import reference
from psconv_tf import PSConv2D
from psconv_tf.engine.executor import IMPLEMENTATIONS

PATTERNS = {2: (1, 2), 4: (1, 2, 1, 4), 8: (1, 1, 2, 1, 1, 3, 1, 4)}


def _configs():
    """One random configuration per cyclic x layout x padding x stride."""
    rng = np.random.default_rng(2020)
    configs = []
    grid = itertools.product(
        ("both", "input", "output"),
        ("blocked", "interleaved"),
        ("valid", "same", "symmetric"),
        (1, 2),
    )
    for index, (cyclic, layout, padding, stride) in enumerate(grid):
        t = (2, 4, 8)[index % 3]
        groups = int(rng.choice([1, 2]))
        kernel = (3, 3)
        if index % 7 == 3:
            kernel = (5, 5)
        elif index % 7 == 5:
            kernel = (3, 1)
        if padding == "same" and index % 5 == 0:
            kernel = (2, 2)  # even kernels: TensorFlow's SAME rule per rate
            t = 2
        configs.append(
            dict(
                in_channels=groups * t * int(rng.integers(1, 3)),
                filters=groups * t * int(rng.integers(1, 3)),
                kernel_size=kernel,
                strides=(stride, stride) if index % 4 else (stride, 1),
                padding=padding,
                groups=groups,
                pattern=PATTERNS[t],
                cyclic=cyclic,
                layout=layout,
                dilation_rate=2 if index % 11 == 7 else 1,
                data_format=("channels_last", "channels_first")[index % 2],
                size=(int(rng.integers(17, 24)), int(rng.integers(17, 24))),
            )
        )
    return configs


CONFIGS = _configs()


def _config_id(config):
    return "{cyclic}-{layout}-{padding}-s{strides[0]}{strides[1]}-t{t}-g{groups}-{fmt}".format(
        t=len(config["pattern"]), fmt=config["data_format"][9:], **config
    )


def _layer_and_input(config, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    kwargs = {k: v for k, v in config.items() if k not in ("in_channels", "size")}
    kwargs.update(overrides)
    layer = PSConv2D(
        bias_initializer=keras.initializers.RandomNormal(seed=seed), **kwargs
    )
    shape = (2,) + config["size"] + (config["in_channels"],)
    x = rng.normal(size=shape)
    layer_x = x if config["data_format"] == "channels_last" else x.transpose(0, 3, 1, 2)
    layer.build(layer_x.shape)
    return layer, x, layer_x


def _expected_matrix(config):
    """D built from the paper (interleaved) or the official layer (blocked)."""
    if config["layout"] == "interleaved":
        matrix = reference.paper_lattice(
            config["in_channels"], config["filters"], config["pattern"],
            config["groups"], config["cyclic"],
        )
    else:
        matrix = _blocked_lattice(config)
    return matrix * config["dilation_rate"]


def _blocked_lattice(config):
    """Blocked D: input block j at cycle position j + 1, filter block j at j."""
    pattern, t = config["pattern"], len(config["pattern"])
    groups = config["groups"]
    n_in = config["in_channels"] // groups
    n_out = config["filters"] // groups
    matrix = np.zeros((config["filters"], config["in_channels"]), np.int64)
    for c in range(config["filters"]):
        for k in range(config["in_channels"]):
            if c // n_out != k // n_in:
                continue
            a = ((k % n_in) // (n_in // t) + 1) % t if config["cyclic"] != "output" else 0
            b = (c % n_out) // (n_out // t) if config["cyclic"] != "input" else 0
            if config["cyclic"] == "both":
                matrix[c, k] = pattern[(a - b) % t]
            elif config["cyclic"] == "input":
                matrix[c, k] = pattern[a]
            else:
                matrix[c, k] = pattern[b]
    return matrix


def _reference_output(layer, config, x):
    kernel, *bias = [w.numpy() for w in layer.weights]
    dense = reference.dense_from_grouped(kernel.astype(np.float64), config["groups"])
    return reference.psconv(
        x, dense, _expected_matrix(config), config["strides"], config["padding"],
        bias[0] if bias else None,
    )


def _to_channels_last(y, config):
    y = ops.convert_to_numpy(y)
    return y if config["data_format"] == "channels_last" else y.transpose(0, 2, 3, 1)


def _assert_close(actual, expected, rtol=2e-5):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale * 10)


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_dilation_matrix_follows_the_paper(config):
    layer, _, _ = _layer_and_input(config)
    np.testing.assert_array_equal(layer.dilation_matrix(), _expected_matrix(config))


@pytest.mark.parametrize(
    "config, implementation",
    [(config, "auto") for config in CONFIGS]
    + [(config, name) for name in IMPLEMENTATIONS for config in CONFIGS[::2]],
    ids=lambda v: v if isinstance(v, str) else _config_id(v),
)
def test_forward_matches_reference(config, implementation):
    layer, x, layer_x = _layer_and_input(config, implementation=implementation)
    y = _to_channels_last(layer(layer_x.astype("float32")), config)
    expected = _reference_output(layer, config, x)
    assert y.shape == expected.shape
    assert layer.compute_output_shape(layer_x.shape)[1:] == layer(
        layer_x.astype("float32")
    ).shape[1:]
    _assert_close(y, expected)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("config", CONFIGS[::6], ids=_config_id)
def test_gradients_match_reference(config, implementation):
    """Directional derivatives of sum(y * g) against the reference.

    The layer is linear in its input and in its kernel, so the reference's
    change along a direction is exactly the directional derivative.
    """
    layer, x, layer_x = _layer_and_input(config, implementation=implementation)
    rng = np.random.default_rng(1)
    kernel = layer.kernel.numpy().astype(np.float64)
    y_shape = _reference_output(layer, config, x).shape
    cotangent = rng.normal(size=y_shape)
    grad_x, grad_kernel = _layer_gradients(layer, layer_x, cotangent, config)
    matrix = _expected_matrix(config)

    def loss(inputs, kern):
        dense = reference.dense_from_grouped(kern, config["groups"])
        y = reference.psconv(inputs, dense, matrix, config["strides"], config["padding"])
        return float((y * cotangent).sum())

    base = loss(x, kernel)
    for _ in range(2):
        dx = rng.normal(size=x.shape)
        dk = rng.normal(size=kernel.shape)
        # float32 gradients: the error of a sum grows with its terms' sizes,
        # not with the (possibly cancelling) total.
        for grad, step, change in ((grad_x, dx, loss(x + dx, kernel) - base),
                                   (grad_kernel, dk, loss(x, kernel + dk) - base)):
            terms = grad * step
            np.testing.assert_allclose(terms.sum(), change, rtol=1e-4,
                                       atol=1e-5 * np.abs(terms).sum())


def _layer_gradients(layer, layer_x, cotangent, config):
    """Gradients of sum(layer(x) * cotangent) w.r.t. x and kernel, NHWC x."""
    if config["data_format"] == "channels_first":
        cotangent = cotangent.transpose(0, 3, 1, 2)
    backend = keras.backend.backend()
    x32 = layer_x.astype("float32")
    g32 = cotangent.astype("float32")
    if backend == "tensorflow":
        import tensorflow as tf

        x_var = tf.Variable(x32)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x_var) * g32)
        grad_x, grad_k = tape.gradient(loss, [x_var, layer.kernel.value])
    elif backend == "jax":
        import jax

        def stateless(inputs, kernel_value):
            values = [kernel_value] + [w.value for w in layer.weights[1:]]
            y, _ = layer.stateless_call(values, [], inputs)
            return (y * g32).sum()

        grad_x, grad_k = jax.grad(stateless, argnums=(0, 1))(
            x32, layer.kernel.value
        )
    else:
        import torch

        x_t = torch.tensor(x32, requires_grad=True)
        loss = (layer(x_t) * torch.tensor(g32)).sum()
        loss.backward()
        grad_x, grad_k = x_t.grad, layer.kernel.value.grad
    grad_x = np.asarray(ops.convert_to_numpy(grad_x), np.float64)
    if config["data_format"] == "channels_first":
        grad_x = grad_x.transpose(0, 2, 3, 1)
    return grad_x, np.asarray(ops.convert_to_numpy(grad_k), np.float64)


@pytest.mark.parametrize("rate", [1, 2, 3])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("groups", [1, 4])
def test_single_rate_pattern_is_conv2d(rate, padding, groups):
    x = np.random.default_rng(3).normal(size=(2, 15, 16, 8)).astype("float32")
    ps = PSConv2D(8, 3, padding=padding, pattern=(rate,), groups=groups)
    conv = keras.layers.Conv2D(8, 3, padding=padding, dilation_rate=rate, groups=groups)
    ps.build(x.shape)
    conv.build(x.shape)
    conv.set_weights(ps.get_weights())
    _assert_close(ops.convert_to_numpy(ps(x)), ops.convert_to_numpy(conv(x)))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_single_rate_pattern_is_strided_conv2d(padding):
    x = np.random.default_rng(4).normal(size=(2, 15, 16, 8)).astype("float32")
    ps = PSConv2D(8, 3, strides=2, padding=padding, pattern=(1,))
    conv = keras.layers.Conv2D(8, 3, strides=2, padding=padding)
    ps.build(x.shape)
    conv.build(x.shape)
    conv.set_weights(ps.get_weights())
    _assert_close(ops.convert_to_numpy(ps(x)), ops.convert_to_numpy(conv(x)))


@pytest.mark.parametrize(
    "in_channels, filters, groups, pattern",
    [(64, 64, 1, (1, 2, 1, 4)), (256, 128, 1, (1, 2)), (128, 128, 32, (1, 2, 1, 4)),
     (64, 32, 2, (1, 1, 2, 1, 1, 3, 1, 4))],
)
def test_parameters_and_macs_equal_conv2d(in_channels, filters, groups, pattern):
    shape = (None, 28, 28, in_channels)
    ps = PSConv2D(filters, 3, padding="same", groups=groups, pattern=pattern)
    conv = keras.layers.Conv2D(filters, 3, padding="same", groups=groups)
    ps.build(shape)
    conv.build(shape)
    assert ps.count_params() == conv.count_params()
    assert [w.shape for w in ps.weights] == [w.shape for w in conv.weights]
    conv_macs = 28 * 28 * 9 * (in_channels // groups) * filters
    assert ps.macs(shape[1:]) == conv_macs


def test_default_pattern_is_three_convolutions():
    layer = PSConv2D(64, 3, padding="same")
    layer.build((None, 56, 56, 64))
    steps = layer._plan.steps
    assert sorted(step.rate for step in steps) == [1, 2, 4]
    # Every kernel is computed exactly once.
    kernels = sum(step.inputs.shape[1] * step.outputs.size for step in steps)
    assert kernels == 64 * 64


def test_blocked_layout_is_the_official_lattice():
    for groups in (1, 2, 8):
        layer = PSConv2D(32 * groups // 2, 3, groups=groups)
        layer.build((None, 9, 9, 16 * groups))
        expected = reference.official_lattice(16 * groups, 32 * groups // 2, groups)
        np.testing.assert_array_equal(layer.dilation_matrix(), expected)


def test_layouts_are_one_function_up_to_channel_permutation():
    """Blocked = interleaved with channels sorted by cycle position."""
    pattern, t, groups, n_in, n_out = (1, 1, 2, 3), 4, 2, 8, 12
    blocked = PSConv2D(n_out * groups, 3, pattern=pattern, groups=groups)
    interleaved = PSConv2D(
        n_out * groups, 3, pattern=pattern, groups=groups, layout="interleaved"
    )
    blocked.build((None, 9, 9, n_in * groups))
    interleaved.build((None, 9, 9, n_in * groups))

    def to_blocked(channel, per_group, shift):
        group, local = divmod(channel, per_group)
        index, position = divmod(local, t)
        block = (position - shift) % t  # blocked input block j is position j+1
        return group * per_group + block * (per_group // t) + index

    rows = [to_blocked(c, n_out, 0) for c in range(n_out * groups)]
    cols = [to_blocked(k, n_in, 1) for k in range(n_in * groups)]
    np.testing.assert_array_equal(
        blocked.dilation_matrix()[np.ix_(rows, cols)],
        interleaved.dilation_matrix(),
    )


def test_dense_kernel_places_grouped_kernels():
    layer = PSConv2D(8, 3, groups=2, pattern=(1, 2))
    layer.build((None, 9, 9, 4))
    kernel = layer.kernel.numpy()
    dense = layer.dense_kernel()
    assert dense.shape == (3, 3, 4, 8)
    np.testing.assert_array_equal(dense, reference.dense_from_grouped(kernel, 2))
    assert (layer.dilation_matrix() == 0).sum() == 16


def test_activation_and_no_bias():
    config = dict(CONFIGS[1])
    layer, x, layer_x = _layer_and_input(config, activation="relu", use_bias=False)
    y = _to_channels_last(layer(layer_x.astype("float32")), config)
    _assert_close(y, np.maximum(_reference_output(layer, config, x), 0))
    assert len(layer.weights) == 1


def test_config_round_trip():
    layer = PSConv2D(
        16, (3, 5), strides=2, padding="symmetric", groups=2, pattern=(1, 3),
        cyclic="input", layout="interleaved", activation="relu",
        kernel_regularizer="l2", name="ps",
    )
    clone = PSConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x = np.random.default_rng(5).normal(size=(1, 12, 12, 8)).astype("float32")
    layer.build(x.shape)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(
        ops.convert_to_numpy(clone(x)), ops.convert_to_numpy(layer(x))
    )


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((16, 16, 8))
    outputs = PSConv2D(8, 3, padding="same", pattern=(1, 2))(inputs)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(6).normal(size=(2, 16, 16, 8)).astype("float32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x))
    )
    assert isinstance(loaded.layers[-1], PSConv2D)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pattern=()), "pattern"),
        (dict(pattern=(1, 0)), "pattern"),
        (dict(pattern=(1, 2.0)), "pattern"),
        (dict(pattern=(1, -2)), "pattern"),
        (dict(pattern="12"), "pattern"),
        (dict(cyclic="rows"), "cyclic"),
        (dict(layout="random"), "layout"),
        (dict(padding="causal"), "padding"),
        (dict(filters=0), "filters"),
        (dict(filters=6, groups=4), "filters"),
        (dict(groups=0), "groups"),
        (dict(kernel_size=(3, 0)), "kernel_size"),
        (dict(strides=(1, 2, 3)), "strides"),
        (dict(dilation_rate=(1, 2)), "dilation_rate"),
        (dict(data_format="NHWC"), "data_format"),
        (dict(kernel_size=3.0), "kernel_size"),
        (dict(kernel_size=True), "kernel_size"),
        (dict(kernel_size=None), "kernel_size"),
        (dict(kernel_size="3"), "kernel_size"),
        (dict(strides=True), "strides"),
        (dict(strides=(1.0, 1)), "strides"),
        (dict(filters=True), "filters"),
        (dict(filters=8.0), "filters"),
        (dict(groups=True), "groups"),
        (dict(implementation="fast"), "implementation"),
        (dict(kernel_size=2, padding="symmetric", pattern=(1, 2)), "symmetric"),
        (dict(kernel_size=4, padding="valid", pattern=(1, 2)), "valid"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, message):
    arguments = dict(filters=8, kernel_size=3)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PSConv2D(**arguments)


@pytest.mark.parametrize(
    "kwargs, input_shape, message",
    [
        (dict(filters=8), (None, 9, 9, 6), "input channels"),
        (dict(filters=6, pattern=(1, 2, 1, 4)), (None, 9, 9, 8), "filters"),
        (dict(filters=8, groups=2), (None, 9, 9, 12), "input channels"),
        (dict(filters=8), (None, 9, 9, 9, 8), "rank 4"),
        (dict(filters=8), (None, 9, 8), "rank 4"),
        (dict(filters=8), (None, 9, 9, None), "channel"),
        (dict(filters=8, padding="valid"), (None, 8, 8, 8), "too small"),
    ],
)
def test_bad_inputs_raise_at_build(kwargs, input_shape, message):
    layer = PSConv2D(kernel_size=3, **kwargs)
    with pytest.raises(ValueError, match=message):
        layer.build(input_shape)


def test_ablations_only_check_the_axis_that_varies():
    # Rates along inputs only: the filters need not fit the cycle.
    PSConv2D(6, 3, cyclic="input").build((None, 9, 9, 8))
    PSConv2D(8, 3, cyclic="output").build((None, 9, 9, 6))
    with pytest.raises(ValueError, match="input channels"):
        PSConv2D(8, 3, cyclic="input").build((None, 9, 9, 6))


def test_inspection_needs_a_built_layer():
    with pytest.raises(ValueError, match="built"):
        PSConv2D(8, 3).dilation_matrix()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "padding, stride, size",
    [("valid", 1, 8), ("valid", 2, 4), ("same", 2, 8), ("symmetric", 2, 8)],
)
def test_empty_batch_gives_empty_output(padding, stride, size, implementation):
    # Largest rate 4: "valid" keeps 16 - 4 * 2 = 8 rows at stride 1.
    layer = PSConv2D(4, 3, strides=stride, padding=padding, implementation=implementation)
    y = layer(np.zeros((0, 16, 16, 16), "float32"))
    assert tuple(y.shape) == (0, size, size, 4)


@pytest.mark.parametrize("strides, padding", [(1, "same"), (2, "valid")])
def test_native_conv2d_equals_conv2d(strides, padding):
    from psconv_tf import NativeConv2D

    x = np.random.default_rng(7).normal(size=(2, 11, 11, 16)).astype("float32")
    native = NativeConv2D(8, 3, strides=strides, padding=padding, groups=4)
    native.build(x.shape)
    expected = reference.conv_valid(
        reference._pad(x.astype(np.float64), [(1, 1)] * 2 if padding == "same" else [(0, 0)] * 2),
        reference.dense_from_grouped(native.kernel.numpy(), 4),
        (strides, strides), 1,
    ) + native.bias.numpy()
    _assert_close(ops.convert_to_numpy(native(x)), expected)
    clone = keras.layers.deserialize(keras.layers.serialize(native))
    assert type(clone) is NativeConv2D and clone.get_config() == native.get_config()


def _assert_same_non_finite(actual, expected):
    for kind in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(kind(actual), kind(expected), err_msg=kind.__name__)
    finite = np.isfinite(expected)
    _assert_close(actual[finite], expected[finite])


@pytest.mark.parametrize("implementation", ("auto",) + IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "padding, strides, groups, data_format",
    [("same", 1, 1, "channels_last"), ("symmetric", 2, 2, "channels_last"),
     ("valid", 1, 2, "channels_first")],
)
def test_non_finite_inputs_propagate_as_eq3(padding, strides, groups, data_format, implementation):
    """One +Inf, one -Inf and one NaN pixel reach exactly the outputs whose
    kernels read them at their own rate, with Eq. 3's sign (no Inf * 0 from
    the kernels of other rates)."""
    x = np.random.default_rng(8).normal(size=(2, 13, 13, 8))
    x[0, 5, 6, 3], x[0, 2, 2, 5], x[1, 9, 3, 0] = np.inf, -np.inf, np.nan
    x[1, 6, 6, 2] = x[1, 6, 7, 2] = np.inf  # terms of both infinities meet
    x[1, 6, 8, 6] = -np.inf
    layer = PSConv2D(8, 3, strides=strides, padding=padding, groups=groups,
                     data_format=data_format, implementation=implementation)
    layer_x = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
    y = _to_channels_last(layer(layer_x.astype("float32")), dict(data_format=data_format))
    kernel, bias = [w.numpy().astype(np.float64) for w in layer.weights]
    expected = reference.psconv_exact(
        x, reference.dense_from_grouped(kernel, groups), layer.dilation_matrix(),
        layer.strides, padding, bias,
    )
    assert np.isnan(expected).any() and np.isposinf(expected).any()
    _assert_same_non_finite(y, expected)
