"""PSConv2D: the Poly-Scale Convolution layer."""

import keras
import numpy as np
from keras import activations
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from psconv_tf.engine import arguments
from psconv_tf.engine import autotune
from psconv_tf.engine import executor
from psconv_tf.engine import explicit_matrix
from psconv_tf.engine import grouped
from psconv_tf.engine import lattice
from psconv_tf.engine import rate_conv

PADDINGS = rate_conv.PADDINGS
IMPLEMENTATIONS = ("auto",) + executor.IMPLEMENTATIONS + executor.JAX_IMPLEMENTATIONS


@keras.saving.register_keras_serializable(package="psconv_tf")
class PSConv2D(keras.layers.Layer):
    """Poly-Scale Convolution (Li, Yao & Chen, ECCV 2020), a `Conv2D` drop-in.

    Every kernel (filter c, input channel k) has its own dilation rate
    D[c, k] (Eq. 3 of the paper): a `pattern` of rates cycles along the input
    channels and shifts by one position from each filter to the next, so one
    layer sees many scales. The layer has exactly the weights and the
    multiply-accumulates of `Conv2D(filters, kernel_size, groups=groups)`: it
    runs as a few (grouped) convolutions, one per rate, compiled once from D.

    `dilation_matrix()` returns D and `dense_kernel()` every kernel at its
    place; the layer computes y = sum over rates d of a plain convolution at
    rate d with the kernels whose D is d (zeros elsewhere), plus the bias.

    Args:
        filters: int, number of output channels.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints.
        padding: `"valid"` (outputs where the largest rate's kernel fits, every
            rate centred there), `"same"` (TensorFlow's convention, for each
            rate) or `"symmetric"` (rate * (k - 1) / 2 on every side for each
            rate, as PyTorch pads; needed to match PyTorch models at stride 2).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        dilation_rate: int or tuple of 2 equal ints, a base rate that
            multiplies the pattern: every rate, the 1s included, so that
            `pattern=(1,)` is `Conv2D(dilation_rate=...)`. Not the official
            PyTorch layer's `dilation`, which is the rate of its dilated
            parts only: official `PSConv2d(dilation=d)` is
            `PSConv2D(pattern=(1, d, 1, 2 * d))` with `dilation_rate=1`.
        groups: int, number of channel groups; the cyclic pattern repeats in
            every group (PS group convolution).
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as for `keras.layers.Conv2D`.
        pattern: tuple of positive ints, the rates of one cycle; its length is
            the cyclic interval t. Default (1, 2, 1, 4), the paper's setting.
            `pattern=(d,)` computes `Conv2D(dilation_rate=d)`.
        cyclic: `"both"` (the paper's PSConv), or the ablations of the paper's
            Table 5: `"input"` (rates vary along input channels only) and
            `"output"` (along filters only).
        layout: `"blocked"` (default; the official implementation's
            arrangement, input channels of one cycle position contiguous) or
            `"interleaved"` (the paper's D[c, k] = pattern[(k - c) % t]).
            See `psconv_tf.engine.lattice.dilation_matrix`.
        dilation_matrix: instead of `pattern`, `cyclic` and `layout`, the rate
            of every kernel: positive ints of shape (filters, in_channels //
            groups), row c holding filter c's rates over the input channels
            of its own group (the kernel's axes 3 and 2); any rates, not only
            lattices, and a filter may lack a rate. The block form of shape
            (filters, in_channels) with zeros across groups, as
            `dilation_matrix()` returns it, is accepted too. `dilation_rate`
            multiplies it. Stored in the config as run-length text, see
            `psconv_tf.engine.explicit_matrix`.

    Implementation: every one of these computes the same function, Inf and
    NaN inputs included (they reach exactly the outputs Eq. 3 makes
    non-finite).
        implementation: `"auto"` (default: measured per input shape and
            cached, see `psconv_tf.engine.autotune`; with PSCONV_TF_AUTOTUNE=0 or
            where nothing was measured, `"masked"` for layers of at most
            1024 kernels and `"split"` above), or one of:
            `"split"`: one convolution per rate and input-class selection,
            each run in all layer groups at once;
            `"grouped"`: one grouped convolution per rate and branch shape;
            `"masked"`: one convolution per rate over all channels with the
            kernel masked to that rate (more MACs, fewest ops; tiny layers),
            plus a run-time check for Inf and NaN inputs; where a branch
            cannot be traced (`autotune.branch_free()`, which exports use,
            and `torch.compile`) it runs as `"split"`;
            `"grouped_s2b"`: `"grouped"`, dilation run as space-to-batch at
            stride 1 (fast backward passes for few channels per group);
            `"fused"` (JAX backend only): one Pallas kernel per pass
            (forward, input and kernel gradients), Triton on GPUs and
            interpret mode (exact, slow) elsewhere, see
            `psconv_tf.engine.fused_executor`; other backends refuse it, also in
            a saved config: models that change backends keep `"auto"`.
        Gathers: none with the blocked layout; otherwise wherever a channel
        selection has more than `executor.MAX_RUNS` runs (the interleaved
        layout, explicit matrices with scattered rates); none in "masked".

    With a pattern, input channels must be divisible by groups * t (where
    rates vary along inputs) and filters by groups * t (where they vary along
    filters).

    Bounds: `kernel_size`, `strides` and every rate (`pattern` or
    `dilation_matrix` entries times `dilation_rate`) are at most 1024, and a
    layer has at most 2**24 kernels (filters x input channels). With padding
    "same" or "symmetric", the largest rate's span rate x (kernel_size - 1)
    may be at most max(64, 4 x the input's height) along the height, and
    alike along the width, checked wherever the input's size is known (at
    build and at every call): beyond it the padding, not the input, would
    fill the kernels. Beyond a bound the layer raises a ValueError naming
    the arguments, before allocating anything.

    With strides, a rate that is a multiple of the stride runs as a conv at
    rate / stride over the subsampled input; any other rate > 1 (say 3 at
    stride 2) runs at stride 1 and subsamples its output, spending stride**2
    times that term's multiply-accumulates.

    Example:

    >>> x = keras.random.normal((2, 32, 32, 64))
    >>> layer = PSConv2D(64, 3, padding="same", use_bias=False)
    >>> tuple(layer(x).shape)
    (2, 32, 32, 64)
    >>> sorted(set(layer.dilation_matrix().ravel().tolist()))
    [1, 2, 4]
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
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
        pattern=None,
        cyclic=None,
        layout=None,
        dilation_matrix=None,
        implementation="auto",
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
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"Argument `implementation` must be one of {IMPLEMENTATIONS}. "
                f"Received: implementation={implementation!r}"
            )
        if (implementation in executor.JAX_IMPLEMENTATIONS
                and keras.backend.backend() != "jax"):
            raise ValueError(
                f"Argument `implementation`={implementation!r} needs the JAX "
                f"backend; this process runs {keras.backend.backend()!r}. Use "
                f"'auto' or one of {executor.IMPLEMENTATIONS}."
            )
        self.implementation = implementation
        self.filters = int(filters)
        self.groups = int(groups)
        self.kernel_size = arguments.pair(kernel_size, "kernel_size")
        self.strides = arguments.pair(strides, "strides")
        self.dilation_rate = arguments.pair(dilation_rate, "dilation_rate")
        if self.dilation_rate[0] != self.dilation_rate[1]:
            raise ValueError(
                "Argument `dilation_rate` must be the same along height and "
                "width: the pattern sets each kernel's rate. Received: "
                f"dilation_rate={self.dilation_rate}"
            )
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
        if dilation_matrix is not None:
            given = [name for name, value in
                     (("pattern", pattern), ("cyclic", cyclic), ("layout", layout))
                     if value is not None]
            if given:
                raise ValueError(
                    "Argument `dilation_matrix` sets every rate: leave "
                    f"{', '.join(f'`{n}`' for n in given)} unset."
                )
            self._rates_given = explicit_matrix.validate(dilation_matrix)
            if self._rates_given.shape[0] != self.filters:
                raise ValueError(
                    "Argument `dilation_matrix` must have one row per filter: "
                    f"filters={self.filters}, but its shape is "
                    f"{self._rates_given.shape}."
                )
            self.pattern = self.cyclic = self.layout = None
            self._check_rates()
            self._init_weights_arguments(locals())
            return
        self._rates_given = None
        pattern = (1, 2, 1, 4) if pattern is None else pattern
        cyclic = "both" if cyclic is None else cyclic
        layout = "blocked" if layout is None else layout
        self.pattern = lattice.validate_pattern(pattern)
        if cyclic not in lattice.CYCLIC_MODES:
            raise ValueError(
                f"Argument `cyclic` must be one of {lattice.CYCLIC_MODES}. "
                f"Received: cyclic={cyclic!r}"
            )
        if layout not in lattice.LAYOUTS:
            raise ValueError(
                f"Argument `layout` must be one of {lattice.LAYOUTS}. "
                f"Received: layout={layout!r}"
            )
        self.cyclic = cyclic
        self.layout = layout
        self._check_rates()
        self._init_weights_arguments(locals())

    def _init_weights_arguments(self, arguments):
        self.activation = activations.get(arguments["activation"])
        self.use_bias = arguments["use_bias"]
        self.kernel_initializer = initializers.get(arguments["kernel_initializer"])
        self.bias_initializer = initializers.get(arguments["bias_initializer"])
        self.kernel_regularizer = regularizers.get(arguments["kernel_regularizer"])
        self.bias_regularizer = regularizers.get(arguments["bias_regularizer"])
        self.kernel_constraint = constraints.get(arguments["kernel_constraint"])
        self.bias_constraint = constraints.get(arguments["bias_constraint"])
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def rates(self):
        """The distinct dilation rates of the layer, ascending."""
        base = self.dilation_rate[0]
        if self._rates_given is not None:
            given = self._rates_given
            return tuple(int(r) * base for r in np.unique(given[given > 0]))
        return tuple(sorted({rate * base for rate in self.pattern}))

    @property
    def _rates_arguments(self):
        """The arguments that set the rates, for error messages."""
        source = "`pattern`" if self._rates_given is None else "`dilation_matrix`"
        return f"{source} x `dilation_rate`"

    def _check_rates(self):
        lattice.check_rates(max(self.rates), self._rates_arguments)
        rate_conv.check_centres(self.kernel_size, self.rates, self.padding)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "PSConv2D expects inputs of rank 4 (batch, height, width, "
                f"channels or channels first). Received: input_shape="
                f"{input_shape}"
            )
        channel_axis = -1 if self.data_format == "channels_last" else 1
        in_channels = input_shape[channel_axis]
        if in_channels is None:
            raise ValueError(
                "The channel dimension of the inputs of PSConv2D must be "
                f"known. Received: input_shape={input_shape}"
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={channel_axis: in_channels}
        )
        lattice.check_kernels(self.filters, in_channels)
        self.compute_output_shape(input_shape)
        if self._rates_given is not None:
            if in_channels % self.groups:
                raise ValueError(
                    "The number of input channels must be divisible by "
                    f"`groups`. Received: groups={self.groups}, input "
                    f"channels={in_channels}."
                )
            self._rates_given = explicit_matrix.compact(
                self._rates_given, self.filters, in_channels, self.groups
            )
            self._matrix = explicit_matrix.expand(
                self._rates_given * self.dilation_rate[0], self.groups
            )
        else:
            self._matrix = lattice.dilation_matrix(
                in_channels,
                self.filters,
                self.pattern,
                groups=self.groups,
                cyclic=self.cyclic,
                layout=self.layout,
                base_rate=self.dilation_rate[0],
            )
        self._plan = lattice.compile_plan(self._matrix, self.groups)
        self._in_channels = in_channels
        # Every implementation's executor now, not at a first call that
        # a trace (torch.compile) would have to follow through NumPy.
        names = set(autotune.candidates()) | {self.implementation} - {"auto"}
        self._executors = {
            name: self._make_executor(name, in_channels) for name in sorted(names)
        }
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
        implementation = autotune.implementation(self, inputs, bool(training))
        return self.implementation_executor(implementation)(inputs, self.kernel)

    @property
    def _compute_format(self):
        # TensorFlow's CPU kernels differentiate dilated and explicitly padded
        # convolutions in NHWC only, so TensorFlow computes channels last.
        if keras.backend.backend() == "tensorflow":
            return "channels_last"
        return self.data_format

    def implementation_executor(self, implementation):
        """`fn(inputs, kernel)`: the layer without bias and activation, in
        the compute format (channels last on TensorFlow), by one of
        `executor.IMPLEMENTATIONS`."""
        run = self._executors[implementation]
        return lambda inputs, kernel: run(inputs, kernel, self._compute_format)

    def _make_executor(self, implementation, in_channels):
        if implementation == "fused":
            from psconv_tf.engine import fused_executor  # imports JAX

            return fused_executor.FusedExecutor(
                explicit_matrix.compress(self._matrix, self.groups), self.groups,
                self.kernel_size, self.strides, self.padding,
            )
        convs = {
            rate: rate_conv.RateConv(
                rate, self.kernel_size, self.strides, self.padding,
                max(self.rates), self._compute_format,
                space_to_batch=implementation == "grouped_s2b",
            )
            for rate in self.rates
        }
        if implementation == "masked":
            rates = explicit_matrix.compress(self._matrix, self.groups)
            return executor.MaskedExecutor(rates, convs)
        return executor.PlanExecutor(
            self._plan, convs, in_channels // self.groups, implementation
        )

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
        self._require_built("dilation_matrix")
        return self._matrix.copy()

    def dense_kernel(self):
        """Every kernel at its place: (kh, kw, in_channels, filters).

        Kernels across groups do not exist and are zeros here, so that
        y = sum over rates d of conv(x, dense_kernel * (D == d), rate d).
        """
        self._require_built("dense_kernel")
        return grouped.expand(self.kernel.numpy(), self.groups, out_axis=3, in_axis=2)

    def macs(self, input_shape):
        """Multiply-accumulates for one input of `input_shape` (no batch)."""
        output_shape = self.compute_output_shape((None,) + tuple(input_shape))
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        pixels = output_shape[spatial[0]] * output_shape[spatial[1]]
        area = self.kernel_size[0] * self.kernel_size[1]
        return pixels * self._plan.macs_per_output_pixel(area)

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
                "dilation_rate": self.dilation_rate,
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
                "pattern": None if self.pattern is None else list(self.pattern),
                "cyclic": self.cyclic,
                "layout": self.layout,
                "implementation": self.implementation,
                "dilation_matrix": None
                if self._rates_given is None
                else explicit_matrix.encode(self._rates_given),
            }
        )
        return config
