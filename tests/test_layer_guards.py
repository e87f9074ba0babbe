"""Crafted and careless arguments reach PSConv2D by every route (constructor,
config, `.keras` file, keras-hub preset): each is refused with a ValueError
naming the argument, before anything is allocated or any op runs."""

import json
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

import psconv_tf
from psconv_tf import DynamicPSConv2D
from psconv_tf import PSConv2D

# Values that overflow the int32 attributes of the convolution ops (TensorFlow
# aborted or crashed the process on them at the first call).
CRAFTED = [
    (dict(pattern=[2**31]), "pattern"),
    (dict(pattern=[2]), None),
    (dict(dilation_rate=[10**9, 10**9]), "dilation_rate"),
    (dict(dilation_matrix=np.full((4, 4), 2**62)), "dilation_matrix"),
    (dict(dilation_matrix="4x4:999999*16"), "dilation_matrix"),
    (dict(dilation_matrix=np.full((4, 4), 2**64 - 1, np.uint64)), "dilation_matrix"),
    (dict(strides=2**31), "strides"),
    (dict(kernel_size=[2**31, 3]), "kernel_size"),
    (dict(pattern=[1, 2, 1, 512], dilation_rate=4), "`pattern` x `dilation_rate`"),
    (dict(dilation_matrix=[[1, 2, 1, 256]] * 4, dilation_rate=8),
     "`dilation_matrix` x `dilation_rate`"),
]


@pytest.mark.parametrize("kwargs, name", CRAFTED)
def test_crafted_rates_are_refused_at_construction_and_from_config(kwargs, name):
    arguments = dict(filters=4, kernel_size=3, padding="same")
    arguments.update(kwargs)
    if name is None:  # the control: a valid configuration
        PSConv2D.from_config(PSConv2D(**arguments).get_config())
        return
    with pytest.raises(ValueError, match=name):
        PSConv2D(**arguments)
    config = PSConv2D(4, 3).get_config()
    config.update(kwargs)
    if "dilation_matrix" in kwargs:
        config.update(pattern=None, cyclic=None, layout=None)
    with pytest.raises(ValueError, match=name):
        PSConv2D.from_config(config)


@pytest.mark.parametrize("rates", [[1, 2**40], [1, 2**31], [1, 1025]])
def test_crafted_dynamic_rates_are_refused(rates):
    config = DynamicPSConv2D(4, 3).get_config()
    config["rates"] = rates
    with pytest.raises(ValueError, match="`rates`"):
        DynamicPSConv2D.from_config(config)


def _rewrite_layer_config(path, class_name, **changes):
    """Rewrites the config of the first `class_name` layer of a .keras file."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    layer = next(
        layer for layer in config["config"]["layers"] if layer["class_name"] == class_name
    )
    layer["config"].update(changes)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


@pytest.mark.parametrize(
    "layer, changes, name",
    [
        (lambda: PSConv2D(4, 3, padding="same"), dict(pattern=[2**31]), "pattern"),
        (lambda: PSConv2D(4, 3, padding="same"),
         dict(dilation_rate=[10**9, 10**9]), "dilation_rate"),
        (lambda: PSConv2D(4, 3, padding="same"),
         dict(dilation_matrix="4x4:99999*16", pattern=None, cyclic=None, layout=None),
         "dilation_matrix"),
        (lambda: DynamicPSConv2D(4, 3, padding="same"), dict(rates=[1, 2**40]), "rates"),
    ],
)
def test_crafted_keras_file_is_refused_when_loaded(tmp_path, layer, changes, name):
    inputs = keras.Input((8, 8, 4))
    created = layer()
    keras.Model(inputs, created(inputs)).save(tmp_path / "model.keras")
    _rewrite_layer_config(tmp_path / "model.keras", type(created).__name__, **changes)
    with pytest.raises(ValueError, match=name):
        keras.saving.load_model(tmp_path / "model.keras")


def test_crafted_hub_preset_is_refused_when_loaded(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    from psconv_tf.hub import PSResNetBackbone

    backbone = PSResNetBackbone(
        stackwise_num_blocks=[1], stackwise_num_filters=[4],
        stackwise_num_strides=[1], block_type="basic", stem="cifar",
        stem_filters=4, conv="psconv", image_shape=(8, 8, 3),
    )
    backbone.save_to_preset(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["pattern"] = [2**31]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="`pattern`"):
        keras_hub.models.Backbone.from_preset(str(tmp_path))


# Rates that fit an int but whose padding would dwarf the input.
@pytest.mark.parametrize(
    "kwargs, input_shape",
    [
        (dict(pattern=[1000]), (1, 8, 8, 4)),
        (dict(pattern=[1, 2, 1, 33]), (1, 8, 8, 4)),  # span 66 > max(64, 32)
        (dict(pattern=[1, 2, 1, 17], kernel_size=(1, 5)), (1, 64, 16, 4)),  # width
        (dict(dilation_matrix=[[1, 2, 1, 500]] * 4, strides=2), (1, 8, 8, 4)),
        (dict(pattern=[1, 2, 1, 100], padding="symmetric"), (1, 8, 8, 4)),
    ],
)
def test_span_beyond_the_bound_is_refused_before_any_weight(kwargs, input_shape):
    arguments = dict(filters=4, kernel_size=3, padding="same")
    arguments.update(kwargs)
    layer = PSConv2D(**arguments)
    with pytest.raises(ValueError, match="spans .* pixels, more than max\\(64"):
        layer.build(input_shape)
    assert layer.weights == []


def test_span_bound_is_checked_at_every_call_and_admits_its_limit():
    # Span 64 = the floor on a 1-pixel map; span 80 = 4 x 20.
    PSConv2D(4, 3, padding="same", pattern=[32])(np.zeros((1, 1, 1, 4), "float32"))
    layer = PSConv2D(4, 3, padding="same", pattern=[1, 2, 1, 40])
    assert layer(np.zeros((1, 20, 20, 4), "float32")).shape == (1, 20, 20, 4)
    with pytest.raises(ValueError, match="spans 80 pixels, more than max\\(64, 4 x 19\\)"):
        layer(np.zeros((1, 19, 19, 4), "float32"))
    # "valid" pads nothing: only its own size rule applies.
    PSConv2D(4, 3, pattern=[1, 2, 1, 40]).build((1, 81, 81, 4))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(base_rate=0), "base_rate"),
        (dict(base_rate=-1), "base_rate"),
        (dict(base_rate=2.5), "base_rate"),
        (dict(base_rate=True), "base_rate"),
        (dict(base_rate=2048), "base_rate"),
        (dict(in_channels=0), "in_channels"),
        (dict(filters=-16), "filters"),
        (dict(groups=0), "groups"),
        (dict(pattern=(1, 2, 0, 4)), "pattern"),
        (dict(in_channels=2**20, filters=2**20), "kernels"),
    ],
)
def test_dilation_matrix_function_names_bad_arguments(kwargs, name):
    arguments = dict(in_channels=16, filters=16)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        psconv_tf.dilation_matrix(**arguments)


def test_dilation_matrix_function_keeps_valid_base_rates():
    matrix = psconv_tf.dilation_matrix(8, 8, base_rate=np.int64(3))
    assert set(np.unique(matrix).tolist()) == {3, 6, 12}


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.zeros((4, 4), int), "positive rate in every row"),
        ([[1, 2, 1, 4], [0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]],
         "row 1 has none"),
        ("4x4:0*16", "positive rate in every row"),
    ],
)
def test_matrix_without_rates_is_named(matrix, message):
    with pytest.raises(ValueError, match=message):
        PSConv2D(4, 3, dilation_matrix=matrix)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_inputs_are_refused_with_a_value_error(dtype):
    layer = PSConv2D(4, 3, padding="same")
    with pytest.raises(ValueError, match=f"floating-point inputs.*{dtype}"):
        layer(np.zeros((1, 8, 8, 4), dtype))
    dynamic = DynamicPSConv2D(4, 3, padding="same")
    with pytest.raises(ValueError, match="floating-point inputs"):
        dynamic(np.zeros((1, 8, 8, 4), dtype))


@pytest.mark.parametrize("multiplier", [1e100, 1e-100, 1e7, 1e-7, float("inf")])
def test_mask_learning_rate_multiplier_outside_its_range_is_refused(multiplier):
    with pytest.raises(ValueError, match="mask_learning_rate_multiplier.*1e-06, 1e\\+06"):
        DynamicPSConv2D(8, 3, mask_learning_rate_multiplier=multiplier)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
@pytest.mark.parametrize("multiplier", [1e-6, 1e6])
def test_mask_learning_rate_multiplier_at_its_limits_is_finite(policy, multiplier):
    layer = DynamicPSConv2D(
        8, 3, padding="same", mask_learning_rate_multiplier=multiplier, dtype=policy,
    )
    x = np.random.default_rng(0).normal(size=(1, 6, 6, 8)).astype("float32")
    y = ops.convert_to_numpy(layer(x))
    assert np.isfinite(y).all()
    assert layer.rate_shares() == {1: 0.5, 2: 0.5}  # the lattice initialization


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("surrogate", ["clipped_identity", "identity"])
def test_non_finite_latent_factor_gives_nan_and_is_reported(value, surrogate):
    layer = DynamicPSConv2D(8, 3, padding="same", surrogate=surrogate)
    layer.build((1, 6, 6, 8))
    factor = layer.mask_factors[1].numpy()
    factor[0, 1] = value
    layer.mask_factors[1].assign(factor)
    y = ops.convert_to_numpy(layer(np.ones((1, 6, 6, 8), "float32")))
    assert np.isnan(y).any()
    for method in (layer.dilation_matrix, layer.rate_shares, layer.freeze):
        with pytest.raises(ValueError, match="'mask_factor_1' holds 1 non-finite"):
            method()
    inputs = keras.Input((6, 6, 8))
    with pytest.raises(ValueError, match="mask_factor_1"):
        psconv_tf.freeze(keras.Model(inputs, layer(inputs)))


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(strides=2**31), "strides"), (dict(dilation_rate=10**9), "dilation_rate"),
     (dict(kernel_size=(3, 2**31)), "kernel_size")],
)
def test_native_conv2d_refuses_what_aborts_the_raw_op(kwargs, name):
    from psconv_tf import NativeConv2D

    arguments = dict(filters=4, kernel_size=3, padding="same")
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        NativeConv2D(**arguments)
    config = NativeConv2D(4, 3).get_config()
    config.update(kwargs)
    with pytest.raises(ValueError, match=name):
        NativeConv2D.from_config(config)
