"""Argument checks shared by the layers: positive ints, bounded pairs, and
configs whose refusals stay ValueErrors that name the argument.

Every refusal is a one-line ValueError naming the argument and showing (at
most 80 characters of) the value received.
"""

import numpy as np

# The largest kernel size, stride and dilation rate a layer accepts: rates
# reach int32 attributes of the convolution ops, and padding grows with them.
MAX_SIZE = 1024


def is_int(value):
    """Whether `value` is an int or a NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_positive_int(value):
    """Whether `value` is an int (not a bool) greater than 0."""
    return is_int(value) and value > 0


def shown(value, width=80):
    """repr(value), cut to `width` characters for error messages."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def pair(value, name, limit=MAX_SIZE):
    """(a, b) from a positive int or a pair of them, each at most `limit`;
    True, 3.0, None and strings are refused."""
    values = (value, value) if is_positive_int(value) else value
    try:
        values = tuple(values) if not isinstance(values, str) else None
    except TypeError:
        values = None
    if (
        values is None or len(values) != 2
        or not all(is_positive_int(v) and v <= limit for v in values)
    ):
        raise ValueError(
            f"Argument `{name}` must be a positive integer or a tuple of two "
            f"positive integers, at most {limit}. Received: {name}={shown(value)}"
        )
    return tuple(int(v) for v in values)


def from_config(create, name, config):
    """`create(config)` (Keras' `from_config`), whose refusal of an argument
    stays one ValueError line: Keras wraps every error in a TypeError that
    prints the whole config."""
    try:
        return create(config)
    except TypeError as error:
        if isinstance(error.__context__, ValueError):
            raise ValueError(
                f"Cannot create {name} from its config: {error.__context__}"
            ) from None
        raise
