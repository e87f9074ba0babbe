"""Dilated convolutions on JAX whose gradients run as plain convolutions.

XLA differentiates a convolution at rate d > 1 into a filter-gradient
convolution with window strides d, which cuDNN runs slowly: on an H100 in
float32, `Conv2D(dilation_rate=2)` at (32, 64, 56, 56) took 13x the forward
and backward time of a 3x3 `Conv2D`. The same convolution written as
space-to-batch (each of the d x d phases of the input is a batch entry, then
a convolution at rate 1) took 1.15x, but its forward pass is slower than the
native one. `conv` keeps the native forward pass and transposes the
space-to-batch form for the gradients; both forms are the same linear map.

For a valid convolution at rate d (padding applied beforehand), output row
h = d * h' + r reads input rows d * (h' + a) + r: the rate-1 convolution of
phase r (rows r, r + d, ...). Padding the input to a multiple of d with zeros
at the end gives every phase the same length; the extra outputs are cropped.
"""

import functools

import jax
import jax.numpy as jnp


def conv(inputs, kernel, rate, groups=1, data_format="channels_last"):
    """A valid convolution at `rate` (an int or a pair), stride 1.

    Args:
        inputs: (N, H, W, C) or, for "channels_first", (N, C, H, W).
        kernel: (kh, kw, C // groups, filters), of the dtype of `inputs`.
        rate: int or tuple of 2 ints.
        groups: feature groups, as for `Conv2D(groups=...)`.
        data_format: "channels_last" or "channels_first".
    """
    rates = (rate, rate) if isinstance(rate, int) else tuple(int(r) for r in rate)
    return _conv(inputs, kernel, rates, int(groups), data_format)


def _numbers(data_format):
    if data_format == "channels_last":
        return ("NHWC", "HWIO", "NHWC"), (1, 2)
    return ("NCHW", "HWIO", "NCHW"), (2, 3)


def _native(inputs, kernel, rates, groups, data_format):
    numbers, _ = _numbers(data_format)
    return jax.lax.conv_general_dilated(
        inputs, kernel, (1, 1), "VALID", rhs_dilation=rates,
        dimension_numbers=numbers, feature_group_count=groups,
    )


def _space_to_batch(inputs, kernel, rates, groups, data_format):
    """The same convolution, as rate-1 convolutions of the input's phases."""
    numbers, (h_axis, w_axis) = _numbers(data_format)
    shape = inputs.shape
    out_h = shape[h_axis] - rates[0] * (kernel.shape[0] - 1)
    out_w = shape[w_axis] - rates[1] * (kernel.shape[1] - 1)
    padded = [-(-shape[h_axis] // rates[0]), -(-shape[w_axis] // rates[1])]
    widths = [(0, 0)] * 4
    widths[h_axis] = (0, padded[0] * rates[0] - shape[h_axis])
    widths[w_axis] = (0, padded[1] * rates[1] - shape[w_axis])
    x = jnp.pad(inputs, widths)
    dh, dw = rates
    if data_format == "channels_last":
        n, _, _, c = shape
        x = x.reshape(n, padded[0], dh, padded[1], dw, c)
        x = x.transpose(2, 4, 0, 1, 3, 5).reshape(dh * dw * n, padded[0], padded[1], c)
    else:
        n, c, _, _ = shape
        x = x.reshape(n, c, padded[0], dh, padded[1], dw)
        x = x.transpose(3, 5, 0, 1, 2, 4).reshape(dh * dw * n, c, padded[0], padded[1])
    y = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=numbers,
        feature_group_count=groups,
    )
    if data_format == "channels_last":
        _, ph, pw, f = y.shape
        y = y.reshape(dh, dw, n, ph, pw, f).transpose(2, 3, 0, 4, 1, 5)
        return y.reshape(n, ph * dh, pw * dw, f)[:, :out_h, :out_w]
    _, f, ph, pw = y.shape
    y = y.reshape(dh, dw, n, f, ph, pw).transpose(2, 3, 4, 0, 5, 1)
    return y.reshape(n, f, ph * dh, pw * dw)[:, :, :out_h, :out_w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(inputs, kernel, rates, groups, data_format):
    return _native(inputs, kernel, rates, groups, data_format)


def _conv_forward(inputs, kernel, rates, groups, data_format):
    return _native(inputs, kernel, rates, groups, data_format), (inputs, kernel)


def _conv_backward(rates, groups, data_format, residuals, cotangent):
    inputs, kernel = residuals
    as_inputs = jax.linear_transpose(
        lambda x: _space_to_batch(x, kernel, rates, groups, data_format), inputs
    )
    as_kernel = jax.linear_transpose(
        lambda k: _space_to_batch(inputs, k, rates, groups, data_format), kernel
    )
    return as_inputs(cotangent)[0], as_kernel(cotangent)[0]


_conv.defvjp(_conv_forward, _conv_backward)
