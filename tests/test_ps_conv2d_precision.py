"""Training steps under every precision policy: gradients of every PSConv2D
implementation, DynamicPSConv2D and NativeConv2D against float64 references.

The loss is sum(y ** 2), quadratic in the input and in the kernel, so the
reference's central difference along a direction is exactly the directional
derivative of the float64 Eq. 3 (reference.py). Tolerances are those of the
policy's compute dtype, relative to the gradient's norm.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import reference
from psconv_tf import DynamicPSConv2D
from psconv_tf import NativeConv2D
from psconv_tf import PSConv2D
from psconv_tf.engine.executor import IMPLEMENTATIONS

pytestmark = pytest.mark.tensorflow  # the tape; TensorFlow's CPU kernels

POLICIES = {"float32": 1e-4, "mixed_float16": 2e-2, "mixed_bfloat16": 1e-1}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layers():
    common = dict(padding="same", groups=2, use_bias=False)
    layers = {
        name: lambda policy, name=name: PSConv2D(
            8, 3, implementation=name, dtype=policy, **common
        )
        for name in IMPLEMENTATIONS
    }
    layers["strided-grouped"] = lambda policy: PSConv2D(
        8, 3, strides=2, implementation="grouped", dtype=policy, **common
    )
    layers["dynamic"] = lambda policy: DynamicPSConv2D(
        8, 3, mask_initializer="random", dtype=policy, **common
    )
    layers["native"] = lambda policy: NativeConv2D(8, 3, dtype=policy, **common)
    layers["native-dilated"] = lambda policy: NativeConv2D(
        8, 3, dilation_rate=2, dtype=policy, **common
    )
    return layers


LAYERS = _layers()


def _rates(layer):
    if isinstance(layer, NativeConv2D):
        groups, filters = layer.groups, layer.filters
        n_in = layer.kernel.shape[2]
        block = np.kron(np.eye(groups, dtype=np.int64),
                        np.ones((filters // groups, n_in), np.int64))
        return block * layer.dilation_rate[0]
    return layer.dilation_matrix()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", LAYERS)
def test_training_step_gradients_match_float64(policy, name):
    import tensorflow as tf

    rng = np.random.default_rng(5)
    layer = LAYERS[name](policy)
    x = rng.normal(size=(2, 7, 7, 8))
    layer.build(x.shape)
    kernel = layer.kernel.numpy().astype(np.float64)
    x_var = tf.Variable(x.astype("float32"))
    with tf.GradientTape() as tape:
        y = layer(x_var, training=True)
        loss = tf.reduce_sum(tf.square(tf.cast(y, "float32")))
    grad_x, grad_kernel = (
        g.numpy().astype(np.float64) for g in tape.gradient(loss, [x_var, layer.kernel])
    )
    assert y.dtype == keras.mixed_precision.Policy(policy).compute_dtype
    rates, strides = _rates(layer), layer.strides

    def reference_loss(inputs, kern):
        dense = reference.dense_from_grouped(kern, layer.groups)
        return float((reference.psconv(inputs, dense, rates, strides, "same") ** 2).sum())

    # Errors relative to the gradient's norm: a projection on a random
    # direction of unit-variance entries has about that scale, whatever
    # cancellation makes of the projection itself.
    tolerance = POLICIES[policy]
    for _ in range(2):
        dx, dk = rng.normal(size=x.shape), rng.normal(size=kernel.shape)
        expected_x = (reference_loss(x + dx, kernel) - reference_loss(x - dx, kernel)) / 2
        expected_k = (reference_loss(x, kernel + dk) - reference_loss(x, kernel - dk)) / 2
        assert abs((grad_x * dx).sum() - expected_x) <= tolerance * np.linalg.norm(grad_x)
        assert abs((grad_kernel * dk).sum() - expected_k) <= tolerance * np.linalg.norm(
            grad_kernel
        )

def test_reduced_precision_steps_pass_on_eigen_kernels():
    """The same steps on TensorFlow's Eigen CPU kernels (oneDNN off), which
    run float16 wherever the CPU lacks oneDNN's float16 support and cannot
    differentiate grouped convolutions in it."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "no:warnings", "tests/test_ps_conv2d_precision.py",
         "-k", "gradients and mixed"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", KERAS_BACKEND="tensorflow"),
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in summary and "failed" not in summary, summary
