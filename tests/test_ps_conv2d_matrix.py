"""PSConv2D from an explicit dilation matrix, against the float64 Eq. 3."""

import dataclasses

import keras
import numpy as np
import pytest
from keras import ops

import reference
from psconv_tf import PSConv2D
from psconv_tf.engine.executor import IMPLEMENTATIONS
from test_ps_conv2d import _assert_close
from test_ps_conv2d import _layer_gradients


@dataclasses.dataclass(frozen=True)
class MatrixCase:
    """A random, non-lattice rate matrix and the layer around it."""

    padding: str
    strides: tuple
    groups: int
    rates: tuple = (1, 2, 3)
    filters: int = 6
    in_channels: int = 8
    kernel_size: tuple = (3, 3)
    data_format: str = "channels_last"
    missing_rate: bool = False  # some filters lack a rate entirely

    @property
    def id(self):
        return (f"{self.padding}-s{self.strides[0]}{self.strides[1]}-g{self.groups}"
                f"-r{''.join(map(str, self.rates))}-{self.data_format[9:]}"
                + ("-missing" if self.missing_rate else ""))


CASES = [
    MatrixCase("valid", (1, 1), 1),
    MatrixCase("valid", (2, 2), 2),
    MatrixCase("same", (1, 1), 2, data_format="channels_first"),
    MatrixCase("same", (2, 1), 1, rates=(1, 2, 3, 5)),
    MatrixCase("same", (2, 2), 2, kernel_size=(2, 2), rates=(1, 2)),
    MatrixCase("symmetric", (1, 1), 1, rates=(1, 2, 4), missing_rate=True),
    MatrixCase("symmetric", (2, 2), 2, rates=(1, 3), data_format="channels_first"),
    MatrixCase("valid", (1, 2), 2, kernel_size=(3, 1), rates=(1, 3), missing_rate=True),
]


def random_rates(case, seed=0):
    """(filters, in_channels // groups) rates; not a cyclic lattice."""
    rng = np.random.default_rng(seed)
    shape = (case.filters, case.in_channels // case.groups)
    rates = rng.choice(case.rates, size=shape)
    if case.missing_rate:
        rates[0] = case.rates[0]  # filter 0 has one rate only
        rates[1, :] = case.rates[-1]
    return rates


def _layer_and_input(case, seed=0, implementation="auto"):
    rates = random_rates(case, seed)
    layer = PSConv2D(
        case.filters, case.kernel_size, strides=case.strides, padding=case.padding,
        implementation=implementation,
        groups=case.groups, data_format=case.data_format, dilation_matrix=rates,
        bias_initializer=keras.initializers.RandomNormal(seed=seed),
    )
    x = np.random.default_rng(seed + 1).normal(size=(2, 13, 14, case.in_channels))
    layer_x = x if case.data_format == "channels_last" else x.transpose(0, 3, 1, 2)
    layer.build(layer_x.shape)
    return layer, rates, x, layer_x


def _reference(layer, case, rates, x, kernel=None):
    if kernel is None:
        kernel = layer.kernel.numpy().astype(np.float64)
    bias = layer.bias.numpy().astype(np.float64)
    # Block form of the rates, built independently of the library.
    full = np.zeros((case.filters, case.in_channels), np.int64)
    n_out, n_in = case.filters // case.groups, case.in_channels // case.groups
    for c in range(case.filters):
        g = c // n_out
        full[c, g * n_in : (g + 1) * n_in] = rates[c]
    dense = reference.dense_from_grouped(kernel, case.groups)
    return reference.psconv(x, dense, full, case.strides, case.padding, bias), full


def _channels_last(y, case):
    y = ops.convert_to_numpy(y)
    return y if case.data_format == "channels_last" else y.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_matches_reference(case, implementation):
    layer, rates, x, layer_x = _layer_and_input(case, implementation=implementation)
    expected, full = _reference(layer, case, rates, x)
    np.testing.assert_array_equal(layer.dilation_matrix(), full)
    y = _channels_last(layer(layer_x.astype("float32")), case)
    assert y.shape == expected.shape
    _assert_close(y, expected)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES[1::3], ids=lambda c: c.id)
def test_gradients_match_reference(case, implementation):
    layer, rates, x, layer_x = _layer_and_input(case, implementation=implementation)
    rng = np.random.default_rng(2)
    expected, _ = _reference(layer, case, rates, x)
    cotangent = rng.normal(size=expected.shape)
    config = dict(data_format=case.data_format)
    grad_x, grad_kernel = _layer_gradients(layer, layer_x, cotangent, config)
    kernel = layer.kernel.numpy().astype(np.float64)

    def loss(inputs, kern):
        return float((_reference(layer, case, rates, inputs, kern)[0] * cotangent).sum())

    base = loss(x, kernel)
    dx, dk = rng.normal(size=x.shape), rng.normal(size=kernel.shape)
    np.testing.assert_allclose((grad_x * dx).sum(), loss(x + dx, kernel) - base, rtol=1e-4)
    np.testing.assert_allclose(
        (grad_kernel * dk).sum(), loss(x, kernel + dk) - base, rtol=1e-4
    )


def test_pattern_layer_equals_its_explicit_matrix():
    x = np.random.default_rng(3).normal(size=(2, 12, 12, 16)).astype("float32")
    pattern = PSConv2D(8, 3, padding="same", groups=2, layout="interleaved")
    pattern.build(x.shape)
    explicit = PSConv2D(8, 3, padding="same", groups=2,
                        dilation_matrix=pattern.dilation_matrix())  # block form
    explicit.build(x.shape)
    explicit.set_weights(pattern.get_weights())
    np.testing.assert_array_equal(explicit.dilation_matrix(), pattern.dilation_matrix())
    _assert_close(ops.convert_to_numpy(explicit(x)), ops.convert_to_numpy(pattern(x)))


def test_config_stores_the_matrix_compactly_and_round_trips():
    rates = np.tile(np.repeat([1, 2, 1, 4], 128), (512, 1))
    layer = PSConv2D(512, 3, padding="same", dilation_matrix=rates, dilation_rate=2)
    config = layer.get_config()
    assert config["dilation_matrix"] == "512x512:" + ",".join(
        ["1*128,2*128,1*128,4*128"] * 512
    )
    assert len(config["dilation_matrix"]) < 16000
    assert config["pattern"] is None
    clone = PSConv2D.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 9, 9, 512))
    np.testing.assert_array_equal(clone.dilation_matrix(), 2 * rates)


def test_keras_file_round_trip(tmp_path):
    case = CASES[1]
    rates = random_rates(case)
    inputs = keras.Input((13, 14, case.in_channels))
    layer = PSConv2D(case.filters, 3, strides=2, groups=case.groups,
                     dilation_matrix=rates)
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(4).normal(size=(2, 13, 14, 8)).astype("float32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x))
    )
    np.testing.assert_array_equal(
        loaded.layers[-1].dilation_matrix(), layer.dilation_matrix()
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dilation_matrix=[[1, 2], [2, 1]]), "one row per filter"),
        (dict(dilation_matrix=[1, 2, 1, 4]), "2D"),
        (dict(dilation_matrix=np.ones((4, 2, 2), int)), "2D"),
        (dict(dilation_matrix=np.zeros((4, 0), int)), "non-empty"),
        (dict(dilation_matrix=np.full((4, 4), 1.5)), "integer"),
        (dict(dilation_matrix=np.ones((4, 4))), "integer"),
        (dict(dilation_matrix=np.ones((4, 4), bool)), "integer"),
        (dict(dilation_matrix=-np.ones((4, 4), int)), "positive"),
        (dict(dilation_matrix=3), "2D"),
        (dict(dilation_matrix="4x4:1*15"), "15 rates"),
        (dict(dilation_matrix="4x4:1*16;rm -rf"), "must read"),
        (dict(dilation_matrix="9999999x9999999:1"), "invalid shape"),
        (dict(dilation_matrix=[[1, 2]] * 4, pattern=(1, 2)), "`pattern`"),
        (dict(dilation_matrix=[[1, 2]] * 4, layout="blocked"), "`layout`"),
        (dict(dilation_matrix=[[1, 2]] * 4, kernel_size=2, padding="symmetric"),
         "symmetric"),
        (dict(dilation_matrix=[[1, 2]] * 4, kernel_size=4, padding="valid"), "valid"),
    ],
)
def test_bad_matrices_raise_at_construction(kwargs, message):
    arguments = dict(filters=4, kernel_size=3)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PSConv2D(**arguments)


@pytest.mark.parametrize(
    "matrix, groups, input_shape, message",
    [
        (np.ones((4, 3), int), 1, (None, 9, 9, 4), "3 columns.*4 input channels"),
        (np.ones((4, 4), int), 2, (None, 9, 9, 6), "shape \\(4, 3\\) or \\(4, 6\\)"),
        (np.ones((4, 4), int), 2, (None, 9, 9, 5), "divisible by `groups`"),
        (np.array([[1, 0]] * 4), 1, (None, 9, 9, 2), "positive"),
        (np.ones((4, 4), int), 2, (None, 9, 9, 4), "zero across"),
        (np.kron(np.eye(2, dtype=int), np.ones((2, 2), int)) * [[1, 0, 1, 1]],
         2, (None, 9, 9, 4), "positive inside"),
    ],
)
def test_bad_matrices_raise_at_build(matrix, groups, input_shape, message):
    layer = PSConv2D(4, 3, groups=groups, dilation_matrix=matrix)
    with pytest.raises(ValueError, match=message):
        layer.build(input_shape)


def test_summary_and_plot_show_an_explicit_layer():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from psconv_tf import plot_lattice
    from psconv_tf import summary

    rates = np.array([[1, 1, 3, 3], [1, 1, 1, 1]] * 2)  # filters 1, 3 lack rate 3
    inputs = keras.Input((9, 9, 8))
    model = keras.Model(inputs, PSConv2D(4, 3, groups=2, dilation_matrix=rates)(inputs))
    lines = []
    (row,) = summary(model, print_fn=lines.append)
    assert (row["pattern"], row["cyclic"], row["layout"]) == ("explicit", "-", "-")
    assert row["rates"] == {1: 0.75, 3: 0.25}
    assert "explicit" in lines[1]
    image = plot_lattice(model.layers[-1]).get_images()[0].get_array()
    # One colour index per rate (0 across groups): rows 1 and 3 have no rate 3.
    expected = np.kron(np.eye(2, dtype=int), np.ones((2, 4), int))
    expected[expected > 0] = [1, 1, 2, 2, 1, 1, 1, 1] * 2
    np.testing.assert_array_equal(np.asarray(image), expected)
