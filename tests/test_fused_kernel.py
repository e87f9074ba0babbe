"""The fused Pallas kernels (`implementation="fused"`), in interpret mode.

Values, input and kernel gradients and second derivatives are compared with
Eq. 3 in float64 written here with jax.numpy from `reference.py`'s rules
(and its values checked against `reference.psconv`), at strides 1 and 2,
every padding, groups, both layouts, explicit matrices and in float32,
bfloat16 and float16. The layer itself runs under the JAX backend in a
subprocess; the kernels are also lowered for CUDA (Triton) on this CPU.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import reference

jax = pytest.importorskip("jax")
jnp = jax.numpy

from psconv_tf.engine import autotune  # noqa: E402
from psconv_tf.engine import conv_ops  # noqa: E402
from psconv_tf.engine import executor  # noqa: E402
from psconv_tf.engine import explicit_matrix  # noqa: E402
from psconv_tf.engine import fused_conv  # noqa: E402
from psconv_tf.engine import fused_executor  # noqa: E402
from psconv_tf.engine import lattice  # noqa: E402
from psconv_tf.engine import rate_conv  # noqa: E402
from psconv_tf import PSConv2D  # noqa: E402


def _reference(x, dense, matrix, strides, padding):
    """Eq. 3 as `reference.psconv` (its padding rule per rate), one XLA
    convolution per rate with the kernel masked to that rate."""
    y = 0.0
    for rate in np.unique(matrix[matrix > 0]):
        mask = jnp.asarray((matrix == rate).T[None, None], x.dtype)
        pads = [
            reference.rate_pads(x.shape[axis], dense.shape[i], strides[i], rate, padding,
                                matrix.max())
            for i, axis in enumerate((1, 2))
        ]
        y = y + jax.lax.conv_general_dilated(
            x, dense * mask, strides, pads, rhs_dilation=(int(rate),) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
    return y


def _dense(kernel, groups):
    """(kh, kw, C / groups, F) -> (kh, kw, C, F), zeros across groups."""
    blocks = jnp.split(kernel, groups, axis=3)
    return jnp.concatenate([
        jnp.pad(b, [(0, 0), (0, 0), (g * kernel.shape[2], (groups - 1 - g) * kernel.shape[2]),
                    (0, 0)])
        for g, b in enumerate(blocks)
    ], axis=3)


def _case(channels, filters, groups, size, stride, padding, pattern=(1, 2, 1, 4),
          layout="blocked", rates=None, kernel_size=(3, 3)):
    """(fused fn(x, kernel), reference fn(x, kernel), matrix, x shape, kernel shape)."""
    strides = (stride, stride) if isinstance(stride, int) else stride
    if rates is None:
        matrix = lattice.dilation_matrix(channels, filters, pattern, groups=groups,
                                         layout=layout)
        rates = explicit_matrix.compress(matrix, groups)
    else:
        matrix = explicit_matrix.expand(np.asarray(rates), groups)
    executor = fused_executor.FusedExecutor(rates, groups, kernel_size, strides, padding)
    assert executor.interpret  # no GPU here

    def fused(x, kernel):
        return executor(x, kernel, "channels_last")

    def expected(x, kernel):
        return _reference(x, _dense(kernel, groups), matrix, strides, padding)

    kernel_shape = kernel_size + (channels // groups, filters)
    return fused, expected, matrix, (2,) + size + (channels,), kernel_shape


CASES = {
    "same": dict(channels=16, filters=16, groups=1, size=(7, 8), stride=1, padding="same"),
    "interleaved_valid": dict(channels=16, filters=8, groups=1, size=(11, 10), stride=1,
                              padding="valid", layout="interleaved"),
    "valid_s2": dict(channels=8, filters=16, groups=1, size=(12, 11), stride=2, padding="valid"),
    "groups_symmetric_s2": dict(channels=16, filters=8, groups=2, size=(9, 7), stride=2,
                                padding="symmetric", pattern=(1, 2)),
    "dot_s2": dict(channels=64, filters=64, groups=1, size=(6, 7), stride=2, padding="same"),
    # Rate 3 at stride 2, scattered rates (blocks of one channel), groups
    # whose rates differ (one group per program), a 3 x 2 kernel, strides
    # (2, 1).
    "explicit_s2": dict(channels=6, filters=4, groups=2, size=(9, 8), stride=(2, 1),
                        padding="same", kernel_size=(3, 2),
                        rates=[[1, 3, 2], [2, 1, 1], [3, 3, 1], [1, 2, 2]]),
}


def _vjp(function, x, kernel, cotangent):
    y, vjp = jax.vjp(function, x, kernel)
    return (y,) + vjp(cotangent)


def _relative(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", list(CASES))
def test_values_and_gradients_match_reference(name):
    fused, expected, matrix, x_shape, k_shape = _case(**CASES[name])
    rng = np.random.default_rng(len(name))
    x, kernel = rng.normal(size=x_shape), rng.normal(size=k_shape)
    with jax.enable_x64(True):
        cotangent = rng.normal(size=jax.eval_shape(fused, x, kernel).shape)
        got = jax.jit(lambda *a: _vjp(fused, *a))(x, kernel, cotangent)
        want = jax.jit(lambda *a: _vjp(expected, *a))(x, kernel, cotangent)
    config = CASES[name]
    stride = config["stride"]
    np.testing.assert_allclose(
        want[0], reference.psconv(x, reference.dense_from_grouped(kernel, config["groups"]),
                                  matrix, (stride, stride) if isinstance(stride, int) else stride,
                                  config["padding"]),
        rtol=1e-12, atol=1e-12)
    for part, a, b in zip(("values", "input gradient", "kernel gradient"), got, want):
        assert a.shape == b.shape, part
        assert _relative(a, b) < 1e-12, part


@pytest.mark.parametrize(
    "name, dtype, tolerance",
    [("same", "float32", 1e-5), ("dot_s2", "bfloat16", 3e-2),
     ("groups_symmetric_s2", "float16", 4e-3)],
)
def test_low_precision_accumulates_in_float32(name, dtype, tolerance):
    """Inputs rounded to `dtype`; the result against float64 Eq. 3 of the
    rounded inputs: only the output's rounding (and float32 sums) remain."""
    fused, expected, _, x_shape, k_shape = _case(**CASES[name])
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=x_shape), dtype)
    kernel = jnp.asarray(rng.normal(size=k_shape), dtype)
    cotangent = jnp.asarray(rng.normal(size=jax.eval_shape(fused, x, kernel).shape), dtype)
    got = jax.jit(lambda *a: _vjp(fused, *a))(x, kernel, cotangent)
    with jax.enable_x64(True):
        wide = [np.asarray(a, np.float64) for a in (x, kernel, cotangent)]
        want = jax.jit(lambda *a: _vjp(expected, *a))(*wide)
    for part, a, b in zip(("values", "input gradient", "kernel gradient"), got, want):
        assert a.dtype == jnp.dtype(dtype), part
        assert _relative(a, b) < tolerance, part


@pytest.mark.parametrize("name, penalty", [("groups_symmetric_s2", "input"),
                                           ("dot_s2", "kernel")])
def test_second_order_matches_reference(name, penalty):
    """Gradient penalties: d/dk |dL/dx|^2 ("input": through the transposed
    correlation's vjp) or d/dx |dL/dk|^2 ("kernel": through the weight
    gradient's vjp), L = sum y^2."""
    fused, expected, _, x_shape, k_shape = _case(**CASES[name])
    rng = np.random.default_rng(2)
    x, kernel = rng.normal(size=x_shape), rng.normal(size=k_shape)
    wrt, other = (0, 1) if penalty == "input" else (1, 0)

    def second(function):
        def loss(x, kernel):
            return jnp.sum(function(x, kernel) ** 2)

        def penalized(x, kernel):
            return jnp.sum(jax.grad(loss, wrt)(x, kernel) ** 2)

        return jax.grad(penalized, other)(x, kernel)

    with jax.enable_x64(True):
        got = jax.jit(lambda: second(fused))()
        want = jax.jit(lambda: second(expected))()
    assert _relative(got, want) < 1e-11


def test_empty_batch():
    fused, _, _, x_shape, k_shape = _case(**CASES["same"])
    x, kernel = jnp.zeros((0,) + x_shape[1:]), jnp.ones(k_shape)
    y, vjp = jax.vjp(fused, x, kernel)
    assert y.shape == (0,) + x_shape[1:3] + (k_shape[3],)
    grad_x, grad_kernel = vjp(y)
    assert grad_x.shape == x.shape and not np.asarray(grad_kernel).any()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["same", "valid", "symmetric"])
def test_axis_map_transposes_back(stride, padding):
    """The transpose of an axis map's transpose is the map itself."""
    geometries = [
        rate_conv.AxisGeometry(3, stride, rate, padding, 4) for rate in (1, 2, 4)
    ]
    forward = fused_conv.AxisMap.forward(geometries, 13)
    assert forward.transpose().transpose() == forward
    assert forward.transpose().out_length == 13


@pytest.mark.parametrize("name, dtype", [("dot_s2", "float32"),
                                         ("groups_symmetric_s2", "bfloat16")])
def test_kernels_lower_to_triton(name, dtype):
    """Forward and backward kernels lower to Triton for CUDA (power-of-two
    blocks, supported ops), without a GPU."""
    config = dict(CASES[name])
    channels, groups = config["channels"], config["groups"]
    matrix = lattice.dilation_matrix(channels, config["filters"],
                                     config.get("pattern", (1, 2, 1, 4)), groups=groups)
    executor = fused_executor.FusedExecutor(
        explicit_matrix.compress(matrix, groups), groups, (3, 3), (config["stride"],) * 2,
        config["padding"])
    executor.interpret = False

    def loss(x, kernel):
        return jnp.sum(executor(x, kernel, "channels_last").astype("float32") ** 2)

    x = jax.ShapeDtypeStruct((2,) + config["size"] + (channels,), dtype)
    kernel = jax.ShapeDtypeStruct((3, 3, channels // groups, config["filters"]), dtype)
    lowered = jax.jit(jax.grad(loss, (0, 1))).trace(x, kernel).lower(
        lowering_platforms=("cuda",))
    # Forward, input gradient, kernel gradient: three Triton kernels.
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 3


def test_tiles_are_powers_of_two_and_blocks_follow_the_lattice():
    matrix = lattice.dilation_matrix(128, 64, (1, 2, 1, 4))
    executor = fused_executor.FusedExecutor(matrix, 1, (3, 3), (1, 1), "same")
    assert (executor.inputs, executor.filters, executor.group_tile) == (32, 16, 1)
    assert executor.in_order is None  # the blocked layout needs no gather
    grouped = lattice.dilation_matrix(128, 128, (1, 2, 1, 4), groups=32)
    executor = fused_executor.FusedExecutor(
        explicit_matrix.compress(grouped, 32), 32, (3, 3), (2, 2), "same")
    assert (executor.inputs, executor.filters, executor.group_tile) == (1, 1, 32)
    p, _ = executor.conv(56, 56).launch((3, 3))
    p.tiling.check()
    assert p.tiling.pixels <= fused_conv.PIXELS


def test_auto_measures_fused_only_on_a_gpu_under_jax(monkeypatch):
    assert "fused" not in autotune.candidates()
    monkeypatch.setattr(conv_ops, "jax_on_gpu", lambda: True)
    assert "fused" in autotune.candidates()


def test_tuner_skips_fused_where_its_kernels_fail(monkeypatch):
    """A GPU whose compiler refuses the kernels leaves the other candidates."""
    monkeypatch.setattr(autotune, "candidates",
                        lambda: executor.IMPLEMENTATIONS + executor.JAX_IMPLEMENTATIONS)
    layer = PSConv2D(8, 3, padding="same")
    layer.build((2, 8, 8, 8))
    real = layer.implementation_executor

    def failing(name):
        if name != "fused":
            return real(name)

        def run(inputs, kernel):
            raise RuntimeError("the compiler refused the kernel")

        return run

    monkeypatch.setattr(layer, "implementation_executor", failing)
    with pytest.warns(UserWarning, match="skips 'fused'"):
        times = autotune.measure(layer, (2, 8, 8, 8), "float32", False)
    assert set(times) == set(executor.IMPLEMENTATIONS)


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the JAX backend runs it")
def test_other_backends_refuse_fused():
    with pytest.raises(ValueError, match="needs the JAX backend"):
        PSConv2D(8, 3, implementation="fused")


LAYER_SCRIPT = r"""
import numpy as np, jax, keras
from psconv_tf import PSConv2D

def run(layer, x):
    weights = [v.value for v in layer.trainable_variables]
    def loss(weights, x):
        y, _ = layer.stateless_call(weights, [], x)
        return (y.astype("float32") ** 2).sum()
    return jax.tree_util.tree_leaves(jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(weights, x))

worst = 0.0
kwargs = dict(data_format="channels_first", strides=2, padding="valid", groups=2,
              pattern=(1, 2), dilation_rate=2, layout="interleaved")
shape = (2, 16, 14, 13)
x = keras.random.normal(shape, seed=1)
split = PSConv2D(8, 3, implementation="split", **kwargs)
fused = PSConv2D(8, 3, implementation="fused", **kwargs)
split.build(shape)
fused.build(shape)
fused.set_weights(split.get_weights())
for a, b in zip(run(fused, x), run(split, x)):
    worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
keras.config.set_dtype_policy("mixed_bfloat16")
layer = PSConv2D(8, 3, padding="same", implementation="fused")
layer.build((2, 8, 8, 16))
y = jax.eval_shape(layer, jax.ShapeDtypeStruct((2, 8, 8, 16), "float32"))
print("DTYPES", y.dtype, layer.kernel.dtype)
print("WORST", worst)
"""


def test_layer_runs_fused_under_jax():
    """PSConv2D(implementation="fused") against "split" under the JAX
    backend: loss and gradients with channels first, stride 2, groups, a
    base rate and the interleaved layout; mixed precision in bfloat16."""
    result = subprocess.run(
        [sys.executable, "-c", LAYER_SCRIPT],
        env=dict(os.environ, KERAS_BACKEND="jax"),
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DTYPES bfloat16 float32" in result.stdout
    worst = float(result.stdout.split("WORST")[-1])
    assert worst < 1e-5, worst
