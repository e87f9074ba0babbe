"""The JAX dilated convolution: native forward, space-to-batch gradients.

Compared in float64 with XLA's own differentiation of the native dilated
convolution (`lax.conv_general_dilated` with `rhs_dilation`), for inputs whose
sizes are not multiples of the rate, unequal rates, groups and both layouts.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from psconv_tf.engine import jax_dilation  # noqa: E402


def _native(inputs, kernel, rates, groups, data_format):
    spec = "NHWC" if data_format == "channels_last" else "NCHW"
    return jax.lax.conv_general_dilated(
        inputs, kernel, (1, 1), "VALID", rhs_dilation=rates,
        dimension_numbers=(spec, "HWIO", spec), feature_group_count=groups,
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "rates, groups, size",
    [((2, 2), 1, (11, 9)), ((4, 4), 2, (17, 20)), ((3, 2), 1, (10, 13)),
     ((1, 2), 2, (8, 8))],
)
def test_values_and_gradients_match_native(data_format, rates, groups, size):
    with jax.enable_x64(True):
        rng = np.random.default_rng(sum(rates) + groups)
        channels, filters = 4, 6
        if data_format == "channels_last":
            shape = (2,) + size + (channels,)
        else:
            shape = (2, channels) + size
        x = jnp.asarray(rng.normal(size=shape))
        k = jnp.asarray(rng.normal(size=(3, 3, channels // groups, filters)))

        def ours(x, k):
            return jax_dilation.conv(x, k, rates, groups, data_format)

        def native(x, k):
            return _native(x, k, rates, groups, data_format)

        y, ours_vjp = jax.vjp(ours, x, k)
        expected, native_vjp = jax.vjp(native, x, k)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
        cotangent = jnp.asarray(rng.normal(size=y.shape))
        for got, want in zip(ours_vjp(cotangent), native_vjp(cotangent)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-11)

        # Second order: the gradient of a gradient norm, as gradient penalties use.
        def penalty(function):
            def value(k):
                grad_x = jax.grad(lambda x: jnp.sum(function(x, k) ** 2))(x)
                return jnp.sum(grad_x ** 2)
            return jax.grad(value)(k)

        np.testing.assert_allclose(penalty(ours), penalty(native), rtol=1e-10)


GPU_ROUTE_SCRIPT = r"""
import numpy as np, jax, keras
from psconv_tf import PSConv2D
from psconv_tf.engine import conv_ops

def run(layer, x):
    weights = [v.value for v in layer.trainable_variables]
    def loss(weights, x):
        y, _ = layer.stateless_call(weights, [], x)
        return (y ** 2).sum()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(weights, x)

worst = 0.0
x = keras.random.normal((2, 13, 11, 16), seed=1)
for padding in ("same", "valid", "symmetric"):
    for implementation in ("split", "grouped", "masked"):
        layer = PSConv2D(8, 3, padding=padding, groups=2, pattern=(1, 2, 4, 2),
                         implementation=implementation)
        layer.build(x.shape)
        conv_ops.jax_on_gpu = lambda: False
        expected = jax.tree_util.tree_leaves(run(layer, x))
        conv_ops.jax_on_gpu = lambda: True
        got = jax.tree_util.tree_leaves(run(layer, x))
        for a, b in zip(got, expected):
            worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
print("WORST", worst)
"""


def test_gpu_route_of_the_layer_matches_the_native_route():
    """PSConv2D with conv_ops' GPU route forced on, against the plain route:
    loss and gradients at every padding and implementation, under JAX."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", GPU_ROUTE_SCRIPT],
        env=dict(os.environ, KERAS_BACKEND="jax"),
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    worst = float(result.stdout.split("WORST")[-1])
    assert worst < 1e-5, worst
