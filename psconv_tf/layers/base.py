"""The base of the PSConv layers: what PSConv2D and DynamicPSConv2D share.

As Keras's `BaseConv` is to its convolutions: this class validates the
shared arguments up front (each refusal names the argument), creates the
kernel (kh, kw, in_channels // groups, filters) and the bias, runs `call`
(input checks, the compute format, the subclass's convolution, bias,
activation), computes the output shape under the span bound of
`engine.rate_conv`, and holds the shared config. A subclass sets its rates
(`rates`, `_rates_arguments`, then `_check_rates()`), prepares its
convolution at build (`_build_convolution(in_channels)`, before any weight
exists) and computes it (`_convolve(inputs, training)`, Eq. 3 without bias,
in the compute format).
"""

import keras
import numpy as np
from keras import activations
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from psconv_tf.engine import arguments
from psconv_tf.engine import grouped
from psconv_tf.engine import lattice
from psconv_tf.engine import rate_conv

PADDINGS = rate_conv.PADDINGS


class PSConvBase(keras.layers.Layer):
    """A convolution whose every kernel has its own dilation rate.

    Args:
        filters, kernel_size, strides, padding, data_format, groups,
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: see `PSConv2D`.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not arguments.is_positive_int(filters):
            raise ValueError(
                "Argument `filters` must be a positive integer. "
                f"Received: filters={filters!r}"
            )
        if not arguments.is_positive_int(groups):
            raise ValueError(
                "Argument `groups` must be a positive integer. "
                f"Received: groups={groups!r}"
            )
        if filters % groups:
            raise ValueError(
                "Argument `filters` must be divisible by `groups`. "
                f"Received: filters={filters}, groups={groups}."
            )
        self.filters = int(filters)
        self.groups = int(groups)
        self.kernel_size = arguments.pair(kernel_size, "kernel_size")
        self.strides = arguments.pair(strides, "strides")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in PADDINGS:
            raise ValueError(
                f"Argument `padding` must be one of {PADDINGS}. "
                f"Received: padding={padding!r}"
            )
        self.padding = padding
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "Argument `data_format` must be 'channels_last' or "
                f"'channels_first'. Received: data_format={data_format!r}"
            )
        self.data_format = data_format
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def rates(self):
        """The distinct dilation rates of the layer, ascending."""
        raise NotImplementedError

    @property
    def _rates_arguments(self):
        """The arguments that set the rates, for error messages."""
        raise NotImplementedError

    def _check_rates(self):
        lattice.check_rates(max(self.rates), self._rates_arguments)
        rate_conv.check_centres(self.kernel_size, self.rates, self.padding)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} expects inputs of rank 4 (batch, height, width, "
                f"channels or channels first). Received: input_shape="
                f"{input_shape}"
            )
        channel_axis = -1 if self.data_format == "channels_last" else 1
        in_channels = input_shape[channel_axis]
        if in_channels is None:
            raise ValueError(
                f"The channel dimension of the inputs of {type(self).__name__} "
                f"must be known. Received: input_shape={input_shape}"
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={channel_axis: in_channels}
        )
        lattice.check_kernels(self.filters, in_channels)
        self.compute_output_shape(input_shape)
        self._build_convolution(in_channels)
        self.kernel = self.add_weight(
            name="kernel",
            shape=self.kernel_size + (in_channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )

    def _build_convolution(self, in_channels):
        """Prepares the convolution for `in_channels` inputs (no weights)."""
        raise NotImplementedError

    def call(self, inputs, training=None):
        self._check_inputs(inputs)
        transpose = self._compute_format != self.data_format
        if transpose:
            inputs = ops.transpose(inputs, (0, 2, 3, 1))
        outputs = self._convolve(inputs, training)
        if self.use_bias:
            shape = [1, 1, 1, 1]
            shape[self._channel_axis] = self.filters
            outputs = outputs + ops.reshape(self.bias, shape)
        if transpose:
            outputs = ops.transpose(outputs, (0, 3, 1, 2))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _check_inputs(self, inputs):
        """Refuses integer inputs, as `Conv2D` on TensorFlow does but with a
        message, and sizes beyond the span bound (`compute_output_shape`)."""
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if "float" not in dtype:
            raise ValueError(
                f"{type(self).__name__} expects floating-point inputs. "
                f"Received: inputs of dtype {dtype}. Cast them first, e.g. "
                "keras.ops.cast(inputs, 'float32')."
            )
        self.compute_output_shape(tuple(inputs.shape))

    def _convolve(self, inputs, training):
        """Eq. 3 without bias, on inputs in the compute format."""
        raise NotImplementedError

    @property
    def _compute_format(self):
        # TensorFlow's CPU kernels differentiate dilated and explicitly padded
        # convolutions in NHWC only, so TensorFlow computes channels last.
        if keras.backend.backend() == "tensorflow":
            return "channels_last"
        return self.data_format

    @property
    def _channel_axis(self):
        return 3 if self._compute_format == "channels_last" else 1

    def compute_output_shape(self, input_shape):
        """The output shape; raises where an axis is too small for "valid"
        or too small for the span bound (see the class docstring)."""
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        shape = list(input_shape)
        largest = max(self.rates)
        for axis, size, stride in zip(spatial, self.kernel_size, self.strides):
            length = shape[axis]
            if not isinstance(length, (int, np.integer)):
                continue  # unknown here; checked at call when known
            length = int(length)
            geometry = rate_conv.AxisGeometry(size, stride, largest, self.padding, largest)
            if geometry.exceeds_span_limit(length):
                raise ValueError(
                    f"The largest rate {largest} of {type(self).__name__} "
                    f"(set by {self._rates_arguments}) with kernel_size="
                    f"{self.kernel_size} spans {geometry.span} pixels, more "
                    f"than max({rate_conv.MIN_SPAN_LIMIT}, "
                    f"{rate_conv.SPAN_PER_INPUT} x {length}) for inputs of "
                    f"shape {tuple(input_shape)}: with padding='{self.padding}' "
                    "the padding would fill its kernels. Lower the rates or "
                    "kernel_size, or use larger inputs."
                )
            length = geometry.output_length(length)
            if length <= 0:
                raise ValueError(
                    f"Input of shape {tuple(input_shape)} is too small for "
                    f"{type(self).__name__} with kernel_size={self.kernel_size}, "
                    f"strides={self.strides}, padding='valid' and largest "
                    f"rate {largest}."
                )
            shape[axis] = length
        shape[-1 if self.data_format == "channels_last" else 1] = self.filters
        return tuple(shape)

    def dilation_matrix(self):
        """D as an int array (filters, in_channels); 0 where no kernel."""
        raise NotImplementedError

    def dense_kernel(self):
        """Every kernel at its place: (kh, kw, in_channels, filters).

        Kernels across groups do not exist and are zeros here, so that
        y = sum over rates d of conv(x, dense_kernel * (D == d), rate d).
        """
        self._require_built("dense_kernel")
        return grouped.expand(self.kernel.numpy(), self.groups, out_axis=3, in_axis=2)

    def _require_built(self, method):
        if not self.built:
            raise ValueError(
                f"`{method}()` needs the layer to be built: call it on an "
                "input first (the input channels define the lattice)."
            )

    @classmethod
    def from_config(cls, config):
        return arguments.from_config(super().from_config, cls.__name__, config)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "groups": self.groups,
                "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": initializers.serialize(
                    self.bias_initializer
                ),
                "kernel_regularizer": regularizers.serialize(
                    self.kernel_regularizer
                ),
                "bias_regularizer": regularizers.serialize(
                    self.bias_regularizer
                ),
                "activity_regularizer": regularizers.serialize(
                    self.activity_regularizer
                ),
                "kernel_constraint": constraints.serialize(
                    self.kernel_constraint
                ),
                "bias_constraint": constraints.serialize(self.bias_constraint),
            }
        )
        return config
