"""The dilation lattice of a PSConv layer and the plan that computes it.

Eq. 3 of the paper gives every kernel (filter c, input channel k) its own
dilation rate D[c, k]. Grouping the kernels by rate turns the layer into a few
ordinary (grouped) convolutions over fixed channel selections; `compile_plan`
finds them once per layer, from D alone, with no kernel computed twice and no
zero kernel computed at all.

Bounds. Every rate is a positive int of at most MAX_RATE and a layer has at
most MAX_KERNELS kernels (filters x input channels): rates reach int32
attributes of the backends' convolution ops and the padding grows with them,
so absurd values are refused here, where every route (constructor, config,
saved file, preset) passes, before anything is allocated.
"""

import dataclasses

import numpy as np

from psconv_tf.engine import arguments

CYCLIC_MODES = ("both", "input", "output")
LAYOUTS = ("blocked", "interleaved")

# The largest dilation rate a layer accepts (rates x base rates included).
MAX_RATE = arguments.MAX_SIZE
# The most kernels (filters x input channels) a layer may have: 2**24 is 16
# times the widest ResNet layer.
MAX_KERNELS = 1 << 24


def validate_pattern(pattern, name="pattern"):
    """Returns `pattern` as a tuple of positive Python ints of at most
    MAX_RATE, or raises a ValueError naming the argument `name`."""
    if arguments.is_int(pattern):
        pattern = (pattern,)
    message = (
        f"Argument `{name}` must be a non-empty sequence of positive integers "
        f"of at most {MAX_RATE}. Received: {name}={arguments.shown(pattern)}"
    )
    try:
        values = tuple(pattern)
    except TypeError:
        raise ValueError(message) from None
    if not values or not all(arguments.is_positive_int(v) and v <= MAX_RATE for v in values):
        raise ValueError(message)
    return tuple(int(v) for v in values)


def check_rates(largest, source):
    """Raises unless the largest rate, set by `source` (a text naming the
    arguments), is at most MAX_RATE."""
    if largest > MAX_RATE:
        raise ValueError(
            f"The rates set by {source} must be at most {MAX_RATE}. "
            f"Received a largest rate of {largest}."
        )


def check_kernels(filters, in_channels):
    """Raises unless filters x in_channels is at most MAX_KERNELS."""
    if int(filters) * int(in_channels) > MAX_KERNELS:
        raise ValueError(
            f"A layer may have at most {MAX_KERNELS} kernels (filters x input "
            f"channels). Received: filters={filters}, input channels="
            f"{in_channels}."
        )


def _cycle_positions(channels, groups, period, layout, shift):
    """Position in the dilation cycle (0 .. period-1) of every channel."""
    per_group = channels // groups
    local = np.arange(channels) % per_group
    if layout == "interleaved":
        return local % period
    return (local // (per_group // period) + shift) % period


def dilation_matrix(
    in_channels,
    filters,
    pattern=(1, 2, 1, 4),
    groups=1,
    cyclic="both",
    layout="blocked",
    base_rate=1,
):
    """The dilation rate of every kernel of a PSConv layer.

    Inside each group, input channel k has a cycle position a(k) and filter c
    a cycle position b(c), both in 0 .. t-1 with t = len(pattern), and
    - `cyclic="both"` (the paper's PSConv): D[c, k] = pattern[(a(k) - b(c)) % t]
    - `cyclic="input"`: D[c, k] = pattern[a(k)] (rates vary along inputs only)
    - `cyclic="output"`: D[c, k] = pattern[b(c)] (along filters only)
    times `base_rate`. Kernels across groups do not exist: D is 0 there.

    The layout decides the positions, with k and c counted inside their group:
    - `"interleaved"`: a(k) = k % t and b(c) = c % t, so "both" is the paper's
      D[c, k] = pattern[(k - c) % t].
    - `"blocked"`: the channels of a group form t contiguous blocks; input
      block j holds position (j + 1) % t and filter block j position j. This is
      the arrangement of the official PyTorch layer, whose diagonal blocks take
      the pattern's second rate; no channel gather is needed to compute it.
    Both layouts define the same family of functions up to a fixed channel
    permutation.

    Args:
        in_channels: number of input channels.
        filters: number of output channels.
        pattern: the rates of one cycle, t = len(pattern).
        groups: number of channel groups, as for `Conv2D`.
        cyclic: `"both"`, `"input"` or `"output"`.
        layout: `"blocked"` or `"interleaved"`.
        base_rate: a positive integer that multiplies every rate.

    Returns:
        An int array of shape (filters, in_channels).

    Raises:
        ValueError: naming the argument that is not a positive integer, or
            rates above MAX_RATE, or more than MAX_KERNELS kernels.
    """
    pattern = validate_pattern(pattern)
    for name, value in (("in_channels", in_channels), ("filters", filters),
                        ("groups", groups), ("base_rate", base_rate)):
        if not arguments.is_positive_int(value):
            raise ValueError(
                f"Argument `{name}` must be a positive integer. "
                f"Received: {name}={arguments.shown(value)}"
            )
    check_rates(max(pattern) * int(base_rate), "`pattern` x `base_rate`")
    check_kernels(filters, in_channels)
    if cyclic not in CYCLIC_MODES:
        raise ValueError(
            f"Argument `cyclic` must be one of {CYCLIC_MODES}. "
            f"Received: cyclic={cyclic!r}"
        )
    if layout not in LAYOUTS:
        raise ValueError(
            f"Argument `layout` must be one of {LAYOUTS}. "
            f"Received: layout={layout!r}"
        )
    check_channels(in_channels, filters, groups, len(pattern), cyclic)
    period = len(pattern)
    rates = np.asarray(pattern, dtype=np.int64) * int(base_rate)
    blocked = layout == "blocked"
    in_period = period if cyclic in ("both", "input") else 1
    out_period = period if cyclic in ("both", "output") else 1
    a = _cycle_positions(in_channels, groups, in_period, layout, int(blocked))
    b = _cycle_positions(filters, groups, out_period, layout, 0)
    if cyclic == "both":
        matrix = rates[(a[None, :] - b[:, None]) % period]
    elif cyclic == "input":
        matrix = np.broadcast_to(rates[a][None, :], (filters, in_channels))
    else:
        matrix = np.broadcast_to(rates[b][:, None], (filters, in_channels))
    in_group = np.arange(in_channels) // (in_channels // groups)
    out_group = np.arange(filters) // (filters // groups)
    same_group = in_group[None, :] == out_group[:, None]
    return np.where(same_group, matrix, 0).astype(np.int64)


def check_channels(in_channels, filters, groups, period, cyclic):
    """Raises unless the channels fit `groups` x `period` where rates vary."""
    if in_channels % groups:
        raise ValueError(
            "The number of input channels must be divisible by `groups`. "
            f"Received: groups={groups}, input channels={in_channels}."
        )
    if filters % groups:
        raise ValueError(
            "Argument `filters` must be divisible by `groups`. "
            f"Received: filters={filters}, groups={groups}."
        )
    if cyclic in ("both", "input") and in_channels % (groups * period):
        raise ValueError(
            "The number of input channels must be divisible by groups x t "
            f"(t = len(pattern)) for cyclic={cyclic!r}. Received: input "
            f"channels={in_channels}, groups={groups}, t={period}."
        )
    if cyclic in ("both", "output") and filters % (groups * period):
        raise ValueError(
            "Argument `filters` must be divisible by groups x t "
            f"(t = len(pattern)) for cyclic={cyclic!r}. Received: "
            f"filters={filters}, groups={groups}, t={period}."
        )


@dataclasses.dataclass(frozen=True)
class ConvStep:
    """Kernels of one rate: `branches` dense convolutions of equal shape.

    Attributes:
        rate: the dilation rate.
        inputs: (branches, n_in) input channels of each branch, ascending.
        outputs: (branches, n_out) filters of each branch, ascending.
    Indices count inside one folded group (see `ConvPlan.groups`).
    """

    rate: int
    inputs: np.ndarray
    outputs: np.ndarray

    @property
    def branches(self):
        return len(self.inputs)


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """The convolutions that compute a PSConv layer, and how to sum them.

    Attributes:
        steps: the convolutions, as `ConvStep`s.
        sums: the terms of the output sum, one per rate: tuples of the
            indices of that rate's steps, whose outputs are disjoint sets of
            filters (every filter, unless some filter lacks the rate).
        groups: layer groups folded into the plan. When every layer group has
            the same rates (always, for a pattern), the plan describes one
            group and each of its convolutions runs in all `groups` at once,
            as one grouped convolution; otherwise it is 1 and the plan
            covers the whole (block diagonal) matrix.
        in_channels, filters: channels of one folded group.
    """

    steps: tuple
    sums: tuple
    groups: int
    in_channels: int
    filters: int

    def macs_per_output_pixel(self, kernel_area):
        """Multiply-accumulates per output pixel, summed over all steps."""
        return self.groups * sum(
            kernel_area * step.inputs.shape[1] * step.outputs.size
            for step in self.steps
        )


def _line_labels(lines):
    """Labels lines by content: equal lines, equal labels, numbered 0, 1, ...
    in order of first appearance. Returns (labels, first line of each label).
    """
    # Hash each line to one number (fast for thousands of channels), then
    # check that lines with equal hashes are equal.
    weights = np.random.default_rng(0).random(lines.shape[1])
    _, first, labels = np.unique(
        lines @ weights, return_index=True, return_inverse=True
    )
    if not (lines == lines[first[labels]]).all():
        _, first, labels = np.unique(
            lines, axis=0, return_index=True, return_inverse=True
        )
    rank = np.argsort(np.argsort(first))
    return rank[labels.ravel()], np.sort(first)


def _classes(lines):
    """Groups equal lines into classes, numbered by first appearance.

    Returns the members of every class and one line per class.
    """
    labels, first = _line_labels(lines)
    return [np.flatnonzero(labels == label) for label in range(len(first))], first


def compile_plan(matrix, layer_groups):
    """Groups the kernels of a dilation matrix into convolutions.

    Channels with equal rates for every filter form a class, as do filters
    with equal rows. For each rate, filters that draw that rate from the same
    input classes form one dense convolution (a biclique of the lattice, so
    nothing is computed twice and no zero kernel is computed); those of equal
    shape form one step.

    Args:
        matrix: the (filters, in_channels) dilation matrix, 0 across groups.
        layer_groups: the layer's `groups`.

    Returns:
        A `ConvPlan`.
    """
    filters, in_channels = matrix.shape
    out_per, in_per = filters // layer_groups, in_channels // layer_groups
    blocks = [
        matrix[g * out_per : (g + 1) * out_per, g * in_per : (g + 1) * in_per]
        for g in range(layer_groups)
    ]
    if all(np.array_equal(block, blocks[0]) for block in blocks[1:]):
        matrix, fold = blocks[0], layer_groups
    else:
        fold = 1
    output_classes, out_first = _classes(matrix)
    input_classes, in_first = _classes(matrix.T)
    # The lattice between classes: one rate per (filter class, input class).
    lattice = matrix[out_first][:, in_first]

    def channels(classes, members):
        return np.sort(np.concatenate([members[c] for c in classes]))

    steps = []
    for rate in np.unique(lattice[lattice > 0]):
        mask = lattice == rate
        labels, first = _line_labels(mask)
        branches = [
            (
                channels(np.flatnonzero(mask[row]), input_classes),
                channels(np.flatnonzero(labels == label), output_classes),
            )
            for label, row in enumerate(first)
            if mask[row].any()
        ]
        for shape in sorted({(len(i), len(o)) for i, o in branches}):
            chosen = [(i, o) for i, o in branches if (len(i), len(o)) == shape]
            steps.append(
                ConvStep(
                    rate=int(rate),
                    inputs=np.stack([i for i, _ in chosen]).astype(np.int32),
                    outputs=np.stack([o for _, o in chosen]).astype(np.int32),
                )
            )
    return ConvPlan(
        steps=tuple(steps),
        sums=_output_sums(steps),
        groups=fold,
        in_channels=matrix.shape[1],
        filters=matrix.shape[0],
    )


def _output_sums(steps):
    """The steps of each rate: one term of the output sum per rate.

    Within a rate the steps' outputs are disjoint; a filter lacking a rate
    (possible with an explicit dilation matrix) is absent from its term.
    """
    by_rate = {}
    for index, step in enumerate(steps):
        by_rate.setdefault(step.rate, []).append(index)
    return tuple(tuple(indices) for indices in by_rate.values())
