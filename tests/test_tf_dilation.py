"""The TensorFlow dilated convolution: native forward, space-to-batch gradients.

The op is compared in float64 with TensorFlow's own differentiation of
`tf.nn.conv2d(..., dilations=d)` (under XLA: TensorFlow's CPU kernels have no
float64 gradients of dilated or grouped convolutions), at first and second
order; the whole layer, with the route forced on the CPU, against the float64
Eq. 3 reference of tests/reference.py.
"""

import keras
import numpy as np
import pytest

import reference
from psconv_tf import DynamicPSConv2D
from psconv_tf import PSConv2D
from psconv_tf.engine.executor import IMPLEMENTATIONS

tf = pytest.importorskip("tensorflow")
pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                       reason="TensorFlow backend only"),
]

from psconv_tf.engine import tf_dilation  # noqa: E402

FORMATS = {"channels_last": "NHWC", "channels_first": "NCHW"}

# (rates, kernel, groups, size, padding): rates the layer sends at stride 1
# ((4, 2) is rate 4 at strides (1, 2)), sizes that are not multiples of the
# rates, an even kernel with an odd span (so "same" pads unevenly) and a
# one-dimensional one. The layer's explicit paddings reach the op as a pad
# and "valid" (psconv_tf.engine.conv_ops).
CASES = [
    ((2, 2), (3, 3), 1, (11, 9), "valid"),
    ((4, 4), (3, 3), 2, (17, 14), "same"),
    ((3, 3), (2, 2), 1, (10, 13), "same"),
    ((4, 2), (3, 1), 2, (12, 7), "valid"),
]


def _native(x, k, rates, padding, data_format):
    return tf.nn.conv2d(
        x, k, 1, padding.upper(), data_format=FORMATS[data_format], dilations=list(rates)
    )


def _ours(x, k, rates, padding, data_format):
    return tf_dilation.conv(x, k, rates, padding, data_format)


def _derivatives(convolve, x, k, second_order=True):
    """y, the gradients of sum(y ** 2) in x and k, and the gradients in x and
    k of the squared norm of those gradients (second order, as gradient
    penalties use)."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([x, k])
        with tf.GradientTape() as inner:
            inner.watch([x, k])
            y = convolve(x, k)
            loss = tf.reduce_sum(y ** 2)
        grad_x, grad_k = inner.gradient(loss, [x, k])
        penalty = tf.reduce_sum(grad_x ** 2) + tf.reduce_sum(grad_k ** 2)
    if not second_order:
        return [y, grad_x, grad_k]
    return [y, grad_x, grad_k] + outer.gradient(penalty, [x, k])


def _inputs(case, data_format, dtype="float64", seed=0):
    rates, kernel, groups, size, _ = case
    rng = np.random.default_rng(seed)
    channels, filters = 4, 6
    shape = (2,) + size + (channels,)
    if data_format == "channels_first":
        shape = (2, channels) + size
    x = tf.constant(rng.normal(size=shape).astype(dtype))
    k = tf.constant(rng.normal(size=kernel + (channels // groups, filters)).astype(dtype))
    return x, k


def _assert_all_close(got, want, rtol):
    for name, a, b in zip(("y", "dx", "dk", "ddx", "ddk"), got, want):
        scale = np.abs(b.numpy()).max()
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=rtol * scale,
                                   err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op_matches_native_gradients(case):
    """Float64 against TensorFlow's own gradients under XLA, to second order
    in the first two cases (XLA compiles float64 convolutions slowly on a
    CPU). The route runs eagerly where TensorFlow's CPU kernels have float64
    gradients (no groups), else under XLA."""
    rates, _, groups, _, padding = case
    data_format = "channels_first" if groups > 1 and padding == "same" else "channels_last"
    second_order = case in CASES[:2]
    x, k = _inputs(case, data_format)

    def derivatives(convolve, compiled):
        run = lambda x, k: _derivatives(convolve, x, k, second_order)  # noqa: E731
        return (tf.function(run, jit_compile=True) if compiled else run)(x, k)

    expected = derivatives(lambda x, k: _native(x, k, rates, padding, data_format), True)
    got = derivatives(lambda x, k: _ours(x, k, rates, padding, data_format), groups > 1)
    _assert_all_close(got, expected, 1e-12)


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=str)
def test_op_eagerly_with_groups_in_float32(case):
    rates, _, _, _, padding = case
    x, k = _inputs(case, "channels_last", "float32")
    _assert_all_close(
        _derivatives(lambda x, k: _ours(x, k, rates, padding, "channels_last"), x, k),
        _derivatives(lambda x, k: _native(x, k, rates, padding, "channels_last"), x, k),
        1e-5,
    )


def test_unknown_sizes_when_traced():
    """Sizes unknown at tracing (as for a jit-compiled step traced with
    `None` dimensions): the phase arithmetic runs on shape tensors."""
    case = CASES[2]
    rates, _, _, _, padding = case
    x, k = _inputs(case, "channels_last", "float32")
    spec = [tf.TensorSpec((None, None, None, x.shape[3]), x.dtype),
            tf.TensorSpec(k.shape, k.dtype)]

    def derivatives(convolve):
        run = tf.function(lambda x, k: _derivatives(convolve, x, k), input_signature=spec)
        return run(x, k)

    _assert_all_close(
        derivatives(lambda x, k: _ours(x, k, rates, padding, "channels_last")),
        _derivatives(lambda x, k: _native(x, k, rates, padding, "channels_last"), x, k),
        1e-5,
    )


# When the route is taken.


def _pretend_a_gpu(monkeypatch):
    """tf.config lists a logical GPU (where ops would run, unless placed)."""
    listing = tf.config.list_logical_devices
    gpu = tf.config.LogicalDevice(name="/device:GPU:0", device_type="GPU")
    monkeypatch.setattr(
        tf.config, "list_logical_devices",
        lambda kind=None: [gpu] if kind == "GPU" else listing(kind),
    )


def _decisions(monkeypatch, mode=None, gpus=False):
    """wanted() eagerly, in tf.function, jit-compiled, jit-compiled in a loop
    of a tf.function, and jit-compiled under an inner tf.device("/CPU:0")."""
    if mode is None:
        monkeypatch.delenv(tf_dilation.ENVIRONMENT, raising=False)
    else:
        monkeypatch.setenv(tf_dilation.ENVIRONMENT, mode)
    if gpus:
        _pretend_a_gpu(monkeypatch)
    seen = {}

    def probe(name):
        seen[name] = tf_dilation.wanted()
        return tf.constant(0)

    def on_cpu():
        with tf.device("/CPU:0"):
            return probe("jit under CPU scope")

    probe("eager")
    tf.function(lambda: probe("tf.function"))()
    tf.function(lambda: probe("jit"), jit_compile=True)()
    tf.function(on_cpu, jit_compile=True)()
    step = tf.function(lambda: probe("jit in a loop"), jit_compile=True)

    @tf.function
    def loop():
        for _ in tf.range(2):
            step()
        return 0

    loop()
    return seen


def test_route_under_xla_on_a_gpu_only(monkeypatch):
    assert not any(_decisions(monkeypatch).values())  # this CPU
    assert _decisions(monkeypatch, gpus=True) == {
        "eager": False, "tf.function": False, "jit": True,
        "jit under CPU scope": False, "jit in a loop": True,
    }
    assert _decisions(monkeypatch, "auto", gpus=True)["jit"]
    assert not any(_decisions(monkeypatch, "native", gpus=True).values())
    assert all(_decisions(monkeypatch, "space_to_batch").values())


def test_model_fit_with_jit_compile_takes_the_route_on_a_gpu(monkeypatch):
    """Keras' own jit-compiled training step (model.fit) is seen as XLA."""
    calls = _count_route(monkeypatch)
    monkeypatch.delenv(tf_dilation.ENVIRONMENT)
    _pretend_a_gpu(monkeypatch)
    model = keras.Sequential([
        keras.Input((9, 9, 8)),
        PSConv2D(8, 3, padding="same", implementation="masked"),
        keras.layers.GlobalAveragePooling2D(),
    ])
    model.compile("sgd", "mse", jit_compile=True)
    rng = np.random.default_rng(5)
    model.fit(rng.normal(size=(4, 9, 9, 8)), rng.normal(size=(4, 8)), batch_size=2, verbose=0)
    assert {tuple(r) for r in calls} == {(2, 2), (4, 4)}, calls


@pytest.mark.parametrize(
    "policy, tolerance", [("mixed_float16", 1e-2), ("mixed_bfloat16", 5e-2)]
)
def test_mixed_precision(monkeypatch, policy, tolerance):
    """The route in float16 and bfloat16 against TensorFlow's own gradients."""
    x = tf.constant(np.random.default_rng(6).normal(size=(2, 11, 10, 8)), tf.float32)
    layer = PSConv2D(8, 3, padding="same", pattern=(1, 2, 3, 4), implementation="split",
                     dtype=policy)
    layer.build(x.shape)

    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(layer(x), tf.float32) ** 2)
        return [t.numpy() for t in tape.gradient(loss, [x, layer.kernel.value])]

    monkeypatch.setenv(tf_dilation.ENVIRONMENT, "native")
    expected = run(x)
    calls = _count_route(monkeypatch)
    got = run(x)
    assert calls
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=tolerance * np.abs(b).max())


def test_dynamic_layer_and_its_mask_gradients(monkeypatch):
    """DynamicPSConv2D runs its rates through the same op: every gradient
    (input, kernel, bias, latent mask factors) equals TensorFlow's own."""
    x = tf.constant(np.random.default_rng(7).normal(size=(2, 11, 10, 8)), tf.float32)
    layer = DynamicPSConv2D(8, 3, padding="same", rates=(1, 3))
    layer.build(x.shape)

    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) ** 2)
        return [t.numpy() for t in tape.gradient(loss, [x] + layer.trainable_weights)]

    monkeypatch.setenv(tf_dilation.ENVIRONMENT, "native")
    expected = run(x)
    calls = _count_route(monkeypatch)
    got = run(x)
    assert {tuple(r) for r in calls} == {(3, 3)}, calls
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_bad_switch_names_the_variable(monkeypatch):
    monkeypatch.setenv(tf_dilation.ENVIRONMENT, "yes")
    with pytest.raises(ValueError, match=tf_dilation.ENVIRONMENT):
        tf_dilation.wanted()


# The layer with the route forced on the CPU.


def _count_route(monkeypatch):
    monkeypatch.setenv(tf_dilation.ENVIRONMENT, "space_to_batch")
    calls = []
    conv = tf_dilation.conv

    def counted(*args):
        calls.append(args[2])
        return conv(*args)

    monkeypatch.setattr(tf_dilation, "conv", counted)
    return calls


# Eagerly: every padding and implementation at strides 1 and 2. Under XLA
# (seconds per compiled layer on a CPU): every padding, implementation and
# stride at least once, "grouped_s2b" at stride 2, where its dilation is
# strided (at stride 1 it runs dilation as space-to-batch itself).
LAYER_CASES = [
    (padding, implementation, (1, 2), False)
    for padding in ("valid", "same", "symmetric")
    for implementation in IMPLEMENTATIONS
] + [
    ("valid", "grouped", (2,), True),
    ("same", "split", (1,), True),
    ("symmetric", "masked", (1,), True),
    ("same", "grouped_s2b", (2,), True),
]


@pytest.mark.parametrize(
    "padding, implementation, strides, jit_compile",
    [
        pytest.param(*case, id="{}-{}-{}-s{}".format(
            "xla" if case[3] else "eager", case[0], case[1], "".join(map(str, case[2]))))
        for case in LAYER_CASES
    ],
)
def test_layer_matches_reference(monkeypatch, padding, implementation, strides, jit_compile):
    """Values and the gradients of sum(y ** 2) (rates 2, 3 and 4; at stride
    2, rate 4 runs at rate 2 and rate 3 at stride 1), in
    float32 (TensorFlow's CPU kernels have no float64 gradients of grouped
    convolutions, and XLA compiles float64 convolutions slowly)."""
    calls = _count_route(monkeypatch)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 11, 10, 8))
    layers = [
        PSConv2D(8, 3, strides=stride, padding=padding, pattern=(1, 2, 3, 4),
                 implementation=implementation, bias_initializer="random_normal")
        for stride in strides
    ]

    def run(x):
        results = []
        for layer in layers:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y ** 2)
            results.append([y] + tape.gradient(loss, [x, layer.kernel.value]))
        return results

    if jit_compile:
        run = tf.function(run, jit_compile=True)
    for layer, outputs in zip(layers, run(tf.constant(x, tf.float32))):
        y, grad_x, grad_k = [t.numpy().astype(np.float64) for t in outputs]
        kernel, bias = [w.numpy().astype(np.float64) for w in layer.weights]

        def psconv(inputs, kern, bias=None, layer=layer):
            dense = reference.dense_from_grouped(kern, layer.groups)
            return reference.psconv(inputs, dense, layer.dilation_matrix(), layer.strides,
                                    padding, bias)

        expected = psconv(x, kernel, bias)
        np.testing.assert_allclose(y, expected, rtol=0, atol=2e-5 * np.abs(expected).max())
        # The layer is linear in x and in the kernel, so the derivatives of
        # sum(y ** 2) along dx and dk are 2 <y, A(dx, kernel)>, 2 <y, A(x, dk)>.
        for _ in range(2):
            dx, dk = rng.normal(size=x.shape), rng.normal(size=kernel.shape)
            for grad, direction, want in (
                (grad_x, dx, 2 * (expected * psconv(dx, kernel)).sum()),
                (grad_k, dk, 2 * (expected * psconv(x, dk)).sum()),
            ):
                np.testing.assert_allclose((grad * direction).sum(), want, rtol=1e-4)
    # Every rate took the route, except where "grouped_s2b" runs stride-1
    # dilation as space-to-batch itself.
    routed = set()
    if 1 in strides and implementation != "grouped_s2b":
        routed |= {(2, 2), (3, 3), (4, 4)}
    if 2 in strides:
        routed |= {(2, 2), (3, 3)}
    assert {tuple(r) for r in calls} == routed, calls


def test_layer_second_order(monkeypatch):
    """A gradient penalty through the layer: the route forced against
    TensorFlow's own gradients."""
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 9, 10, 8)), tf.float32)
    layer = PSConv2D(8, 3, strides=(1, 2), padding="same", pattern=(1, 2, 3, 4),
                     implementation="split")
    layer.build(x.shape)

    def penalty(x):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(layer(x) ** 2)
            value = tf.reduce_sum(inner.gradient(loss, x) ** 2)
        return outer.gradient(value, layer.kernel.value)

    monkeypatch.setenv(tf_dilation.ENVIRONMENT, "native")
    expected = penalty(x).numpy()
    calls = _count_route(monkeypatch)
    got = penalty(x).numpy()
    assert {tuple(r) for r in calls} == {(2, 1), (3, 3), (4, 2)}, calls
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
