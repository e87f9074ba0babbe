"""Dilated convolutions on TensorFlow whose gradients run as plain convolutions.

XLA differentiates a convolution at rate d > 1 into a filter-gradient
convolution with window strides d (TensorFlow's XLA lowering of
`Conv2DBackpropFilter` and JAX's alike), which cuDNN runs slowly: on an H100
in float32, `Conv2D(dilation_rate=2)` at (32, 64, 56, 56) took 13.8x the
forward and backward time of a 3x3 convolution (measured under JAX). `conv`
keeps the native forward pass (one `Conv2D` op with `dilations`) and computes
both gradients by transposing the same convolution written as space-to-batch:
rate-1 convolutions over the input's phases, whose gradients are
`Conv2DBackpropInput` / `Conv2DBackpropFilter` at rate 1.
`psconv_tf.engine.jax_dilation` does the same for JAX.

The maths, per spatial axis (height and width independently; the rates may
differ between them, and either may be 1). A valid convolution at rate d of an
input of length L with a kernel of size k, stride 1, has O = L - d (k - 1)
outputs, y[h] = sum_i w[i] x[h + d i]. Write h = d q + r with 0 <= r < d:
y[d q + r] = sum_i w[i] x[d (q + i) + r], i.e. the phase-r output rows are
the rate-1 valid convolution of the phase-r input rows x[r], x[r + d], ...
Zeros appended to the input up to P d rows, P = ceil(L / d), give every phase
the same length P and Q = P - (k - 1) outputs; interleaving the phases gives
d Q >= O rows, the first O of which are y (the rest are cropped). So, with E
the zero-extension, S the phase split (a permutation of rows into the batch),
C the rate-1 valid convolution, I = S^-1 the interleave and K the crop to O
rows,

    conv_d(x, w) = K I C(S E x, w),

one linear map in x and in w. Its transpose in x is E^T S^T C_x^T I^T K^T:
zero-pad the upstream gradient to d Q rows (K^T), split it into phases
(I^T = S, a permutation's transpose is its inverse), apply the rate-1 input
gradient `Conv2DBackpropInput` to P rows per phase (C_x^T), interleave
(S^T = I) and keep the first L rows (E^T). In w it is C_w^T(S E x, S K^T g):
the rate-1 `Conv2DBackpropFilter` of the split input and the split upstream
gradient, which sums over the batch and hence over all d_h d_w phases. Groups
(`Conv2D` with C / groups kernel channels) pass through unchanged: phases are
batch entries, groups are channels.

Invariants:
- values are the native op's; gradients equal the native op's gradients as
  exact linear maps (only rounding differs), at every order: every op of the
  transposed form is differentiable, so `tf.GradientTape` nests;
- stride 1 only: `psconv_tf.engine.rate_conv` reduces strides with dilation to
  stride-1 convolutions (at rate / stride over a subsampled input, or at the
  full rate with a subsampled output), so no strided dilated op reaches here;
- padding is applied before the custom gradient as an explicit pad ("SAME"
  at stride 1 pads d (k - 1) // 2 before and the rest after, TensorFlow's
  rule), whose gradient is a crop; sizes may be unknown when traced.

When the route is taken (`wanted`): `PSCONV_TF_DILATION_GRADIENT` is "auto"
(default: under XLA on a GPU), "space_to_batch" (always, on any device and
eagerly: for tests and CPU measurements) or "native" (never). "Under XLA on a
GPU" is decided when the op is traced: inside a `jit_compile=True`
`tf.function` (TensorFlow's own XLA context test, including functions traced
inside one, and Keras' `jit_compile=True` training step), and placed on a GPU:
the innermost device scope names a GPU, or names no device type while a GPU is
visible (TensorFlow then places on the GPU). A jit-compiled function traced
without a device scope and later called under `tf.device("/CPU:0")` keeps its
trace (TensorFlow's cache ignores eager device scopes): the same function,
only its speed differs. XLA auto-clustering (`TF_XLA_FLAGS=--tf_xla_auto_jit`)
is not detected.
"""

import os

import tensorflow as tf

ENVIRONMENT = "PSCONV_TF_DILATION_GRADIENT"
MODES = ("auto", "space_to_batch", "native")


def wanted():
    """Whether a dilated stride-1 convolution traced here takes this route."""
    mode = os.environ.get(ENVIRONMENT, "").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(
            f"{ENVIRONMENT} must be one of {', '.join(MODES)}; got "
            f"{os.environ[ENVIRONMENT]!r}."
        )
    if mode == "auto":
        return xla_on_gpu()
    return mode == "space_to_batch"


def xla_on_gpu():
    """Whether ops built here are compiled by XLA for a GPU (see the module
    docstring); False when executing eagerly."""
    if tf.executing_eagerly():
        return False
    try:
        # TensorFlow's own test of a jit-compiled trace (used by its control
        # flow and tf.distribute); no public equivalent exists.
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return False
    if not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return False
    # A stateless no-op takes the innermost device scope and is pruned.
    device = tf.DeviceSpec.from_string(tf.no_op().device).device_type
    if device:
        return device == "GPU"
    return bool(tf.config.list_logical_devices("GPU"))


def conv(inputs, kernel, rates, padding, data_format):
    """A convolution at `rates`, stride 1: the native op, space-to-batch gradients.

    Args:
        inputs: 4D tensor.
        kernel: (kh, kw, in_channels // groups, filters).
        rates: pair of ints.
        padding: "same" (TensorFlow's rule at stride 1) or "valid", any case.
        data_format: "channels_last" or "channels_first".
    """
    fmt = "NHWC" if data_format == "channels_last" else "NCHW"
    rates = tuple(int(r) for r in rates)
    kernel = tf.convert_to_tensor(kernel)
    if padding.lower() == "same":
        widths = [[0, 0] for _ in range(4)]
        for axis, rate, size in zip(_axes(fmt), rates, kernel.shape[:2]):
            span = rate * (size - 1)
            widths[axis] = [span // 2, span - span // 2]
        inputs = tf.pad(inputs, widths)
    return _valid(tf.convert_to_tensor(inputs), kernel, rates, fmt)


def _valid(inputs, kernel, rates, fmt):
    @tf.custom_gradient
    def convolve(x, k):
        def gradient(g):
            return _transposed(g, x, k, rates, fmt)

        y = tf.nn.conv2d(x, k, 1, "VALID", data_format=fmt, dilations=list(rates))
        return y, gradient

    return convolve(inputs, kernel)


def _transposed(g, x, k, rates, fmt):
    """The gradients in x and in k of sum(g * conv_d(x, k)): E^T I C_x^T(S K^T g)
    and C_w^T(S E x, S K^T g) (module docstring)."""
    dims = _dims(x)
    lengths = [dims[axis] for axis in _axes(fmt)]
    phase_lengths = [-(-length // rate) for length, rate in zip(lengths, rates)]
    extended = _extend(x, [r * p for r, p in zip(rates, phase_lengths)], fmt)
    x_phases = _split(extended, rates, fmt)
    outputs = [r * (p - size + 1) for r, p, size in zip(rates, phase_lengths, k.shape[:2])]
    g_phases = _split(_extend(g, outputs, fmt), rates, fmt)
    grad_x = tf.raw_ops.Conv2DBackpropInput(
        input_sizes=tf.shape(x_phases), filter=k, out_backprop=g_phases,
        strides=[1, 1, 1, 1], padding="VALID", data_format=fmt,
    )
    grad_k = tf.raw_ops.Conv2DBackpropFilter(
        input=x_phases, filter_sizes=tf.shape(k), out_backprop=g_phases,
        strides=[1, 1, 1, 1], padding="VALID", data_format=fmt,
    )
    return _crop(_join(grad_x, rates, fmt), lengths, fmt), grad_k


def _axes(fmt):
    return (1, 2) if fmt == "NHWC" else (2, 3)


def _dims(tensor):
    """The shape as a list: static ints where known, scalar tensors elsewhere."""
    dynamic = tf.shape(tensor)
    return [size if size is not None else dynamic[i] for i, size in enumerate(tensor.shape)]


def _extend(tensor, lengths, fmt):
    """E (and K^T): zeros appended along the spatial axes up to `lengths`."""
    dims = _dims(tensor)
    widths = [[0, 0] for _ in range(4)]
    for axis, length in zip(_axes(fmt), lengths):
        widths[axis] = [0, length - dims[axis]]
    return tf.pad(tensor, widths)


def _crop(tensor, lengths, fmt):
    """E^T (and K): the first `lengths` rows and columns."""
    begin, size = [0] * 4, [-1] * 4
    for axis, length in zip(_axes(fmt), lengths):
        size[axis] = length
    return tf.slice(tensor, begin, size)


def _split(tensor, rates, fmt):
    """S: (N, P_h d_h, P_w d_w, C) -> (d_h d_w N, P_h, P_w, C); batch entry
    (a, b, n) holds rows a, a + d_h, ... and columns b, b + d_w, ... of n."""
    dh, dw = rates
    if fmt == "NHWC":
        n, h, w, c = _dims(tensor)
        tensor = tf.reshape(tensor, [n, h // dh, dh, w // dw, dw, c])
        tensor = tf.transpose(tensor, [2, 4, 0, 1, 3, 5])
        return tf.reshape(tensor, [dh * dw * n, h // dh, w // dw, c])
    n, c, h, w = _dims(tensor)
    tensor = tf.reshape(tensor, [n, c, h // dh, dh, w // dw, dw])
    tensor = tf.transpose(tensor, [3, 5, 0, 1, 2, 4])
    return tf.reshape(tensor, [dh * dw * n, c, h // dh, w // dw])


def _join(tensor, rates, fmt):
    """I = S^-1: the phases interleaved back into rows and columns."""
    dh, dw = rates
    if fmt == "NHWC":
        b, ph, pw, c = _dims(tensor)
        tensor = tf.reshape(tensor, [dh, dw, b // (dh * dw), ph, pw, c])
        tensor = tf.transpose(tensor, [2, 3, 0, 4, 1, 5])
        return tf.reshape(tensor, [b // (dh * dw), ph * dh, pw * dw, c])
    b, c, ph, pw = _dims(tensor)
    tensor = tf.reshape(tensor, [dh, dw, b // (dh * dw), c, ph, pw])
    tensor = tf.transpose(tensor, [2, 3, 4, 0, 5, 1])
    return tf.reshape(tensor, [b // (dh * dw), c, ph * dh, pw * dw])
