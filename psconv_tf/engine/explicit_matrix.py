"""Explicit dilation matrices: validation, the layer's compact form, its text.

`PSConv2D(dilation_matrix=R)` takes the rate of every kernel as R of shape
(filters, in_channels // groups): R[c, j] is the rate of filter c at the j-th
input channel of c's own group, the layout of the kernel's last two axes. The
block form (filters, in_channels) that `PSConv2D.dilation_matrix()` returns,
zero across groups, is accepted too and compacted at build.

In a layer config R is stored as text, row-major and run-length encoded:
`"<filters>x<columns>:<rate>*<count>,<rate>*<count>,..."` (a count of 1 may be
left out), e.g. `"2x4:1*3,2,4*2,1*2"` for [[1, 1, 1, 2], [4, 4, 1, 1]]. A
cyclic lattice of 512 filters stores in a few hundred characters.
"""

import re

import numpy as np

from psconv_tf.engine import arguments
from psconv_tf.engine import grouped
from psconv_tf.engine import lattice

# The largest matrix a text may declare, refused before it is allocated.
MAX_KERNELS = lattice.MAX_KERNELS

_TEXT = re.compile(r"^(\d{1,7})x(\d{1,7}):((?:\d{1,6}(?:\*\d{1,8})?)(?:,\d{1,6}(?:\*\d{1,8})?)*)$")


def _error(message, value):
    return ValueError(
        f"Argument `dilation_matrix` {message}. Received: {arguments.shown(value)}"
    )


def validate(value):
    """`value` (array-like of ints, or the config text) as a 2D int64 array.

    Zeros are allowed here (the block form; `compact` decides at build), but
    every row (filter) needs a positive rate, and no rate may exceed
    `lattice.MAX_RATE`.
    """
    array = decode(value) if isinstance(value, str) else _array(value)
    if array.max() > lattice.MAX_RATE:
        raise _error(
            f"must hold rates of at most {lattice.MAX_RATE}, found "
            f"{array.max()}", value,
        )
    if not (array > 0).any(axis=1).all():
        row = int(np.flatnonzero(~(array > 0).any(axis=1))[0])
        raise _error(
            f"must hold a positive rate in every row (filter); row {row} has "
            "none", value,
        )
    return array


def _array(value):
    if isinstance(value, (bool, int, float, np.generic)):
        raise _error("must be a 2D array of integer rates", value)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise _error("must be a 2D array of integer rates", value) from None
    if array.ndim != 2 or 0 in array.shape:
        raise _error(
            f"must be a non-empty 2D array of rates, got shape {array.shape}",
            value,
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise _error(f"must hold integer rates, got dtype {array.dtype}", value)
    if (array < 0).any():
        raise _error(f"must hold positive rates, found {int(array.min())}", value)
    if array.size > MAX_KERNELS:
        raise _error(f"is too large ({array.size} kernels)", value)
    if array.max() > lattice.MAX_RATE:  # before a cast could wrap it
        raise _error(
            f"must hold rates of at most {lattice.MAX_RATE}, found "
            f"{array.max()}", value,
        )
    return array.astype(np.int64)


def compact(matrix, filters, in_channels, groups):
    """The (filters, in_channels // groups) rates from either accepted form.

    Raises a ValueError that names the mismatch between the matrix and the
    layer (filters, input channels, groups) or the misplaced zeros.
    """
    in_per_group = in_channels // groups
    rows, columns = matrix.shape
    if rows != filters:
        raise ValueError(
            f"Argument `dilation_matrix` has {rows} rows but the layer has "
            f"filters={filters}: it must have shape (filters, input channels "
            f"// groups) = ({filters}, {in_per_group})."
        )
    if columns == in_per_group:
        if (matrix <= 0).any():
            raise ValueError(
                "Argument `dilation_matrix` must hold positive rates; found "
                f"{int(matrix.min())}."
            )
        return matrix
    if groups > 1 and columns == in_channels:
        inside = expand(np.ones((filters, in_per_group), np.int64), groups) > 0
        if (matrix[inside] <= 0).any() or (matrix[~inside] != 0).any():
            raise ValueError(
                "Argument `dilation_matrix` of shape (filters, input channels) "
                f"must be positive inside the {groups} groups' blocks and zero "
                "across them."
            )
        return compress(matrix, groups)
    raise ValueError(
        f"Argument `dilation_matrix` has {columns} columns but the layer "
        f"has {in_channels} input channels in groups={groups}: it must have "
        f"shape ({filters}, {in_per_group})"
        + (f" or ({filters}, {in_channels})." if groups > 1 else ".")
    )


def expand(matrix, groups):
    """(filters, in_per_group) rates -> (filters, in_channels), 0 across groups."""
    return grouped.expand(np.asarray(matrix, np.int64), groups)


def compress(full, groups):
    """The inverse of `expand`."""
    return grouped.compress(full, groups)


def encode(matrix):
    """The config text of a 2D int matrix (see the module docstring)."""
    flat = np.asarray(matrix).ravel()
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    counts = np.diff(np.concatenate([starts, [flat.size]]))
    runs = [
        str(rate) if count == 1 else f"{rate}*{count}"
        for rate, count in zip(flat[starts].tolist(), counts.tolist())
    ]
    return "{}x{}:{}".format(*matrix.shape, ",".join(runs))


def decode(text):
    """The matrix of a config text; a ValueError names what is malformed."""
    match = _TEXT.match(text)
    if not match:
        raise _error(
            "text must read '<filters>x<columns>:<rate>*<count>,...'", text
        )
    rows, columns = int(match.group(1)), int(match.group(2))
    if rows * columns > MAX_KERNELS or not rows or not columns:
        raise _error(f"text declares an invalid shape {rows}x{columns}", text)
    rates, counts = [], []
    for run in match.group(3).split(","):
        rate, _, count = run.partition("*")
        rates.append(int(rate))
        counts.append(int(count) if count else 1)
    if sum(counts) != rows * columns:
        raise _error(
            f"text holds {sum(counts)} rates for a {rows}x{columns} matrix", text
        )
    if min(counts) <= 0:
        raise _error("text must hold positive counts", text)
    return np.repeat(np.array(rates, np.int64), counts).reshape(rows, columns)
