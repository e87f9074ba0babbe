"""PSConv2D's `implementation="fused"`: the layer run by `fused_conv`.

Channels. The kernels need the rate to be constant on blocks of channels
(`fused_kernel.Tiling`). `FusedExecutor` takes the largest power-of-two
blocks on which the layer's rates are constant in the given channel order
(the blocked layout: the blocks of its cycle); where another order gives
larger blocks (the interleaved layout, explicit matrices whose equal
columns are scattered) it gathers the input channels and filters into that
order and the outputs back. Any matrix runs; one with no two equal
neighbouring channels in any order runs with blocks of one channel, slowly.

The geometry of each rate (padding "valid", "same", "symmetric", strides)
comes from `rate_conv.AxisGeometry`, as for every other implementation, and
becomes the forward `fused_conv.AxisMap` of each spatial axis. The kernels
compute channels last; channels-first inputs are transposed around them.

Devices: Triton kernels on GPUs; interpret mode (exact, slow) elsewhere;
TPUs are refused (see `fused_kernel`). Any Keras backend may build the
executor (it computes on JAX arrays); `PSConv2D` accepts "fused" on the JAX
backend only.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from psconv_tf.engine import fused_conv
from psconv_tf.engine import fused_kernel
from psconv_tf.engine import rate_conv

# The most layer groups one multiply-add program handles.
MAX_GROUP_TILE = 32


def _largest_power_of_two_divisor(value, cap):
    return min(value & -value, cap)


def _block(changes, size):
    """The largest power-of-two block (<= MAX_BLOCK) of `size` channels that
    no change point crosses."""
    return _largest_power_of_two_divisor(
        math.gcd(size, *changes.tolist()), fused_kernel.MAX_BLOCK)


def _blocks(index, groups):
    """(input block, filter block) on which the (F, Cg) `index` is constant."""
    filters, in_per_group = index.shape
    per_group = index.reshape(groups, filters // groups, in_per_group)
    inputs = np.flatnonzero((index[:, 1:] != index[:, :-1]).any(0)) + 1
    outputs = np.flatnonzero((per_group[:, 1:] != per_group[:, :-1]).any((0, 2))) + 1
    return _block(inputs, in_per_group), _block(outputs, filters // groups)


def _sorting(lines):
    """The stable order that makes equal lines (rows of `lines`) adjacent."""
    _, labels = np.unique(lines, axis=0, return_inverse=True)
    return np.argsort(labels.ravel(), kind="stable")


def channel_order(index, groups):
    """(input order or None, filter order or None, input block, filter block).

    The orders permute the (F, Cg) rate index's columns (the same in every
    group) and rows (inside each group) when that gives larger blocks.
    """
    filters = index.shape[0]
    per_group = filters // groups
    inputs, outputs = _blocks(index, groups)
    in_order = _sorting(index.T)
    out_order = np.concatenate([
        g * per_group + _sorting(index[g * per_group : (g + 1) * per_group])
        for g in range(groups)
    ])
    sorted_inputs, sorted_outputs = _blocks(index[out_order][:, in_order], groups)
    if sorted_inputs * sorted_outputs <= inputs * outputs:
        return None, None, inputs, outputs
    return in_order, out_order, sorted_inputs, sorted_outputs


def _group_tile(blocks, inputs, filters):
    """Groups per multiply-add program: a power of two dividing G whose
    groups have equal rate blocks; 1 where tile products are dots."""
    if min(inputs, filters) >= fused_kernel.MIN_DOT:
        return 1
    groups = blocks.shape[0]
    tile = _largest_power_of_two_divisor(groups, MAX_GROUP_TILE)
    while tile > 1:
        chunked = blocks.reshape(groups // tile, tile, -1)
        if (chunked == chunked[:, :1]).all():
            return tile
        tile //= 2
    return 1


def device_mode():
    """True to run in interpret mode: on CPUs (and any device that is not a
    GPU). Raises on TPUs, which the kernels do not support."""
    platform = jax.default_backend()
    if platform == "tpu":
        raise ValueError(
            "implementation='fused' has no TPU (Mosaic) kernels; use 'auto' "
            "or another implementation on TPUs."
        )
    return platform not in ("gpu", "cuda", "rocm")


class FusedExecutor:
    """Runs a PSConv2D layer with the fused kernels, on JAX arrays.

    Args:
        rates: the layer's (filters, in_channels // groups) rates.
        groups, kernel_size, strides, padding: the layer's.
    """

    def __init__(self, rates, groups, kernel_size, strides, padding):
        self.interpret = device_mode()
        self.distinct = np.unique(rates)
        index = np.searchsorted(self.distinct, rates)
        self.groups = groups
        self.in_order, self.out_order, self.inputs, self.filters = channel_order(
            index, groups)
        if self.in_order is not None:
            index = index[self.out_order][:, self.in_order]
            in_per_group = index.shape[1]
            self.in_gather = (
                np.arange(groups)[:, None] * in_per_group + self.in_order
            ).ravel()
            self.out_scatter = np.argsort(self.out_order)
        filters, in_per_group = index.shape
        blocks = index.reshape(groups, filters // groups // self.filters, self.filters,
                               in_per_group // self.inputs, self.inputs)[:, :, 0, :, 0]
        self.blocks = blocks
        self.group_tile = _group_tile(blocks, self.inputs, self.filters)
        largest = int(self.distinct.max())
        self.geometries = [
            [rate_conv.AxisGeometry(size, stride, int(d), padding, largest)
             for d in self.distinct]
            for size, stride in zip(kernel_size, strides)
        ]
        self._convs = {}

    def conv(self, height, width):
        """The `FusedConv` of an input of this size."""
        if (height, width) not in self._convs:
            self._convs[(height, width)] = fused_conv.FusedConv(
                fused_conv.AxisMap.forward(self.geometries[0], height),
                fused_conv.AxisMap.forward(self.geometries[1], width),
                self.blocks, self.inputs, self.filters, self.group_tile,
                self.interpret,
            )
        return self._convs[(height, width)]

    def __call__(self, inputs, kernel, data_format):
        x = inputs if data_format == "channels_last" else inputs.transpose(0, 2, 3, 1)
        n, height, width, channels = x.shape
        kernel = jnp.asarray(kernel).astype(x.dtype)
        kh, kw, in_per_group, filters = kernel.shape
        if self.in_order is not None:
            x = jnp.take(x, self.in_gather, axis=3)
            kernel = kernel[:, :, self.in_order][..., self.out_order]
        groups = self.groups
        x = x.reshape(n, height, width, groups, in_per_group)
        kernel = kernel.reshape(kh, kw, in_per_group, groups, filters // groups)
        y = fused_conv.correlate(self.conv(height, width), x, kernel.transpose(0, 1, 3, 2, 4))
        y = y.reshape(y.shape[:3] + (filters,))
        if self.in_order is not None:
            y = jnp.take(y, self.out_scatter, axis=3)
        return y if data_format == "channels_last" else y.transpose(0, 3, 1, 2)
