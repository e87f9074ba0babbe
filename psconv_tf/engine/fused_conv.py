"""The fused PS convolution: its maps, their transposes, two primitives.

Along one spatial axis, a PS convolution is a set of taps per rate: output
row s_out * o + q receives input row s_in * o + a times kernel row i, for
every output position o (`AxisMap`; zeros outside the input). The layer's
forward pass at stride s has one phase (s_out = 1), s_in = s and, at rate d,
the taps (0, i * d - before_d, i), before_d being that rate's padding (a
negative one for the crop of padding "valid"; `rate_conv.AxisGeometry`).

The transpose of such a map is one again: input row m = s_in * o' + (a mod
s_in) receives output row s_out * o' + q - s_out * (a div s_in), so the
transpose has s_in and s_out swapped and taps (a mod s_in, q - s_out * (a div
s_in), i). At stride 2 the input gradient thus writes two interleaved output
phases per axis, each from the taps that reach it: no zero is inserted and
no product is wasted. `FusedConv.transpose` applies it to both axes and
swaps the kernel's channel axes and the block table.

Two bilinear primitives, each a Pallas kernel (`fused_kernel`), carry
`jax.custom_vjp`s written with each other, so derivatives of every order are
fused kernels too:

    correlate(c, x, w) = y                       (forward pass)
      dx = correlate(c.T, dy, w^T), dw = weight_gradient(c, x, dy)
    weight_gradient(c, x, y) = dw
      dx = correlate(c.T, y, v^T), dy = correlate(c, x, v)   for cotangent v

The layer's side (channel order, blocks, geometry) is `fused_executor`.

Devices: Triton kernels on GPUs; interpret mode (exact, slow) where there is
no GPU; TPUs are refused (see `fused_kernel`).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from psconv_tf.engine import fused_kernel

# Output positions of one program: at most COLS columns and PIXELS in all.
COLS = 16
PIXELS = 128
# Programs the weight gradient aims at, splitting the batch into chunks.
WEIGHT_PROGRAMS = 2048


@dataclasses.dataclass(frozen=True)
class AxisMap:
    """One spatial axis of a PS convolution (see the module docstring).

    Attributes:
        in_stride: s_in.
        out_phases: s_out.
        in_length, out_length: lengths of the input and output axes.
        taps: per rate index, a tuple of (q, a, i).
    """

    in_stride: int
    out_phases: int
    in_length: int
    out_length: int
    taps: tuple

    @classmethod
    def forward(cls, geometries, length):
        """The forward map of an axis of `length`, one rate_conv.AxisGeometry
        per rate index (with the layer's kernel, stride and padding)."""
        taps = []
        for geometry in geometries:
            if geometry.padding == "valid":
                before = -geometry.valid_crop
            else:
                before = int(geometry.pads(length)[0])
            taps.append(tuple(
                (0, i * geometry.rate - before, i) for i in range(geometry.kernel)
            ))
        largest = max(geometries, key=lambda g: g.rate)
        largest = dataclasses.replace(largest, largest_rate=largest.rate)
        return cls(geometries[0].stride, 1, length, largest.output_length(length),
                   tuple(taps))

    def transpose(self):
        taps = tuple(
            tuple(
                (a % self.in_stride, q - self.out_phases * (a // self.in_stride), i)
                for q, a, i in rate_taps
            )
            for rate_taps in self.taps
        )
        return AxisMap(self.out_phases, self.in_stride, self.out_length,
                       self.in_length, taps)

    @property
    def positions(self):
        """Output positions of one phase."""
        return -(-self.out_length // self.out_phases)

    def padding(self, positions):
        """(front, back) zeros the input needs for `positions` per phase."""
        offsets = [a for rate_taps in self.taps for _, a, _ in rate_taps]
        front = max(0, -min(offsets))
        last = self.in_stride * (positions - 1) + max(offsets)
        return front, max(0, last + 1 - self.in_length)


@dataclasses.dataclass(frozen=True)
class FusedConv:
    """A PS convolution of fixed shape, as the kernels run it.

    Attributes:
        rows, cols: the `AxisMap`s of height and width.
        rates: (G, Fg / filters, Cg / inputs), the rate index of every
            block pair (an array, kept as nested tuples).
        inputs, filters, groups: the channel blocks and group tile of
            `fused_kernel.Tiling`.
        interpret: run the kernels in Pallas interpret mode.
    """

    rows: AxisMap
    cols: AxisMap
    rates: tuple
    inputs: int
    filters: int
    groups: int
    interpret: bool

    def __post_init__(self):
        # Nested tuples (hashable: a static argument of jax.custom_vjp).
        object.__setattr__(self, "rates", _nested(np.asarray(self.rates)))

    def transpose(self):
        rates = np.transpose(np.array(self.rates), (0, 2, 1))
        return FusedConv(self.rows.transpose(), self.cols.transpose(), rates,
                         self.filters, self.inputs, self.groups, self.interpret)

    def launch(self, kernel_size):
        """The `fused_kernel.Pass` and the input's padding."""
        positions = (self.rows.positions, self.cols.positions)
        cols = min(_next_power_of_two(positions[1]), COLS)
        rows = min(_next_power_of_two(positions[0]), max(1, PIXELS // cols))
        while rows * cols < fused_kernel.MIN_DOT:
            rows *= 2
        tiling = fused_kernel.Tiling(rows, cols, self.groups, self.inputs, self.filters)
        tiles = (-(-positions[0] // rows), -(-positions[1] // cols))
        p = fused_kernel.Pass(
            tiling, (self.rows.in_stride, self.cols.in_stride),
            (self.rows.out_phases, self.cols.out_phases), tuple(kernel_size), tiles,
            self.interpret,
        )
        pads = (self.rows.padding(tiles[0] * rows), self.cols.padding(tiles[1] * cols))
        return p, pads

    def correlate_tables(self, fronts):
        """(table, counts) of `fused_kernel.correlate`."""
        entries = {}
        for r, (row_taps, col_taps) in enumerate(zip(self.rows.taps, self.cols.taps)):
            for q_h, a_h, i in row_taps:
                for q_w, a_w, j in col_taps:
                    key = (q_h * self.cols.out_phases + q_w, r)
                    entries.setdefault(key, []).append(
                        (a_h + fronts[0], a_w + fronts[1], i, j))
        phases = self.rows.out_phases * self.cols.out_phases
        keys = [(q, r) for q in range(phases) for r in range(len(self.rows.taps))]
        return _table(keys, entries)

    def weight_tables(self, fronts, kernel_size):
        """(table, counts) of `fused_kernel.weight_gradient`."""
        entries = {}
        for r, (row_taps, col_taps) in enumerate(zip(self.rows.taps, self.cols.taps)):
            for q_h, a_h, i in row_taps:
                for q_w, a_w, j in col_taps:
                    entries.setdefault((r, i * kernel_size[1] + j), []).append(
                        (q_h, q_w, a_h + fronts[0], a_w + fronts[1]))
        taps = kernel_size[0] * kernel_size[1]
        keys = [(r, ij) for r in range(len(self.rows.taps)) for ij in range(taps)]
        return _table(keys, entries)


def _table(keys, entries):
    width = max([1] + [len(v) for v in entries.values()])
    table = np.zeros((len(keys), width, 4), np.int32)
    counts = np.zeros(len(keys), np.int32)
    for index, key in enumerate(keys):
        values = entries.get(key, [])
        counts[index] = len(values)
        if values:
            table[index, : len(values)] = values
    return table.reshape(-1, 4), counts


def _nested(array):
    return tuple(map(_nested, array)) if np.ndim(array) else int(array)


def _next_power_of_two(value):
    return 1 << max(0, int(value) - 1).bit_length()


def _pad_axes(x, pads):
    """Zero-pads axes 1 and 2 by ((front, back), (front, back))."""
    if all(tuple(p) == (0, 0) for p in pads):
        return x
    return jnp.pad(x, [(0, 0), pads[0], pads[1]] + [(0, 0)] * (x.ndim - 3))


def _run_correlate(conv, x, w):
    shape = (x.shape[0], conv.rows.out_length, conv.cols.out_length) + x.shape[3:4] + w.shape[4:]
    if 0 in shape:
        return jnp.zeros(shape, x.dtype)
    p, pads = conv.launch(w.shape[:2])
    table, counts = conv.correlate_tables((pads[0][0], pads[1][0]))
    y = fused_kernel.correlate(
        _pad_axes(x, pads), w, jnp.asarray(conv.rates, jnp.int32),
        jnp.asarray(table), jnp.asarray(counts), p,
    )
    return y[:, : conv.rows.out_length, : conv.cols.out_length]


def _run_weight_gradient(conv, x, y, kernel_size):
    if x.size == 0 or y.size == 0:
        return jnp.zeros(tuple(kernel_size) + x.shape[3:] + y.shape[4:], x.dtype)
    p, pads = conv.launch(kernel_size)
    table, counts = conv.weight_tables((pads[0][0], pads[1][0]), kernel_size)
    rows = p.out_phases[0] * p.phase_shape[0]
    cols = p.out_phases[1] * p.phase_shape[1]
    y = _pad_axes(y, ((0, rows - y.shape[1]), (0, cols - y.shape[2])))
    rates = np.array(conv.rates)
    others = math.prod(kernel_size) * rates.size // conv.groups
    n = x.shape[0]
    target = max(1, WEIGHT_PROGRAMS // others)
    chunks = max(d for d in range(1, n + 1) if n % d == 0 and d <= target)
    partial = fused_kernel.weight_gradient(
        _pad_axes(x, pads), y, jnp.asarray(rates, jnp.int32),
        jnp.asarray(table), jnp.asarray(counts), p, chunks,
    )
    return jnp.sum(partial, axis=0).astype(x.dtype)


def _swap(kernel):
    """(KH, KW, G, Cg, Fg) -> (KH, KW, G, Fg, Cg): the transpose's kernel."""
    return kernel.transpose(0, 1, 2, 4, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def correlate(conv, x, w):
    """The PS convolution `conv` of x (N, H, W, G, Cg) with w (KH, KW, G, Cg,
    Fg): (N, Ho, Wo, G, Fg), in x's dtype."""
    return _run_correlate(conv, x, w)


def _correlate_forward(conv, x, w):
    # The primitive, not its kernel: derivatives of higher order
    # differentiate the forward rule too.
    return correlate(conv, x, w), (x, w)


def _correlate_backward(conv, residuals, cotangent):
    x, w = residuals
    return (
        correlate(conv.transpose(), cotangent, _swap(w)),
        weight_gradient(conv, x, cotangent, w.shape[:2]),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def weight_gradient(conv, x, y, kernel_size):
    """The gradient of <y, correlate(conv, x, w)> with respect to w."""
    return _run_weight_gradient(conv, x, y, kernel_size)


def _weight_gradient_forward(conv, x, y, kernel_size):
    return weight_gradient(conv, x, y, kernel_size), (x, y)


def _weight_gradient_backward(conv, kernel_size, residuals, cotangent):
    x, y = residuals
    return (
        correlate(conv.transpose(), y, _swap(cotangent)),
        correlate(conv, x, cotangent),
    )


correlate.defvjp(_correlate_forward, _correlate_backward)
weight_gradient.defvjp(_weight_gradient_forward, _weight_gradient_backward)
