"""One 2D convolution on any Keras backend, fast on TensorFlow."""

import keras
from keras import ops


def conv2d(inputs, kernel, strides, padding, dilation_rate, data_format):
    """A (grouped) 2D convolution.

    Args:
        inputs: 4D tensor.
        kernel: (kh, kw, in_channels // groups, filters).
        strides: tuple of 2 ints.
        padding: "same" (TensorFlow's convention), "valid", or explicit
            ((top, bottom), (left, right)).
        dilation_rate: int or tuple of 2 ints.
        data_format: "channels_last" or "channels_first".
    """
    if keras.backend.backend() == "tensorflow":
        # The raw op, not Keras' route through tf.nn.convolution: that runs
        # dilation as space-to-batch (two extra copies), refuses strides with
        # dilation, and sends grouped kernels through XLA, slowly on CPU.
        import tensorflow as tf

        rates = (dilation_rate,) * 2 if isinstance(dilation_rate, int) else dilation_rate
        grouped = kernel.shape[2] != inputs.shape[3 if data_format == "channels_last" else 1]
        if not isinstance(padding, str) and (max(rates) > 1 or grouped):
            # CPU kernels cannot differentiate dilated or grouped convolutions
            # with explicit padding: pad first.
            inputs = _pad(inputs, padding, data_format)
            padding = "valid"
        if not isinstance(padding, str):
            spatial = [list(pair) for pair in padding]
            if data_format == "channels_last":
                padding = [[0, 0]] + spatial + [[0, 0]]
            else:
                padding = [[0, 0], [0, 0]] + spatial
        else:
            padding = padding.upper()
        if inputs.shape[0] == 0:
            # TensorFlow's conv kernels return an empty batch unchanged, with
            # the input's spatial size and channels.
            return tf.zeros(
                _output_shape(inputs.shape, kernel.shape, strides, padding, rates, data_format),
                inputs.dtype,
            )
        convolve = tf.nn.conv2d
        if inputs.dtype == tf.float16 and max(rates) > 1:
            # CPU kernels have no float16 gradient for dilated convolutions;
            # tf.nn.convolution runs the dilation as space-to-batch instead.
            convolve = tf.nn.convolution
        return convolve(
            inputs,
            kernel,
            strides=strides,
            padding=padding,
            data_format="NHWC" if data_format == "channels_last" else "NCHW",
            dilations=dilation_rate,
        )
    if not isinstance(padding, str):
        inputs = _pad(inputs, padding, data_format)
        padding = "valid"
    return ops.conv(
        inputs,
        kernel,
        strides=strides,
        padding=padding,
        data_format=data_format,
        dilation_rate=dilation_rate,
    )


def _pad(inputs, padding, data_format):
    spatial = [tuple(pair) for pair in padding]
    if data_format == "channels_last":
        return ops.pad(inputs, [(0, 0)] + spatial + [(0, 0)])
    return ops.pad(inputs, [(0, 0), (0, 0)] + spatial)


def _output_shape(shape, kernel_shape, strides, padding, rates, data_format):
    """Static output shape of a TensorFlow convolution (padding as passed to
    tf.nn.conv2d: "SAME", "VALID" or per-axis pairs of all four axes)."""
    axes = (1, 2) if data_format == "channels_last" else (2, 3)
    shape = list(shape)
    for i, axis in enumerate(axes):
        span = rates[i] * (kernel_shape[i] - 1)
        if padding == "SAME":
            shape[axis] = -(-shape[axis] // strides[i])
            continue
        extra = 0 if padding == "VALID" else sum(padding[axis])
        shape[axis] = (shape[axis] + extra - span - 1) // strides[i] + 1
    shape[3 if data_format == "channels_last" else 1] = kernel_shape[3]
    return shape
