"""The learned rate mask of DynamicPSConv2D: a Kronecker product of
binarized factors, with a straight-through estimator."""

import math

import numpy as np
from keras import ops

from psconv_tf.engine import arguments

SURROGATES = ("clipped_identity", "identity", "tanh")


def binarize(factor, surrogate="clipped_identity"):
    """sign(factor) in the forward pass (+1 at 0), `surrogate`'s derivative
    in the backward pass (a straight-through estimator).

    The forward value is exactly +-1: it adds s(x) - stop_gradient(s(x)),
    which is exactly 0, to the sign, where s is the surrogate function:
    - "clipped_identity": s(x) = clip(x, -1, 1), ds/dx = 1 if |x| <= 1 else 0
      (Hubara et al.'s STE for binarized networks; our default);
    - "identity": s(x) = x, ds/dx = 1;
    - "tanh": s(x) = tanh(x), ds/dx = 1 - tanh(x) ** 2.
    A non-finite factor has no sign: its entries binarize to NaN (adding
    0 * factor, without gradient), whatever the surrogate.
    """
    if surrogate == "clipped_identity":
        smooth = ops.clip(factor, -1.0, 1.0)
    elif surrogate == "identity":
        smooth = factor
    elif surrogate == "tanh":
        smooth = ops.tanh(factor)
    else:
        raise ValueError(
            f"Argument `surrogate` must be one of {SURROGATES}. "
            f"Received: surrogate={surrogate!r}"
        )
    sign = ops.cast(ops.where(factor >= 0, 1.0, -1.0), factor.dtype)
    undefined = ops.stop_gradient(factor * 0)  # NaN where factor is not finite
    return sign + undefined + (smooth - ops.stop_gradient(smooth))


def kronecker(*matrices):
    """The Kronecker product of 2D tensors, left to right."""
    result = matrices[0]
    for matrix in matrices[1:]:
        (m1, n1), (m2, n2) = result.shape, matrix.shape
        product = result[:, None, :, None] * matrix[None, :, None, :]
        result = ops.reshape(product, (m1 * m2, n1 * n2))
    return result


def kronecker_factors(signs, shapes):
    """+-1 factors of `shapes` whose Kronecker product is `signs`, or None.

    Normalizing the product of the later factors to +1 at [0, 0], the first
    factor is S at the top-left corner of each block, and the product of the
    rest is the top-left block times S[0, 0]; recursively.
    """
    signs = target = np.asarray(signs, np.int64)
    factors = []
    for rows, cols in shapes[:-1]:
        block = (signs.shape[0] // rows, signs.shape[1] // cols)
        factors.append(signs[:: block[0], :: block[1]])
        signs = signs[: block[0], : block[1]] * signs[0, 0]
    factors.append(signs)
    product = factors[0]
    for factor in factors[1:]:
        product = np.kron(product, factor)
    return factors if np.array_equal(product, target) else None


def validate_factor_shapes(shapes):
    if shapes is None:
        return None
    message = (
        "Argument `factor_shapes` must be a non-empty sequence of (rows, cols) "
        "pairs of positive integers, with at most one -1 among the rows and "
        f"one among the cols. Received: factor_shapes={shapes!r}"
    )
    try:
        shapes = tuple(tuple(shape) for shape in shapes)
    except TypeError:
        raise ValueError(message) from None
    valid = shapes and all(
        len(shape) == 2
        and all(
            arguments.is_int(v) and (v > 0 or v == -1)
            for v in shape
        )
        for shape in shapes
    )
    if not valid or any(sum(s[axis] == -1 for s in shapes) > 1 for axis in (0, 1)):
        raise ValueError(message)
    return tuple((int(rows), int(cols)) for rows, cols in shapes)


def resolve_factor_shapes(shapes, total):
    """Replaces -1 by the rest; checks that the shapes multiply to `total`."""
    resolved = [list(shape) for shape in shapes]
    for axis, size in enumerate(total):
        known = math.prod(shape[axis] for shape in resolved if shape[axis] != -1)
        for shape in resolved:
            if shape[axis] == -1:
                shape[axis] = size // known if size % known == 0 else 0
        if math.prod(shape[axis] for shape in resolved) != size:
            raise ValueError(
                f"Argument `factor_shapes`: the {('rows', 'cols')[axis]} of "
                f"{shapes} must multiply to {size} (filters x input channels per "
                f"group is {total[0]} x {total[1]})."
            )
    return [tuple(shape) for shape in resolved]
