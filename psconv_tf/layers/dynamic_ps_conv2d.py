"""DynamicPSConv2D: a PSConv layer that learns its dilation lattice (§4.2)."""

import math

import keras
import numpy as np
from keras import ops

from psconv_tf.engine import arguments
from psconv_tf.engine import executor
from psconv_tf.engine import explicit_matrix
from psconv_tf.layers import kronecker_mask
from psconv_tf.engine import lattice
from psconv_tf.engine import rate_conv
from psconv_tf.layers.base import PSConvBase
from psconv_tf.layers.ps_conv2d import PSConv2D

SURROGATES = kronecker_mask.SURROGATES
MASK_INITIALIZERS = ("lattice", "random")
# |factor| at initialization: half way to the edge of the clipped identity's
# window [-1, 1], so a factor flips after moving by 0.5.
INITIAL_MAGNITUDE = 0.5
# The valid range of mask_learning_rate_multiplier (mu): the factors are
# stored divided by sqrt(mu), and both sqrt(mu) and the stored factors must
# stay normal numbers in float16 under mixed precision.
MULTIPLIER_RANGE = (1e-6, 1e6)
# PSConv2D arguments that a learned lattice replaces.
STATIC_ARGUMENTS = (
    "pattern", "cyclic", "layout", "dilation_rate", "dilation_matrix", "implementation",
)
# Arguments of DynamicPSConv2D that PSConv2D does not take.
DYNAMIC_ARGUMENTS = (
    "rates", "factor_shapes", "surrogate", "mask_initializer",
    "initial_pattern", "mask_learning_rate_multiplier",
)


@keras.saving.register_keras_serializable(package="psconv_tf")
class DynamicPSConv2D(PSConvBase):
    """PSConv with a learned binary choice of rate per kernel (paper, §4.2).

    Every kernel (filter c, input channel k) runs at the small or the large
    of two `rates`, chosen by a binary mask M (1: large). M is the Kronecker
    product of small real-valued latent factors, binarized in the forward
    pass and trained through a straight-through estimator. The paper gives no
    more detail; everything below is this library's choice:

    - Factors and threshold: M = (1 + S) / 2 with S = sign(A_1) x ... x
      sign(A_n) (x: Kronecker product; sign(0) = +1), which is sign(A_1 x
      ... x A_n): the sign of the product of the real factors. S has shape
      (filters, input channels per group); `factor_shapes` sets the A_i.
    - Surrogate gradient (`surrogate`): d sign(a) / da is replaced by the
      derivative of clip(a, -1, 1) (default; a factor beyond |a| = 1 gets
      no gradient until weight decay brings it back), of a, or of tanh(a).
    - Initialization (`mask_initializer`): "lattice" (default) starts from
      the blocked static PSConv lattice of `initial_pattern` (a cycle of the
      two rates, default (small, large, small, large): half the kernels at
      each rate), exactly, with every |A_i| = 0.5; "random" draws A_i
      uniformly in [-0.5, 0.5].
    - Learning rate (`mask_learning_rate_multiplier`, mu): the layer stores
      V_i and uses A_i = sqrt(mu) * V_i, so plain or momentum SGD moves A_i
      as with mu times the learning rate, while L2 weight decay on V_i decays
      A_i at the usual rate (adaptive optimizers see a factor sqrt(mu)).
      mu lies in [1e-6, 1e6], where sqrt(mu) and V_i stay normal float16
      numbers under mixed precision.
    - A non-finite latent factor leaves the lattice undefined: the outputs
      are NaN, and `dilation_matrix()`, `rate_shares()` and `freeze()` raise
      a ValueError naming the factor.

    Cost. In training and in inference the layer computes
    sum over the two rates r of conv(x, W * [D = r], r): two full
    convolutions, twice the multiply-accumulates of the static layer, plus
    the latent factors (`profile` counts both). `freeze()` returns the
    static `PSConv2D` with the learned D, which computes the same function at
    the static cost; `psconv_tf.freeze(model)` freezes a whole model.
    Inf and NaN inputs reach exactly the outputs Eq. 3 makes non-finite (a
    run-time check, `executor.masked_sum`; under torch.compile a graph
    break).

    Args:
        filters, kernel_size, strides, padding, data_format, groups,
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as for `PSConv2D`.
        rates: (small, large), two increasing positive ints; default (1, 2),
            the paper's dynamic PS-ResNet-50.
        factor_shapes: sequence of (rows, cols), the shapes of the latent
            factors, left to right; rows multiply to `filters` and cols to
            the input channels per group. One factor may give -1 for rows
            and one for cols: the rest. Default ((t, t), (-1, -1)) with t =
            len(initial_pattern), preceded by (groups, 1) when groups > 1:
            a coarse t x t pattern of rates times a fine pattern within
            each block, the shape of the static lattice.
        surrogate: "clipped_identity", "identity" or "tanh".
        mask_initializer: "lattice" or "random".
        initial_pattern: the cycle of rates for the "lattice" initialization,
            each one of `rates`; default (small, large, small, large).
        mask_learning_rate_multiplier: float mu in [1e-6, 1e6]; default 1.

    Example:

    >>> layer = DynamicPSConv2D(16, 3, padding="same", rates=(1, 2))
    >>> tuple(layer(keras.random.normal((2, 8, 8, 16))).shape)
    (2, 8, 8, 16)
    >>> sorted(set(layer.dilation_matrix().ravel().tolist()))
    [1, 2]
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
        rates=(1, 2),
        factor_shapes=None,
        surrogate="clipped_identity",
        mask_initializer="lattice",
        initial_pattern=None,
        mask_learning_rate_multiplier=1.0,
        **kwargs,
    ):
        original_rates = rates
        rates = lattice.validate_pattern(rates, "rates")
        if len(rates) != 2 or rates[0] >= rates[1]:
            raise ValueError(
                "Argument `rates` must be two increasing positive integers "
                f"(small, large). Received: rates={arguments.shown(original_rates)}"
            )
        for name in STATIC_ARGUMENTS:
            if name in kwargs:
                raise ValueError(
                    f"DynamicPSConv2D learns its lattice: `{name}` does not "
                    "apply. Use `rates` and `initial_pattern`."
                )
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
        self._rates = rates
        self._check_rates()
        if initial_pattern is None:
            initial_pattern = rates * 2
        try:
            self.initial_pattern = lattice.validate_pattern(initial_pattern)
        except ValueError:
            raise ValueError(
                "Argument `initial_pattern` must be a non-empty sequence of "
                f"positive integers. Received: initial_pattern={initial_pattern!r}"
            ) from None
        if not set(self.initial_pattern) <= set(rates):
            raise ValueError(
                "Argument `initial_pattern` must use only the `rates` "
                f"{rates}. Received: initial_pattern={self.initial_pattern}"
            )
        if surrogate not in SURROGATES:
            raise ValueError(
                f"Argument `surrogate` must be one of {SURROGATES}. "
                f"Received: surrogate={surrogate!r}"
            )
        if mask_initializer not in MASK_INITIALIZERS:
            raise ValueError(
                f"Argument `mask_initializer` must be one of {MASK_INITIALIZERS}. "
                f"Received: mask_initializer={mask_initializer!r}"
            )
        multiplier = mask_learning_rate_multiplier
        low, high = MULTIPLIER_RANGE
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, (int, float, np.floating, np.integer))
            or not low <= multiplier <= high
        ):
            raise ValueError(
                "Argument `mask_learning_rate_multiplier` must be a number in "
                f"[{low:g}, {high:g}]. Received: {arguments.shown(multiplier)}"
            )
        self.surrogate = surrogate
        self.mask_initializer = mask_initializer
        self.mask_learning_rate_multiplier = float(multiplier)
        self.factor_shapes = kronecker_mask.validate_factor_shapes(factor_shapes)

    @property
    def rates(self):
        """The two rates (small, large), ascending."""
        return self._rates

    @property
    def _rates_arguments(self):
        return "`rates`"

    @property
    def small_rate(self):
        return self._rates[0]

    @property
    def large_rate(self):
        return self._rates[1]

    def _build_convolution(self, in_channels):
        if in_channels % self.groups:
            raise ValueError(
                "The number of input channels must be divisible by "
                f"`groups`. Received: groups={self.groups}, input "
                f"channels={in_channels}."
            )
        shapes = self._resolved_factor_shapes(in_channels // self.groups)
        self._initial = list(zip(shapes, self._initial_factors(in_channels, shapes)))
        self._rate_convs = {
            rate: rate_conv.RateConv(
                rate, self.kernel_size, self.strides, self.padding,
                self.large_rate, self._compute_format,
            )
            for rate in self.rates
        }

    def build(self, input_shape):
        super().build(input_shape)  # checks, kernel and bias
        self.mask_factors = [
            self.add_weight(
                name=f"mask_factor_{index}", shape=shape,
                initializer=_constant_or(value, self._scale),
            )
            for index, (shape, value) in enumerate(self._initial)
        ]
        del self._initial

    @property
    def _scale(self):
        return math.sqrt(self.mask_learning_rate_multiplier)

    def _resolved_factor_shapes(self, in_per_group):
        shapes = self.factor_shapes
        if shapes is None:
            t = len(self.initial_pattern)
            shapes = ((t, t), (-1, -1))
            if self.groups > 1:
                shapes = ((self.groups, 1),) + shapes
        return kronecker_mask.resolve_factor_shapes(shapes, (self.filters, in_per_group))

    def _initial_factors(self, in_channels, shapes):
        """The +-1 factors for "lattice", None each for "random"."""
        if self.mask_initializer == "random":
            return [None] * len(shapes)
        matrix = lattice.dilation_matrix(
            in_channels, self.filters, self.initial_pattern, groups=self.groups,
            cyclic="both", layout="blocked",
        )
        signs = np.where(explicit_matrix.compress(matrix, self.groups) == self.large_rate, 1, -1)
        factors = kronecker_mask.kronecker_factors(signs, shapes)
        if factors is None:
            raise ValueError(
                f"The static lattice of initial_pattern={self.initial_pattern} "
                f"is not a Kronecker product of factors of shapes {shapes}: "
                "choose `factor_shapes` with a first factor (t, t) (after "
                "(groups, 1)), or mask_initializer='random'."
            )
        return factors

    def mask(self):
        """M as a (filters, in_channels // groups) tensor of 0. and 1. (1: large)."""
        signs = [
            kronecker_mask.binarize(ops.multiply(factor, self._scale), self.surrogate)
            for factor in self.mask_factors
        ]
        return (kronecker_mask.kronecker(*signs) + 1.0) / 2.0

    def _convolve(self, inputs, training):
        """Both rates as full convolutions with the kernel masked by M
        (`PSConvBase.call` adds the bias and activation)."""
        del training  # the mask is binary in training and inference alike
        large = ops.cast(ops.transpose(self.mask()), self.kernel.dtype)[None, None]
        masks = {self.small_rate: 1.0 - large, self.large_rate: large}
        return executor.masked_sum(inputs, self.kernel, masks, self._rate_convs)

    def dilation_matrix(self):
        """The current learned D, (filters, in_channels), 0 across groups."""
        self._require_built("dilation_matrix")
        large = self._mask_numpy() > 0.5
        rates = np.where(large, self.large_rate, self.small_rate)
        return explicit_matrix.expand(rates, self.groups)

    def _mask_numpy(self):
        """M as a NumPy array; raises where a latent factor is not finite."""
        for factor in self.mask_factors:
            bad = int(np.sum(~np.isfinite(factor.numpy())))
            if bad:
                raise ValueError(
                    f"Layer {self.name!r}: its latent factor {factor.name!r} "
                    f"holds {bad} non-finite value(s), so its learned lattice "
                    "is undefined (its outputs are NaN)."
                )
        return ops.convert_to_numpy(ops.stop_gradient(self.mask()))

    def rate_shares(self):
        """{rate: share of the kernels at that rate} of the current D."""
        large = float(np.mean(self._mask_numpy()))
        return {self.small_rate: 1.0 - large, self.large_rate: large}

    def macs(self, input_shape):
        """Multiply-accumulates of the frozen layer (one per kernel tap)."""
        output_shape = self.compute_output_shape((None,) + tuple(input_shape))
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        pixels = output_shape[spatial[0]] * output_shape[spatial[1]]
        per_pixel = math.prod(self.kernel.shape)
        return pixels * per_pixel

    def training_macs(self, input_shape):
        """Multiply-accumulates of this layer's own forward pass: one full
        convolution per rate."""
        return len(self.rates) * self.macs(input_shape)

    def latent_parameters(self):
        """Number of latent mask parameters."""
        return sum(math.prod(factor.shape) for factor in self.mask_factors)

    def freeze(self):
        """The built static `PSConv2D` with the learned D and this layer's
        weights, which computes the same function at the static cost."""
        static = PSConv2D.from_config(self.frozen_config())
        in_channels = self.kernel.shape[2] * self.groups
        shape = (None, None, None, in_channels)
        if self.data_format == "channels_first":
            shape = (None, in_channels, None, None)
        static.build(shape)
        self.copy_weights_to(static)
        return static

    def frozen_config(self):
        """The config of the static `PSConv2D` equal to this built layer: its
        own config with the learned dilation matrix for the lattice."""
        self._require_built("freeze")
        rates = self.dilation_matrix()
        if self.padding == "valid" and not (rates == self.large_rate).any():
            raise ValueError(
                f"Layer {self.name!r} has padding='valid' and has learned no "
                f"kernel at its large rate {self.large_rate}: a static layer "
                "would change the output size. Use padding='same' or 'symmetric'."
            )
        config = self.get_config()
        for name in DYNAMIC_ARGUMENTS:
            config.pop(name)
        config["dilation_matrix"] = rates  # the block form, compacted at build
        return config

    def copy_weights_to(self, static):
        """Assigns this layer's kernel and bias to the built static layer of
        `frozen_config()`."""
        static.kernel.assign(self.kernel)
        if self.use_bias:
            static.bias.assign(self.bias)

    def get_config(self):
        config = super().get_config()
        config.update(
            rates=list(self.rates),
            factor_shapes=(
                None if self.factor_shapes is None
                else [list(shape) for shape in self.factor_shapes]
            ),
            surrogate=self.surrogate,
            mask_initializer=self.mask_initializer,
            initial_pattern=list(self.initial_pattern),
            mask_learning_rate_multiplier=self.mask_learning_rate_multiplier,
        )
        return config


def _constant_or(signs, scale):
    """Initializer of a stored factor V (A = scale * V)."""
    if signs is None:
        return keras.initializers.RandomUniform(
            -INITIAL_MAGNITUDE / scale, INITIAL_MAGNITUDE / scale
        )
    value = np.asarray(signs, np.float64) * INITIAL_MAGNITUDE / scale
    return lambda shape, dtype=None: ops.convert_to_tensor(value, dtype=dtype)
