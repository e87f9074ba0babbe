"""OfficialPSConv2D: PSConv2D as the authors' released grouped layer computes it."""

import keras
import numpy as np
from keras import initializers
from keras import ops

from psconv_tf.engine import explicit_matrix
from psconv_tf.engine import official_mask
from psconv_tf.engine import rate_conv
from psconv_tf.layers.ps_conv2d import PSConv2D


@keras.saving.register_keras_serializable(package="psconv_tf")
class OfficialPSConv2D(PSConv2D):
    """`PSConv2D` plus the rate-1 kernels the released `PSGConv2d` keeps.

    The authors' grouped layer (d-li14/PSConv, `PSGConv2d`) sums two dilated
    grouped convs and a dense rate-1 conv whose weights are meant to be zero
    where the dilated ones act. Its mask indexes filter blocks as
    `i + j * groups` instead of `i + j * parts`, so with groups > 1 only some
    groups are masked (4 of 32 in PS-ResNeXt-50 32x4d, 4 of 8 and 4 of 16 in
    ResNeXt-29): in every other group each kernel at rate 2 or 4 has a
    trained rate-1 kernel beside it (`psconv_tf.engine.official_mask`). This
    layer is that network's layer: `PSConv2D`'s Eq. 3 plus a rate-1 term
    over those positions,

        y = sum over rates d of conv(x, kernel * (D == d), rate d)
            + conv(x, rate1_kernel * M, rate 1) + bias,

    with M the positions where D is not 1 and the released mask leaves the
    rate-1 kernel (`rate1_positions()`). `rate1_kernel` has the kernel's
    shape and is zero outside M (there it neither computes nor trains).
    Non-finite inputs reach the rate-1 term as a plain convolution, as in
    the released layer. `count_params()` counts it whole; `psconv_tf.profile` counts the
    weights that compute (`rate1_parameters()`) and their MACs.
    PS-ResNeXt-50 32x4d gains 618,912 effective 3x3 weights so (+43.8 % of
    its 1,414,656 grouped 3x3 weights); with groups=1 M is empty and the
    layer computes `PSConv2D`. The paper describes `PSConv2D`, which stays
    the zoo's default; the authors' PS-ResNeXt results come from this
    layer: Table 1's PS-ResNeXt-50/101 rows, Table 7's X101 rows (mmdet's
    `PSGConv2d`) and Table 6's PS-ResNeXt-29 if their CIFAR runs used the
    same module. For groups = 1 (PS-ResNet, PS-SE-ResNet) both are one.

    Args: as `PSConv2D`, with the official lattice only: `pattern` of even
    length holding rate 1 where the official layer does (its default
    (1, 2, 1, 4) is the released `dilation=2`), `cyclic="both"`,
    `layout="blocked"`, `dilation_rate=1` and no `dilation_matrix`.
    `kernel_initializer`, `kernel_regularizer` and `kernel_constraint`
    apply to `rate1_kernel` too (a new initializer of the same config).
    `load_torch` fills both kernels from the authors' checkpoints.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if self.pattern is None:
            raise ValueError(
                "OfficialPSConv2D is the official lattice: leave "
                "`dilation_matrix` unset and give `pattern`."
            )
        fixed = dict(cyclic="both", layout="blocked", dilation_rate=(1, 1))
        for argument, value in fixed.items():
            if getattr(self, argument) != value:
                raise ValueError(
                    f"Argument `{argument}` of OfficialPSConv2D must be {value!r}, "
                    "as in the official layer. Received: "
                    f"{argument}={getattr(self, argument)!r}"
                )
        if len(self.pattern) % 2:
            raise ValueError(
                "Argument `pattern` of OfficialPSConv2D must have an even length "
                "(the official layer swaps channel halves). Received: "
                f"pattern={self.pattern}"
            )

    def _build_convolution(self, in_channels):
        super()._build_convolution(in_channels)
        rates = explicit_matrix.compress(self._matrix, self.groups)
        parts = len(self.pattern)
        dilated = rates != 1
        meant = official_mask.masked_positions(
            self.filters, in_channels, self.groups, parts, slip=False
        )
        if not np.array_equal(meant, dilated):
            raise ValueError(
                f"Argument `pattern`={self.pattern} puts rate 1 elsewhere than the "
                f"official layer of {parts} parts does (for 4 parts its pattern "
                "is (1, d, 1, 2d))."
            )
        released = official_mask.masked_positions(
            self.filters, in_channels, self.groups, parts, slip=True
        )
        if np.any(released & ~dilated):
            raise ValueError(
                f"With groups={self.groups} and {parts} parts the official mask "
                "removes rate-1 kernels of the lattice, which OfficialPSConv2D "
                "does not model; use groups that are a multiple of the pattern's "
                "length, or PSConv2D."
            )
        self._rate1_positions = dilated & ~released
        self._rate1_mask = self._rate1_positions.T[None, None].astype("float32")
        self._rate1_conv = rate_conv.RateConv(
            1, self.kernel_size, self.strides, self.padding, max(self.rates),
            self._compute_format,
        )

    def build(self, input_shape):
        super().build(input_shape)
        initializer = initializers.get(initializers.serialize(self.kernel_initializer))
        mask = np.broadcast_to(self._rate1_mask, self.kernel.shape)

        def masked_initializer(shape, dtype=None):
            return initializer(shape, dtype) * ops.cast(mask, dtype or "float32")

        self.rate1_kernel = self.add_weight(
            name="rate1_kernel",
            shape=self.kernel.shape,
            initializer=masked_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )

    def _convolve(self, inputs, training):
        outputs = super()._convolve(inputs, training)
        if not self._rate1_positions.any():
            return outputs
        mask = ops.cast(self._rate1_mask, self.rate1_kernel.dtype)
        return outputs + self._rate1_conv(inputs, self.rate1_kernel * mask)

    def rate1_positions(self):
        """Bool (filters, in_channels // groups), `dilation_matrix()`'s
        compact form: where a rate-1 kernel sits beside a dilated one."""
        self._require_built("rate1_positions")
        return self._rate1_positions.copy()

    def rate1_parameters(self):
        """The weights of `rate1_kernel` that compute: positions x kernel
        area (`psconv_tf.profile` counts these, not the zeros held)."""
        self._require_built("rate1_parameters")
        return int(self._rate1_positions.sum()) * self.kernel_size[0] * self.kernel_size[1]

    def macs(self, input_shape):
        """Multiply-accumulates for one input of `input_shape` (no batch)."""
        output_shape = self.compute_output_shape((None,) + tuple(input_shape))
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        pixels = output_shape[spatial[0]] * output_shape[spatial[1]]
        return super().macs(input_shape) + pixels * self.rate1_parameters()
