"""A plain convolution at one dilation rate, with a PSConv layer's geometry.

Every rate of a PSConv layer runs as ordinary (grouped) convolutions that
must land on the same output grid. This module holds every rule for that:

- padding, per rate and spatial axis (`AxisGeometry.pads`):
  `"symmetric"` pads rate * (k - 1) / 2 on each side (PyTorch);
  `"same"` follows TensorFlow's rule for each rate;
  `"valid"` centres every rate where the largest rate's kernel fits, i.e.
  crops (largest - rate) * (k - 1) / 2 from each side first; so that every
  rate lands on one grid, "symmetric" needs even spans rate * (k - 1) and
  "valid" whole crops (`check_centres`);
- which padding the convolution op receives: `"same"` wherever it equals the
  rule above (native and differentiable on every backend), else explicit
  padding (or a crop, where negative);
- strides with dilation, which TensorFlow cannot differentiate on CPU: along
  an axis whose rate is a multiple of the stride, a conv at rate / stride
  over the input subsampled at the right offset; along any other, a conv at
  stride 1 whose output is subsampled (stride x that term's MACs);
- the span bound: `"same"` and `"symmetric"` pad about span = rate * (k - 1)
  pixels per axis, so a layer refuses (`AxisGeometry.exceeds_span_limit`) a
  span beyond max(MIN_SPAN_LIMIT, SPAN_PER_INPUT x the input's length)
  there: past it the padding, not the input, fills the kernel and memory
  grows with the rate.

`RateConv(...)(inputs, kernel)` applies them; the kernel may be grouped.
"""

import dataclasses

from keras import ops

from psconv_tf.engine import conv_ops

PADDINGS = ("valid", "same", "symmetric")
# The span bound (module docstring): a span of up to 64 pixels is allowed on
# any input (ResNets on 32-pixel images reach 1-pixel maps), up to 4 times
# the input's length beyond that.
MIN_SPAN_LIMIT = 64
SPAN_PER_INPUT = 4


def span_limit(length):
    """The largest span rate * (kernel - 1) allowed on an axis of `length`
    with padding "same" or "symmetric"."""
    return max(MIN_SPAN_LIMIT, SPAN_PER_INPUT * length)


def check_centres(kernel_size, rates, padding):
    """Raises a ValueError where the rates have no common output grid: with
    "symmetric" a span rate * (k - 1) must be even (its padding is half of
    it); with "valid" the crops (largest - rate) * (k - 1) / 2 must be whole,
    i.e. with an even kernel the rates must have one parity."""
    largest = max(rates)
    for size in kernel_size:
        for rate in rates:
            if padding == "symmetric" and rate * (size - 1) % 2:
                raise ValueError(
                    "padding='symmetric' needs rate * (kernel_size - 1) "
                    f"even for every rate. Received: kernel_size="
                    f"{tuple(kernel_size)}, rates={tuple(rates)}."
                )
            if padding == "valid" and (largest - rate) * (size - 1) % 2:
                raise ValueError(
                    "padding='valid' with an even kernel_size needs rates "
                    f"of one parity. Received: kernel_size="
                    f"{tuple(kernel_size)}, rates={tuple(rates)}."
                )


@dataclasses.dataclass(frozen=True)
class AxisGeometry:
    """One spatial axis of the convolution at one rate."""

    kernel: int
    stride: int
    rate: int
    padding: str
    largest_rate: int

    @property
    def span(self):
        return self.rate * (self.kernel - 1)

    @property
    def valid_crop(self):
        """Rows cropped on each side for `"valid"`: every rate centred."""
        return (self.largest_rate - self.rate) * (self.kernel - 1) // 2

    def pads(self, length):
        """(before, after) padding of an input of `length` (after the valid
        crop); `length` may be a symbolic scalar, and so may the result."""
        if self.padding == "valid":
            return 0, 0
        if self.padding == "symmetric":
            return self.span // 2, self.span // 2
        stride = self.stride
        total = ((length + stride - 1) // stride - 1) * stride + self.span + 1 - length
        total = max(total, 0) if isinstance(total, int) else ops.maximum(total, 0)
        return total // 2, total - total // 2

    def exceeds_span_limit(self, length):
        """Whether the span bound refuses this axis on an input of `length`
        (only "same" and "symmetric" pad by the span)."""
        return self.padding != "valid" and self.span > span_limit(length)

    def output_length(self, length):
        before, after = self.pads(length)
        return (length + before + after - self.span - 1) // self.stride + 1


@dataclasses.dataclass(frozen=True)
class RateConv:
    """The convolution at `rate` of a layer with this geometry.

    Attributes:
        rate: the dilation rate.
        kernel_size, strides: pairs of ints.
        padding: "valid", "same" or "symmetric" (see the module docstring).
        largest_rate: the layer's largest rate (for "valid").
        data_format: the format the convolution computes in.
        space_to_batch: run the dilation as a rate-1 convolution over the
            rate x rate phases of the input moved into the batch (where the
            stride is 1, the format channels last and the size static):
            two copies, but TensorFlow's CPU differentiates dilated
            convolutions with few channels per group slowly.
    """

    rate: int
    kernel_size: tuple
    strides: tuple
    padding: str
    largest_rate: int
    data_format: str
    space_to_batch: bool = False

    @property
    def axes(self):
        """(spatial axis index, AxisGeometry) for height and width."""
        indices = (1, 2) if self.data_format == "channels_last" else (2, 3)
        return tuple(
            (index, AxisGeometry(size, stride, self.rate, self.padding, self.largest_rate))
            for index, size, stride in zip(indices, self.kernel_size, self.strides)
        )

    def __call__(self, inputs, kernel):
        if self.padding == "valid":
            inputs = crop(inputs, {i: (a.valid_crop,) * 2 for i, a in self.axes})
        if self.rate > 1 and max(self.strides) > 1:
            return self._strided_dilated(inputs, kernel)
        if (
            self.space_to_batch and self.rate > 1 and self.data_format == "channels_last"
            and all(isinstance(inputs.shape[i], int) for i in (1, 2))
        ):
            return self._phases(inputs, kernel)
        return conv_ops.conv2d(
            inputs, kernel, self.strides, self._op_padding(), self.rate,
            self.data_format,
        )

    def _op_padding(self):
        if self.padding == "symmetric" and max(self.strides) > 1:
            return [(a.span // 2,) * 2 for _, a in self.axes]
        # "symmetric" at stride 1 equals "same": the spans are even (the
        # layer checks), so TensorFlow's rule pads span / 2 on each side.
        return "same" if self.padding != "valid" else "valid"

    def _phases(self, inputs, kernel):
        """Stride 1: output row r * q + p is a rate-1 convolution of input
        rows p, p + r, ... (the phase p), so the r x r phases go to the batch,
        one rate-1 convolution runs, and the phases interleave back."""
        r = self.rate
        lengths, pads = [], {}
        for index, axis in self.axes:
            length = inputs.shape[index]
            before, after = axis.pads(length)
            lengths.append(axis.output_length(length))
            padded = length + before + after
            pads[index] = (before, after + (-padded) % r)
        x = pad(inputs, pads)
        n, h, w, c = ops.shape(x)
        x = ops.reshape(x, (n, h // r, r, w // r, r, c))
        x = ops.reshape(ops.transpose(x, (2, 4, 0, 1, 3, 5)), (r * r * n, h // r, w // r, c))
        y = conv_ops.conv2d(x, kernel, (1, 1), "valid", 1, "channels_last")
        _, ho, wo, f = ops.shape(y)
        y = ops.transpose(ops.reshape(y, (r, r, n, ho, wo, f)), (2, 3, 0, 4, 1, 5))
        y = ops.reshape(y, (n, ho * r, wo * r, f))
        return crop(y, {1: (0, ho * r - lengths[0]), 2: (0, wo * r - lengths[1])})

    def _strided_dilated(self, inputs, kernel):
        shape = ops.shape(inputs)
        take, pads, rates, subsample = {}, {}, [], {}
        for index, axis in self.axes:
            length, stride = shape[index], axis.stride
            before, after = axis.pads(length)
            if self.rate % stride:
                # Stride 1 at the full rate, then every stride-th output.
                pads[index] = (before, after)
                rates.append(self.rate)
                if stride > 1:
                    subsample[index] = slice(None, None, stride)
                continue
            # Output v reads input rows stride * v - before + rate * i; with
            # `offset` = (-before) % stride these are the rows offset +
            # stride * (v - front + (rate / stride) * i) of the input, i.e.
            # a conv at rate / stride over rows offset, offset + stride, ...
            offset = (-before) % stride
            front = (before + offset) // stride
            if self.padding == "valid":
                back = 0  # the subsampled input ends exactly where it must
            else:
                kept = (length - offset + stride - 1) // stride
                back = axis.output_length(length) + axis.span // stride - front - kept
            if stride > 1:
                start = offset if not isinstance(offset, int) else offset or None
                take[index] = slice(start, None, stride)
            pads[index] = (front, back)
            rates.append(self.rate // stride)
        inputs = pad(slice_axes(inputs, take), pads)
        outputs = conv_ops.conv2d(
            inputs, kernel, (1, 1), "valid", tuple(rates), self.data_format
        )
        return slice_axes(outputs, subsample)


def pad(tensor, pads):
    """Pads {axis: (before, after)}: negative static values crop, symbolic
    values pad with a pad op."""
    static = all(isinstance(v, int) for pair in pads.values() for v in pair)
    if not static:
        widths = [(0, 0)] * 4
        for axis, pair in pads.items():
            widths[axis] = pair
        return ops.pad(tensor, widths)
    tensor = crop(tensor, {a: (max(-b, 0), max(-e, 0)) for a, (b, e) in pads.items()})
    widths = [(0, 0)] * 4
    for axis, (before, after) in pads.items():
        widths[axis] = (max(before, 0), max(after, 0))
    if any(w != (0, 0) for w in widths):
        tensor = ops.pad(tensor, widths)
    return tensor


def crop(tensor, crops):
    """Removes {axis: (before, after)} static rows."""
    return slice_axes(
        tensor, {a: slice(b or None, -e or None) for a, (b, e) in crops.items()}
    )


def slice_axes(tensor, slices):
    """tensor[...] with {axis: slice}; identity slices are skipped, which keeps
    them out of exported graphs."""
    index = [slice(None)] * 4
    for axis, part in slices.items():
        index[axis] = part
    if all(part == slice(None) for part in index):
        return tensor
    return tensor[tuple(index)]
