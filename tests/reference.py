"""Float64 NumPy references written from the paper, independent of the library.

Eq. 3: H[c, x, y] = sum_k sum_ij G[c, k, i, j] F[k, x + i D[c, k], y + j D[c, k]].
Grouping kernels by rate, it is a sum over rates d of plain convolutions at
rate d with the kernels whose D is d (zeros elsewhere).
"""

import numpy as np


def paper_lattice(in_channels, filters, pattern, groups=1, cyclic="both"):
    """D of Sec. 3.2, channels interleaved: D[c, k] = p[(k - c) mod t]."""
    t = len(pattern)
    n_in, n_out = in_channels // groups, filters // groups
    matrix = np.zeros((filters, in_channels), dtype=np.int64)
    for c in range(filters):
        for k in range(in_channels):
            if c // n_out != k // n_in:
                continue  # no kernel across groups
            kk, cc = k % n_in, c % n_out
            if cyclic == "both":
                matrix[c, k] = pattern[(kk - cc) % t]
            elif cyclic == "input":
                matrix[c, k] = pattern[kk % t]
            else:
                matrix[c, k] = pattern[cc % t]
    return matrix


def official_lattice(in_channels, filters, groups=1, dilation=2):
    """D of the official PSConv2d / PSGConv2d(dilation, parts=4), as designed.

    Per group, channels split into 4 contiguous parts: filter part i sees input
    part i at rate `dilation`, input part (i + 2) % 4 (the input with its two
    halves swapped) at 2 * `dilation`, and the other parts at rate 1.
    """
    n_in, n_out = in_channels // groups, filters // groups
    matrix = np.zeros((filters, in_channels), dtype=np.int64)
    for c in range(filters):
        for k in range(in_channels):
            if c // n_out != k // n_in:
                continue
            out_part = (c % n_out) // (n_out // 4)
            in_part = (k % n_in) // (n_in // 4)
            if in_part == out_part:
                matrix[c, k] = dilation
            elif in_part == (out_part + 2) % 4:
                matrix[c, k] = 2 * dilation
            else:
                matrix[c, k] = 1
    return matrix


def dense_from_grouped(kernel, groups):
    """(kh, kw, C/groups, O) grouped kernel -> (kh, kw, C, O), zeros across."""
    kh, kw, n_in, filters = kernel.shape
    n_out = filters // groups
    dense = np.zeros((kh, kw, n_in * groups, filters))
    for g in range(groups):
        dense[:, :, g * n_in : (g + 1) * n_in, g * n_out : (g + 1) * n_out] = (
            kernel[:, :, :, g * n_out : (g + 1) * n_out]
        )
    return dense


def _pad(x, pads):
    """Pads (positive) or crops (negative) axes 1 and 2 of NHWC `x`."""
    for axis, (before, after) in zip((1, 2), pads):
        if before < 0:
            x = np.take(x, np.arange(-before, x.shape[axis] + after), axis=axis)
        else:
            width = [(0, 0)] * 4
            width[axis] = (before, after)
            x = np.pad(x, width)
    return x


def conv_valid(x, w, strides, rate):
    """Plain cross-correlation, no padding: NHWC x, (kh, kw, C, O) w."""
    n, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    sh, sw = strides
    ho = (h - rate * (kh - 1) - 1) // sh + 1
    wo = (wd - rate * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, ho, wo, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :,
                i * rate : i * rate + sh * (ho - 1) + 1 : sh,
                j * rate : j * rate + sw * (wo - 1) + 1 : sw,
            ]
            y += patch @ w[i, j]
    return y


def rate_pads(size, kernel, stride, rate, padding, largest_rate):
    """(before, after) padding of one spatial axis for one rate."""
    span = rate * (kernel - 1)
    if padding == "symmetric":  # PyTorch: padding = rate * (k - 1) / 2
        return span // 2, span // 2
    if padding == "valid":  # centred where the largest kernel fits
        crop = (largest_rate - rate) * (kernel - 1) // 2
        return -crop, -crop
    out = -(-size // stride)  # TensorFlow SAME, per rate
    total = max((out - 1) * stride + span + 1 - size, 0)
    return total // 2, total - total // 2


def psconv(x, dense_kernel, matrix, strides, padding, bias=None):
    """Eq. 3 in float64: NHWC x, (kh, kw, C, O) kernel, (O, C) rates."""
    x = np.asarray(x, np.float64)
    dense_kernel = np.asarray(dense_kernel, np.float64)
    largest = matrix.max()
    y = 0.0
    for rate in np.unique(matrix[matrix > 0]):
        mask = (matrix == rate).T[None, None]
        pads = [
            rate_pads(x.shape[axis], dense_kernel.shape[i], strides[i], rate,
                      padding, largest)
            for i, axis in enumerate((1, 2))
        ]
        y = y + conv_valid(_pad(x, pads), dense_kernel * mask, strides, rate)
    if bias is not None:
        y = y + bias
    return y


def psconv_exact(x, dense_kernel, matrix, strides, padding, bias=None):
    """Eq. 3 in float64 kernel by kernel: every filter sums only the input
    channels it has a kernel for, each at its own rate, so a non-finite
    input reaches exactly the outputs that Eq. 3 makes non-finite (`psconv`
    multiplies the other rates' zero kernels with it too)."""
    x = np.asarray(x, np.float64)
    dense_kernel = np.asarray(dense_kernel, np.float64)
    largest = matrix.max()
    outputs = []
    for c in range(matrix.shape[0]):
        y = 0.0
        for rate in np.unique(matrix[c][matrix[c] > 0]):
            channels = np.flatnonzero(matrix[c] == rate)
            pads = [
                rate_pads(x.shape[axis], dense_kernel.shape[i], strides[i], rate,
                          padding, largest)
                for i, axis in enumerate((1, 2))
            ]
            with np.errstate(invalid="ignore"):  # inf - inf is NaN, as meant
                y = y + conv_valid(
                    _pad(x[..., channels], pads),
                    dense_kernel[:, :, channels, c : c + 1], strides, rate,
                )
        outputs.append(y)
    y = np.concatenate(outputs, axis=-1)
    if bias is not None:
        y = y + bias
    return y
