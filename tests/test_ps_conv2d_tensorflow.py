"""PSConv2D under TensorFlow's graph modes, XLA, mixed precision, tf.distribute."""

import keras
import numpy as np
import pytest

import reference
from psconv_tf import PSConv2D
from psconv_tf.engine.executor import IMPLEMENTATIONS

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow backend only"
)


def _layer(policy=None, **kwargs):
    arguments = dict(filters=16, kernel_size=3, strides=2, padding="symmetric")
    arguments.update(kwargs)
    return PSConv2D(dtype=policy, **arguments)


def _reference(layer, x):
    kernel, bias = [w.numpy().astype(np.float64) for w in layer.weights]
    kernel = reference.dense_from_grouped(kernel, layer.groups)
    return reference.psconv(
        x, kernel, layer.dilation_matrix(), layer.strides, layer.padding, bias
    )


def _input(shape=(2, 15, 15, 16), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_tf_function_and_xla_match_reference():
    x = _input()
    layer = _layer()
    layer.build(x.shape)
    expected = _reference(layer, x)
    graph = tf.function(layer)(x).numpy()
    xla = tf.function(layer, jit_compile=True)(x).numpy()
    for y in (graph, xla):
        np.testing.assert_allclose(y, expected, atol=2e-4 * np.abs(expected).max())


def test_xla_gradients_equal_graph_gradients():
    x = tf.constant(_input())
    layer = _layer()
    layer.build(x.shape)

    def gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x)))
        return tape.gradient(loss, [x, layer.kernel.value, layer.bias.value])

    graph = tf.function(gradients)(x)
    xla = tf.function(gradients, jit_compile=True)(x)
    for a, b in zip(graph, xla):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "policy, dtype, tolerance",
    [("mixed_float16", "float16", 5e-3), ("mixed_bfloat16", "bfloat16", 3e-2)],
)
def test_mixed_precision_forward_and_gradients(policy, dtype, tolerance):
    x = tf.constant(_input())
    mixed = _layer(policy=policy)
    exact = _layer()
    mixed.build(x.shape)
    exact.build(x.shape)
    exact.set_weights(mixed.get_weights())
    assert mixed.kernel.dtype == "float32"

    def outputs_and_gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, "float32") ** 2)
        return y, tape.gradient(loss, [x, layer.kernel.value])

    y, gradients = outputs_and_gradients(mixed)
    assert y.dtype == dtype
    expected = _reference(mixed, x.numpy())
    error = np.abs(y.numpy().astype(np.float64) - expected).max()
    assert error <= tolerance * np.abs(expected).max()
    _, exact_gradients = outputs_and_gradients(exact)
    for gradient, exact_gradient in zip(gradients, exact_gradients):
        scale = np.abs(exact_gradient.numpy()).max()
        np.testing.assert_allclose(
            gradient.numpy(), exact_gradient.numpy(), atol=4 * tolerance * scale
        )


def test_dynamic_spatial_size_with_same_padding_and_stride():
    layer = _layer(padding="same")
    function = tf.function(
        layer, input_signature=[tf.TensorSpec((None, None, None, 16))]
    )
    for size in (15, 16):
        x = _input((1, size, size + 3, 16))
        y = function(x).numpy()
        expected = _reference(layer, x)
        np.testing.assert_allclose(y, expected, atol=2e-4 * np.abs(expected).max())


def _fit(strategy, x, y, implementation="auto"):
    with strategy.scope():
        keras.utils.set_random_seed(7)
        model = keras.Sequential(
            [keras.Input(x.shape[1:]), _layer(implementation=implementation),
             keras.layers.GlobalAveragePooling2D()]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_mirrored_strategy_training_equals_single_device(implementation):
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) == 2, "conftest sets up two logical CPUs"
    x = _input((16, 15, 15, 16))
    y = np.random.default_rng(1).normal(size=(16, 16)).astype("float32")
    single = _fit(tf.distribute.get_strategy(), x, y, implementation)
    # Reduction on one device: collective ops of strategies made earlier in
    # the same process could clash with this one's.
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in devices],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    mirrored = _fit(strategy, x, y, implementation)
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_saved_model_export_matches(tmp_path):
    inputs = keras.Input((15, 15, 16))
    model = keras.Model(inputs, _layer(groups=2)(inputs))
    x = _input()
    model.export(str(tmp_path / "saved"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(
        restored.serve(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("padding", ["valid", "same", "symmetric"])
def test_unknown_spatial_size_with_stride_in_a_model(padding, jit_compile):
    inputs = keras.Input((None, None, 16))
    layer = _layer(padding=padding)
    model = keras.Model(inputs, layer(inputs))
    function = tf.function(model, jit_compile=jit_compile)
    x = _input((2, 17, 18, 16))
    expected = _reference(layer, x)
    np.testing.assert_allclose(
        function(x).numpy(), expected, atol=2e-4 * np.abs(expected).max()
    )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_implementation_compiles_and_exports(implementation, tmp_path):
    """tf.function, XLA, SavedModel and TFLite (builtin ops) against Eq. 3."""
    from export_data import Interpreter

    inputs = keras.Input((15, 15, 16))
    layer = _layer(strides=1, groups=2, implementation=implementation)
    model = keras.Model(inputs, layer(inputs))
    x = _input((2, 15, 15, 16))
    expected = _reference(layer, x)
    model.export(str(tmp_path / "saved"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner()
    tflite = next(iter(runner(**{runner.get_input_details().popitem()[0]: x}).values()))
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    outputs = {
        "graph": tf.function(model)(x).numpy(),
        "xla": tf.function(model, jit_compile=True)(x).numpy(),
        "saved_model": restored.serve(x).numpy(),
        "tflite": tflite,
    }
    for name, y in outputs.items():
        np.testing.assert_allclose(
            y, expected, atol=2e-4 * np.abs(expected).max(), err_msg=name
        )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grouped_strided_symmetric_gradients_in_a_graph(implementation):
    # TensorFlow's CPU cannot differentiate grouped convs with explicit padding.
    x = tf.constant(_input())
    layer = _layer(groups=2, implementation=implementation)
    layer.build(x.shape)

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) ** 2)
        return tape.gradient(loss, [x, layer.kernel.value])

    assert all(np.isfinite(g.numpy()).all() for g in gradients())
