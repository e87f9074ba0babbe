"""`NativeConv2D`: keras.layers.Conv2D on the backend's own convolution op.

Keras' TensorFlow backend sends grouped kernels through XLA (for ResNeXt's
3x3 convs on a CPU, seconds instead of milliseconds) and runs dilation as
space-to-batch. `NativeConv2D` is `Conv2D` in every respect (weights, config,
outputs) except that on TensorFlow, with channels last, it calls the raw
convolution op through `psconv_tf.engine.conv_ops`; on other backends and formats it
is `Conv2D` unchanged. The zoo's standard ResNeXt twins use it. Like
`PSConv2D`, it refuses a kernel size, stride or dilation rate above 1024 with
a ValueError, also from a config: such values reach int32 attributes of the
raw op, where TensorFlow aborts the process.
"""

import keras

from psconv_tf.engine import arguments
from psconv_tf.engine import conv_ops


@keras.saving.register_keras_serializable(package="psconv_tf")
class NativeConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` through the native op (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("kernel_size", "strides", "dilation_rate"):
            arguments.pair(getattr(self, name), name)

    @classmethod
    def from_config(cls, config):
        return arguments.from_config(super().from_config, cls.__name__, config)

    def convolution_op(self, inputs, kernel):
        if (
            keras.backend.backend() != "tensorflow"
            or self.data_format != "channels_last"
        ):
            return super().convolution_op(inputs, kernel)
        return conv_ops.conv2d(
            inputs, kernel, self.strides, self.padding, self.dilation_rate,
            self.data_format,
        )
