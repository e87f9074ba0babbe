"""PSConv2D: the Poly-Scale Convolution layer."""

import keras
import numpy as np
from keras import activations
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from psconv_tf import lattice

PADDINGS = ("valid", "same", "symmetric")

# Steps with at most this many groups run as separate dense convolutions:
# measured faster than one grouped convolution on CPU (see benchmarks/), and
# Keras sends grouped convolutions on TensorFlow through XLA, which is slow.
MAX_SPLIT_GROUPS = 8

# Channel selections made of more contiguous runs than this use a gather.
MAX_SLICES = 16


def _standardize_pair(value, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
        for v in value
    ):
        raise ValueError(
            f"Argument `{name}` must be a positive integer or a tuple of two "
            f"positive integers. Received: {name}={value!r}"
        )
    return tuple(int(v) for v in value)


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
            multiplies the pattern.
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
            See `psconv_tf.lattice.dilation_matrix`.

    Input channels must be divisible by groups * t (where rates vary along
    inputs) and filters by groups * t (where they vary along filters).

    Example:

    >>> x = keras.random.normal((2, 32, 32, 64))
    >>> layer = PSConv2D(64, 3, padding="same", use_bias=False)
    >>> layer(x).shape
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
        pattern=(1, 2, 1, 4),
        cyclic="both",
        layout="blocked",
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(
                "Argument `filters` must be a positive integer. "
                f"Received: filters={filters!r}"
            )
        if not isinstance(groups, (int, np.integer)) or groups <= 0:
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
        self.kernel_size = _standardize_pair(kernel_size, "kernel_size")
        self.strides = _standardize_pair(strides, "strides")
        self.dilation_rate = _standardize_pair(dilation_rate, "dilation_rate")
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
        self._check_kernel_centres()
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
        base = self.dilation_rate[0]
        return tuple(sorted({rate * base for rate in self.pattern}))

    def _check_kernel_centres(self):
        # With an even kernel, rates of different parity have no common centre.
        largest = max(self.rates)
        for size in self.kernel_size:
            for rate in self.rates:
                if self.padding == "symmetric" and rate * (size - 1) % 2:
                    raise ValueError(
                        "padding='symmetric' needs rate * (kernel_size - 1) "
                        f"even for every rate. Received: kernel_size="
                        f"{self.kernel_size}, rates={self.rates}."
                    )
                if self.padding == "valid" and (largest - rate) * (size - 1) % 2:
                    raise ValueError(
                        "padding='valid' with an even kernel_size needs rates "
                        f"of one parity. Received: kernel_size="
                        f"{self.kernel_size}, rates={self.rates}."
                    )

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
        self._compile_selections(in_channels)
        self.compute_output_shape(input_shape)
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

    def call(self, inputs):
        kernel = ops.reshape(self.kernel, self.kernel_size + (-1,))
        pieces = []
        for step, selections in zip(self._plan.steps, self._input_selections):
            step_kernel = ops.take(kernel, step.kernel_index, axis=2)
            width = step_kernel.shape[-1] // len(selections)
            for g, selection in enumerate(selections):
                pieces.append(
                    self._convolve(
                        self._select([inputs], selection),
                        step_kernel[..., g * width : (g + 1) * width],
                        step.rate,
                    )
                )
        outputs = None
        for chosen, selection in self._output_selections:
            term = self._select([pieces[i] for i in chosen], selection)
            outputs = term if outputs is None else outputs + term
        if self.use_bias:
            shape = [1, 1, 1, 1]
            shape[self._channel_axis] = self.filters
            outputs = outputs + ops.reshape(self.bias, shape)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    @property
    def _channel_axis(self):
        return 3 if self.data_format == "channels_last" else 1

    def _compile_selections(self, in_channels):
        """Precomputes how each convolution reads and each output term sums.

        A step with few groups runs as one dense convolution per group (see
        MAX_SPLIT_GROUPS); its pieces are the group outputs, else the step is
        one piece. Output terms select filters from the concatenated pieces.
        """
        self._input_selections = []
        piece_sizes = []
        step_pieces = []
        for step in self._plan.steps:
            if step.groups > MAX_SPLIT_GROUPS:
                groups = [step.inputs.ravel()]
            else:
                groups = list(step.inputs)
            self._input_selections.append(
                [_selection([in_channels], g) for g in groups]
            )
            first = len(piece_sizes)
            piece_sizes += [step.outputs.size // len(groups)] * len(groups)
            step_pieces.append(list(range(first, len(piece_sizes))))
        self._output_selections = []
        for term, order in self._plan.sums:
            pieces = [p for i in term for p in step_pieces[i]]
            # Output term selections index the concatenation of their pieces.
            selection = _selection([piece_sizes[p] for p in pieces], order)
            self._output_selections.append((pieces, selection))

    def _select(self, tensors, selection):
        """Channels picked by a precomputed selection from `tensors`."""
        axis = self._channel_axis
        kind, value = selection
        if kind == "take":
            whole = tensors[0]
            if len(tensors) > 1:
                whole = ops.concatenate(tensors, axis=axis)
            return ops.take(whole, value, axis=axis)
        slices = []
        for piece, begin, end in value:
            tensor = tensors[piece]
            if begin == 0 and end == tensor.shape[axis]:
                slices.append(tensor)
                continue
            index = [slice(None)] * 4
            index[axis] = slice(begin, end)
            slices.append(tensor[tuple(index)])
        return slices[0] if len(slices) == 1 else ops.concatenate(slices, axis)

    def _convolve(self, inputs, kernel, rate):
        """A plain convolution at `rate` with the layer's padding and strides."""
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        if self._padding_is_native(rate):
            return ops.conv(
                inputs,
                kernel,
                strides=self.strides,
                padding="same" if self.padding != "valid" else "valid",
                data_format=self.data_format,
                dilation_rate=rate,
            )
        inputs = self._pad(inputs, rate, spatial)
        # TensorFlow refuses strides > 1 with dilation > 1. A strided conv
        # whose rate is a multiple of the stride is a conv at rate / stride of
        # the subsampled input; other rates subsample the output instead.
        input_step, conv_strides, rates, output_step = [], [], [], []
        for stride in self.strides:
            if stride == 1 or rate == 1:
                input_step.append(1), conv_strides.append(stride)
                rates.append(rate), output_step.append(1)
            elif rate % stride == 0:
                input_step.append(stride), conv_strides.append(1)
                rates.append(rate // stride), output_step.append(1)
            else:
                input_step.append(1), conv_strides.append(1)
                rates.append(rate), output_step.append(stride)
        inputs = _subsample(inputs, spatial, input_step)
        outputs = ops.conv(
            inputs,
            kernel,
            strides=tuple(conv_strides),
            padding="valid",
            data_format=self.data_format,
            dilation_rate=tuple(rates),
        )
        return _subsample(outputs, spatial, output_step)

    def _padding_is_native(self, rate):
        """Whether `ops.conv`'s own padding computes this rate's padding."""
        if max(self.strides) > 1 and rate > 1:
            return False
        if self.padding == "same":
            return True
        if self.padding == "valid":
            return rate == max(self.rates)
        # Symmetric padding is TensorFlow's "same" at stride 1.
        return max(self.strides) == 1

    def _pad(self, inputs, rate, spatial):
        """Pads (or, for "valid", crops) the spatial axes for one rate."""
        shape = ops.shape(inputs)
        pads = []
        for axis, size, stride in zip(spatial, self.kernel_size, self.strides):
            span = rate * (size - 1)
            if self.padding == "symmetric":
                pads.append((span // 2, span // 2))
            elif self.padding == "valid":
                crop = (max(self.rates) - rate) * (size - 1) // 2
                pads.append((-crop, -crop))
            else:
                length = shape[axis]
                out = (length + stride - 1) // stride
                total = (out - 1) * stride + span + 1 - length
                if not isinstance(total, int):
                    total = ops.maximum(total, 0)
                else:
                    total = max(total, 0)
                pads.append((total // 2, total - total // 2))
        index = [slice(None)] * 4
        padding = [(0, 0)] * 4
        for axis, (before, after) in zip(spatial, pads):
            if isinstance(before, int) and before < 0:
                index[axis] = slice(-before, after if after < 0 else None)
            else:
                padding[axis] = (before, after)
        inputs = inputs[tuple(index)]
        if any(not isinstance(v, int) or v for pair in padding for v in pair):
            inputs = ops.pad(inputs, padding)
        return inputs

    def compute_output_shape(self, input_shape):
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        shape = list(input_shape)
        for axis, size, stride in zip(spatial, self.kernel_size, self.strides):
            length = shape[axis]
            if length is None:
                continue
            if self.padding == "valid":
                span = max(self.rates) * (size - 1)
                length = (length - span - 1) // stride + 1
            else:
                length = (length + stride - 1) // stride
            if length <= 0:
                raise ValueError(
                    f"Input of shape {tuple(input_shape)} is too small for "
                    f"PSConv2D with kernel_size={self.kernel_size}, "
                    f"strides={self.strides}, padding='valid' and largest "
                    f"rate {max(self.rates)}."
                )
            shape[axis] = length
        shape[self._channel_axis] = self.filters
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
        kernel = ops.convert_to_numpy(self.kernel)
        in_per_group = kernel.shape[2]
        dense = np.zeros(
            self.kernel_size + (in_per_group * self.groups, self.filters),
            dtype=kernel.dtype,
        )
        out_per_group = self.filters // self.groups
        for g in range(self.groups):
            channels = slice(g * in_per_group, (g + 1) * in_per_group)
            filters = slice(g * out_per_group, (g + 1) * out_per_group)
            dense[:, :, channels, filters] = kernel[:, :, :, filters]
        return dense

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
                "pattern": list(self.pattern),
                "cyclic": self.cyclic,
                "layout": self.layout,
            }
        )
        return config


def _selection(sizes, indices):
    """How to pick `indices` from the concatenation of pieces of `sizes`.

    Returns ("slices", [(piece, begin, end), ...]) when the indices form few
    contiguous runs inside pieces, else ("take", indices).
    """
    indices = np.asarray(indices)
    offsets = np.cumsum([0] + list(sizes))
    piece = np.searchsorted(offsets, indices, side="right") - 1
    breaks = np.flatnonzero(
        (np.diff(indices) != 1) | (np.diff(piece) != 0)
    ) + 1
    if len(breaks) + 1 > MAX_SLICES:
        return ("take", indices.astype(np.int32))
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(indices)]])
    slices = []
    for start, stop in zip(starts, stops):
        p = int(piece[start])
        begin = int(indices[start] - offsets[p])
        slices.append((p, begin, begin + int(stop - start)))
    return ("slices", slices)


def _subsample(tensor, spatial, steps):
    if all(step == 1 for step in steps):
        return tensor
    index = [slice(None)] * 4
    for axis, step in zip(spatial, steps):
        index[axis] = slice(None, None, step)
    return tensor[tuple(index)]
