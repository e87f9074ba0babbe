"""PSConv2D: the Poly-Scale Convolution layer."""

import keras
import numpy as np

from psconv_tf.engine import arguments as arguments
from psconv_tf.engine import autotune
from psconv_tf.engine import executor
from psconv_tf.engine import explicit_matrix
from psconv_tf.engine import lattice
from psconv_tf.engine import rate_conv
from psconv_tf.layers.base import PSConvBase
IMPLEMENTATIONS = ("auto",) + executor.IMPLEMENTATIONS + executor.JAX_IMPLEMENTATIONS


@keras.saving.register_keras_serializable(package="psconv_tf")
class PSConv2D(PSConvBase):
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
            where nothing was measured, `autotune.default`: `"masked"` on a
            GPU under JAX, elsewhere `"masked"` for layers of at most
            `autotune.MASKED_KERNELS` kernels and `"split"` above; `"fused"`
            is measured on GPUs under JAX only and is never the default), or
            one of:
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
        super().__init__(
            filters, kernel_size, strides=strides, padding=padding,
            data_format=data_format, groups=groups, activation=activation,
            use_bias=use_bias, kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint, **kwargs,
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
        self.dilation_rate = arguments.pair(dilation_rate, "dilation_rate")
        if self.dilation_rate[0] != self.dilation_rate[1]:
            raise ValueError(
                "Argument `dilation_rate` must be the same along height and "
                "width: the pattern sets each kernel's rate. Received: "
                f"dilation_rate={self.dilation_rate}"
            )
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

    def _build_convolution(self, in_channels):
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

    def _convolve(self, inputs, training):
        """Eq. 3 without bias, on inputs in the compute format."""
        implementation = autotune.implementation(self, inputs, bool(training))
        return self.implementation_executor(implementation)(inputs, self.kernel)

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

    def dilation_matrix(self):
        """D as an int array (filters, in_channels); 0 where no kernel."""
        self._require_built("dilation_matrix")
        return self._matrix.copy()

    def macs(self, input_shape):
        """Multiply-accumulates for one input of `input_shape` (no batch)."""
        output_shape = self.compute_output_shape((None,) + tuple(input_shape))
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        pixels = output_shape[spatial[0]] * output_shape[spatial[1]]
        area = self.kernel_size[0] * self.kernel_size[1]
        return pixels * self._plan.macs_per_output_pixel(area)

    def get_config(self):
        config = super().get_config()
        config.update(
            dilation_rate=self.dilation_rate,
            pattern=None if self.pattern is None else list(self.pattern),
            cyclic=self.cyclic,
            layout=self.layout,
            implementation=self.implementation,
            dilation_matrix=None
            if self._rates_given is None
            else explicit_matrix.encode(self._rates_given),
        )
        return config
