"""One 2D convolution on any Keras backend, fast on TensorFlow."""

import functools

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
        channel_axis = 3 if data_format == "channels_last" else 1
        groups = inputs.shape[channel_axis] // kernel.shape[2]
        grouped = groups > 1
        if grouped and inputs.dtype in (tf.float16, tf.bfloat16) and not _tensorflow_gpu():
            # CPU kernels differentiate grouped convolutions in float16 and
            # bfloat16 only where oneDNN runs the dtype on the CPU (float16
            # needs AVX512-FP16); elsewhere the Eigen kernel checks the
            # ungrouped filter size and fails ("filter_size does not have
            # enough elements"): one convolution per group.
            pieces = zip(
                tf.split(inputs, groups, axis=channel_axis),
                tf.split(kernel, groups, axis=3),
            )
            return tf.concat(
                [conv2d(x, k, strides, padding, dilation_rate, data_format) for x, k in pieces],
                axis=channel_axis,
            )
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
        from psconv_tf.engine import tf_dilation

        if max(rates) > 1 and tuple(strides) == (1, 1) and tf_dilation.wanted():
            # XLA differentiates dilated convolutions slowly on GPUs, as under
            # JAX below; tf_dilation keeps the forward and runs the gradients
            # as space-to-batch convolutions at rate 1.
            return tf_dilation.conv(inputs, kernel, rates, padding, data_format)
        convolve = tf.nn.conv2d
        if inputs.dtype in (tf.float16, tf.bfloat16) and max(rates) > 1:
            # CPU kernels have no float16 or bfloat16 gradient for dilated
            # convolutions where oneDNN does not run the dtype;
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
    rates = (dilation_rate,) * 2 if isinstance(dilation_rate, int) else tuple(dilation_rate)
    if max(rates) > 1 and tuple(strides) == (1, 1) and jax_on_gpu():
        # XLA differentiates dilated convolutions slowly on GPUs (13x a 3x3
        # conv's forward+backward on an H100); jax_dilation keeps the native
        # forward and runs the gradients as space-to-batch convolutions.
        from psconv_tf.engine import jax_dilation

        if padding == "same":
            spans = [rate * (size - 1) for rate, size in zip(rates, kernel.shape[:2])]
            padding = [(span // 2, span - span // 2) for span in spans]
        if not isinstance(padding, str):
            inputs = _pad(inputs, padding, data_format)
        channel_axis = 3 if data_format == "channels_last" else 1
        groups = inputs.shape[channel_axis] // kernel.shape[2]
        return jax_dilation.conv(
            inputs, ops.cast(kernel, inputs.dtype), rates, groups, data_format
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


@functools.cache
def _tensorflow_gpu():
    """Whether TensorFlow sees a GPU (where convolutions run by default)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def jax_on_gpu():
    """Whether the Keras backend is JAX and its default device a GPU."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() in ("gpu", "cuda", "rocm")


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
