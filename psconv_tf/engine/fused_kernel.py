"""The fused PSConv kernels, in Pallas: one kernel per pass over the data.

Notation. x is (N, Hx, Wx, G, Cg): channels last, the layer's G groups split
out (a free reshape of NHWC). The kernel w is (KH, KW, G, Cg, Fg), the output
y (N, Hy, Wy, G, Fg). Input channels are cut into blocks of `Tiling.inputs`
and filters into blocks of `Tiling.filters` in which the dilation rate is
constant: `rates[g, fb, cb]` is the index of the rate of (filter block fb,
input block cb) of group g. Per rate r, an axis has taps (q, a, i): output
row `s_out * o + q` receives input row `s_in * o + a` times kernel row i
(`fused_conv.AxisMap`); a 2D tap joins a row tap and a column tap of the same
rate, and the tables list them with their offsets made non-negative (the
caller pads x so that every read is in bounds).

`correlate` (forward pass and input gradient):

    y[n, s_out_h * o + q_h, s_out_w * p + q_w, g, f in fb]
      = sum over cb, over the taps (a_h, a_w, i, j) of rate rates[g, fb, cb]
        for output phase (q_h, q_w), of
        x[n, s_in_h * o + a_h, s_in_w * p + a_w, g, cb] . w[i, j, g, cb, fb]

One program computes one tile of `rows` x `cols` output positions of one
phase, for `groups` groups and one filter block, in a float32 accumulator
(float64 for float64 data): its inner step reads a (rows, cols) window of
one input block at the offset of that block pair's rate and adds a dense
tile product. No zero kernel is multiplied: the MACs are Conv2D's, plus the
output positions that pad the last tile.

`weight_gradient`:

    dw[i, j, g, cb, fb] = sum over the taps (q, a) of (i, j) at the rate of
        (fb, cb), over images and positions o, p, of
        x[n, s_in_h * o + a_h, s_in_w * p + a_w, g, cb]^T
        y[n, s_out_h * o + q_h, s_out_w * p + q_w, g, fb]

One program reduces, for one batch chunk, one tap and one block pair, over
the chunk's images and every output tile; chunks are summed by the caller
(float32 partial sums). Both kernels are linear in each argument; their
transposes are kernels of the same two kinds (see `fused_conv`).

Inner products. With one group per program and blocks of at least MIN_DOT
channels and pixels, a tile product is `jnp.dot` (tensor cores, float32
accumulation; float32 inputs run at `jax.default_matmul_precision`, by
default TF32 on recent NVIDIA GPUs). Smaller blocks (ResNeXt: 4 channels
per group, so one channel per rate block) run as broadcast multiply-adds
over `groups` groups at once, one input channel at a time, in float32.

Invariants the caller guarantees: every array dimension the kernels tile is
a multiple of its tile (outputs are padded and cropped by the caller), and
every read is in bounds (x padded). Rates must be equal in the `groups`
groups of one program.

GPU (Triton, `jax.experimental.pallas.triton`): every loaded or stored block
must hold a power-of-two number of elements and `jnp.dot` needs each
dimension >= 16, so tiles, channel blocks and group tiles are powers of two
(`Tiling.check`) and the dot path needs blocks >= MIN_DOT. Inputs stay in
global memory (whole-array `BlockSpec`s): windows at data-dependent offsets
and strided rows (stride 2, output phases) are read and written with
`pl.ds(start, size, stride)`; the tables are small int32 arrays read as
scalars (Triton has no scalar prefetch). Loops are `lax.fori_loop`, some
with data-dependent trip counts (`scf.while`).

TPU (Mosaic) is not supported: Mosaic copies whole-array blocks into VMEM,
which large activations do not fit, and wants block shapes divisible by
(8, 128) in the last two dimensions. A Mosaic version would keep x in HBM
(`memory_space=pl.ANY`), copy each halo window with `pltpu.make_async_copy`,
read the tables through scalar prefetch (`PrefetchScalarGridSpec`) and lay
channels on the 128 lanes; `fused_executor` refuses TPUs until then. On other
devices the kernels run in Pallas interpret mode (`interpret=True`): exact,
but slow; for tests and checks only.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

# Triton's dot needs every dimension >= 16.
MIN_DOT = 16
# The largest channel block of one tile product.
MAX_BLOCK = 64


def _power_of_two(value):
    return value > 0 and value & (value - 1) == 0


def _precision():
    """The dot precision `jax.default_matmul_precision` asks for (None:
    the default, TF32 for float32 on recent NVIDIA GPUs)."""
    value = jax.config.jax_default_matmul_precision
    if value in ("highest", "float32"):
        return lax.Precision.HIGHEST
    if value in ("high", "tensorfloat32", "bfloat16_3x"):
        return lax.Precision.HIGH
    return None


def accumulator(dtype):
    """float32, or float64 for float64 data (interpret mode, checks)."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


@dataclasses.dataclass(frozen=True)
class Tiling:
    """The block of one program.

    Attributes:
        rows, cols: output positions per program (correlate) or per step of
            the reduction (weight_gradient), powers of two.
        groups: layer groups per program, a power of two (1 for dot tiles).
        inputs, filters: channels of an input block and a filter block,
            powers of two; the rate is constant on each block pair.
    """

    rows: int
    cols: int
    groups: int
    inputs: int
    filters: int

    @property
    def pixels(self):
        return self.rows * self.cols

    @property
    def dot(self):
        """Whether a tile product is a `jnp.dot` (else multiply-adds)."""
        return self.groups == 1 and min(self.inputs, self.filters, self.pixels) >= MIN_DOT

    def check(self):
        """Raises unless every block size is a power of two (Triton)."""
        for name, value in dataclasses.asdict(self).items():
            if not _power_of_two(value):
                raise ValueError(f"Tiling.{name} must be a power of two, got {value}.")


@dataclasses.dataclass(frozen=True)
class Pass:
    """The static shape of one kernel launch.

    Attributes:
        tiling: a `Tiling`.
        in_strides: (s_in_h, s_in_w), the input stride along each axis.
        out_phases: (s_out_h, s_out_w), output rows interleaved per axis.
        kernel_size: (KH, KW).
        tiles: (tiles along rows, tiles along columns) of each phase.
        interpret: run in Pallas interpret mode.
    """

    tiling: Tiling
    in_strides: tuple
    out_phases: tuple
    kernel_size: tuple
    tiles: tuple
    interpret: bool

    @property
    def phase_shape(self):
        """Output positions of one phase, tile-padded: (rows, cols)."""
        return self.tiles[0] * self.tiling.rows, self.tiles[1] * self.tiling.cols


def _loop(count, body, carry):
    """`lax.fori_loop` over int32 indices (also under jax_enable_x64)."""
    return lax.fori_loop(jnp.int32(0), jnp.asarray(count, jnp.int32), body, carry)


def _divmod(value, divisor):
    """Quotient and remainder of a non-negative int32 scalar (lax.div and
    lax.rem: jnp's floor division lowers badly to Triton inside loops)."""
    divisor = jnp.int32(divisor)
    return lax.div(value, divisor), lax.rem(value, divisor)


def _windows(p, h0, w0, a_h, a_w, q_h, q_w):
    """(input rows, input cols, output rows, output cols) of one tile."""
    t, (sh, sw), (oh, ow) = p.tiling, p.in_strides, p.out_phases
    return (
        pl.ds(sh * h0 + a_h, t.rows, sh), pl.ds(sw * w0 + a_w, t.cols, sw),
        pl.ds(oh * h0 + q_h, t.rows, oh), pl.ds(ow * w0 + q_w, t.cols, ow),
    )


def _correlate_kernel(rates_ref, table_ref, count_ref, x_ref, w_ref, y_ref, *,
                      p, input_blocks, rate_count, entries):
    t = p.tiling
    n, q, th, tw, gt, fb = (pl.program_id(axis) for axis in range(6))
    q_h, q_w = _divmod(q, p.out_phases[1])
    h0, w0, g0, f0 = th * t.rows, tw * t.cols, gt * t.groups, fb * t.filters
    filters = pl.ds(f0, t.filters)
    dtype = accumulator(x_ref.dtype)

    def over_input_blocks(cb, acc):
        base = q * rate_count + rates_ref[g0, fb, cb]
        c0 = cb * t.inputs

        def over_taps(e, acc):
            row = base * entries + e
            a_h, a_w = table_ref[row, 0], table_ref[row, 1]
            i, j = table_ref[row, 2], table_ref[row, 3]
            rows, cols, _, _ = _windows(p, h0, w0, a_h, a_w, 0, 0)
            if t.dot:
                x = x_ref[n, rows, cols, g0, pl.ds(c0, t.inputs)]
                w = w_ref[i, j, g0, pl.ds(c0, t.inputs), filters]
                return acc + jnp.dot(
                    x.reshape(t.pixels, t.inputs), w, precision=_precision(),
                    preferred_element_type=dtype,
                )
            groups = pl.ds(g0, t.groups)
            for k in range(t.inputs):
                x = x_ref[n, rows, cols, groups, pl.ds(c0 + k, 1)]
                w = w_ref[i, j, groups, pl.ds(c0 + k, 1), filters]
                acc = acc + (
                    x.reshape(t.pixels, t.groups, 1).astype(dtype)
                    * w.reshape(1, t.groups, t.filters).astype(dtype)
                )
            return acc

        return _loop(count_ref[base], over_taps, acc)

    shape = (t.pixels, t.filters) if t.dot else (t.pixels, t.groups, t.filters)
    acc = _loop(input_blocks, over_input_blocks, jnp.zeros(shape, dtype))
    _, _, rows, cols = _windows(p, h0, w0, 0, 0, q_h, q_w)
    if t.dot:
        y_ref[n, rows, cols, g0, filters] = acc.reshape(
            t.rows, t.cols, t.filters).astype(y_ref.dtype)
    else:
        y_ref[n, rows, cols, pl.ds(g0, t.groups), filters] = acc.reshape(
            t.rows, t.cols, t.groups, t.filters).astype(y_ref.dtype)


def _check_sizes(*shapes):
    """Triton computes offsets in int32: refuses arrays of 2**31 elements."""
    for shape in shapes:
        if math.prod(shape) >= 2**31:
            raise ValueError(
                f"The fused kernels take arrays of fewer than 2**31 elements; got "
                f"shape {tuple(shape)}. Use a smaller batch or another implementation."
            )


def _whole(shape):
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _compiler_params(p):
    if p.interpret:
        return None
    from jax.experimental.pallas import triton as pallas_triton

    return pallas_triton.CompilerParams(num_warps=4, num_stages=2)


def correlate(x, w, rates, table, counts, p):
    """The correlation of the module docstring.

    Args:
        x: (N, Hx, Wx, G, Cg), padded so that every read is in bounds.
        w: (KH, KW, G, Cg, Fg), of x's dtype.
        rates: int32 (G, Fg / filters, Cg / inputs), rate index per block pair.
        table: int32 (phases * rates * entries, 4): (a_h, a_w, i, j) of the
            taps of each (output phase, rate), padded to `entries`.
        counts: int32 (phases * rates,), the taps of each.
        p: the `Pass`.

    Returns:
        (N, s_out_h * rows, s_out_w * cols, G, Fg) of x's dtype, rows and
        cols those of `p.phase_shape`.
    """
    t = p.tiling
    t.check()
    n, _, _, groups, in_per_group = x.shape
    filters_per_group = w.shape[-1]
    out_shape = (n, p.out_phases[0] * p.phase_shape[0], p.out_phases[1] * p.phase_shape[1],
                 groups, filters_per_group)
    _check_sizes(x.shape, out_shape)
    phases = p.out_phases[0] * p.out_phases[1]
    rate_count = counts.shape[0] // phases
    kernel = functools.partial(
        _correlate_kernel, p=p, input_blocks=in_per_group // t.inputs,
        rate_count=rate_count, entries=table.shape[0] // counts.shape[0],
    )
    grid = (n, phases) + tuple(p.tiles) + (groups // t.groups, filters_per_group // t.filters)
    operands = (rates, table, counts, x, w)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(out_shape, x.dtype),
        grid=grid,
        in_specs=[_whole(a.shape) for a in operands],
        out_specs=_whole(out_shape),
        interpret=p.interpret,
        compiler_params=_compiler_params(p),
        name="psconv_correlate",
    )(*operands)


def _weight_gradient_kernel(rates_ref, table_ref, count_ref, x_ref, y_ref, o_ref, *,
                            p, images, entries):
    t = p.tiling
    chunk, ij, gt, cb, fb = (pl.program_id(axis) for axis in range(5))
    taps = p.kernel_size[0] * p.kernel_size[1]
    g0, c0, f0 = gt * t.groups, cb * t.inputs, fb * t.filters
    base = rates_ref[g0, fb, cb] * taps + ij
    groups, filters = pl.ds(g0, t.groups), pl.ds(f0, t.filters)
    tiles = p.tiles[0] * p.tiles[1]
    dtype = accumulator(x_ref.dtype)

    def over_taps(e, acc):
        row = base * entries + e
        q_h, q_w = table_ref[row, 0], table_ref[row, 1]
        a_h, a_w = table_ref[row, 2], table_ref[row, 3]

        def over_tiles(index, acc):
            image, tile = _divmod(index, tiles)
            h0, w0 = _divmod(tile, p.tiles[1])
            n, h0, w0 = chunk * images + image, h0 * t.rows, w0 * t.cols
            rows, cols, out_rows, out_cols = _windows(p, h0, w0, a_h, a_w, q_h, q_w)
            if t.dot:
                x = x_ref[n, rows, cols, g0, pl.ds(c0, t.inputs)]
                y = y_ref[n, out_rows, out_cols, g0, filters]
                return acc + lax.dot_general(
                    x.reshape(t.pixels, t.inputs), y.reshape(t.pixels, t.filters),
                    (((0,), (0,)), ((), ())), precision=_precision(),
                    preferred_element_type=dtype,
                )
            y = y_ref[n, out_rows, out_cols, groups, filters]
            y = y.reshape(t.pixels, t.groups, t.filters).astype(dtype)
            sums = []
            for k in range(t.inputs):
                x = x_ref[n, rows, cols, groups, pl.ds(c0 + k, 1)]
                x = x.reshape(t.pixels, t.groups, 1).astype(dtype)
                sums.append(acc[k] + jnp.sum(x * y, axis=0))
            return tuple(sums)

        return _loop(images * tiles, over_tiles, acc)

    if t.dot:
        zeros = jnp.zeros((t.inputs, t.filters), dtype)
    else:
        zeros = (jnp.zeros((t.groups, t.filters), dtype),) * t.inputs
    acc = _loop(count_ref[base], over_taps, zeros)
    i, j = _divmod(ij, p.kernel_size[1])
    if t.dot:
        o_ref[chunk, i, j, g0, pl.ds(c0, t.inputs), filters] = acc
    else:
        for k in range(t.inputs):
            o_ref[chunk, i, j, groups, pl.ds(c0 + k, 1), filters] = acc[k].reshape(
                t.groups, 1, t.filters)


def weight_gradient(x, y, rates, table, counts, p, chunks):
    """The weight gradient of the module docstring, per batch chunk.

    Args:
        x: (N, Hx, Wx, G, Cg), padded so that every read is in bounds.
        y: (N, s_out_h * rows, s_out_w * cols, G, Fg), zero in the padding.
        rates: as for `correlate`.
        table: int32 (rates * KH * KW * entries, 4): (q_h, q_w, a_h, a_w) of
            the taps of each (rate, kernel tap), padded to `entries`.
        counts: int32 (rates * KH * KW,).
        p: the `Pass`.
        chunks: batch chunks reduced by separate programs; divides N.

    Returns:
        (chunks, KH, KW, G, Cg, Fg) partial sums, one per chunk, in the
        accumulator's dtype.
    """
    t = p.tiling
    t.check()
    n, _, _, groups, in_per_group = x.shape
    filters_per_group = y.shape[-1]
    _check_sizes(x.shape, y.shape)
    kh, kw = p.kernel_size
    out_shape = (chunks, kh, kw, groups, in_per_group, filters_per_group)
    kernel = functools.partial(
        _weight_gradient_kernel, p=p, images=n // chunks,
        entries=table.shape[0] // counts.shape[0],
    )
    grid = (chunks, kh * kw, groups // t.groups, in_per_group // t.inputs,
            filters_per_group // t.filters)
    operands = (rates, table, counts, x, y)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(out_shape, accumulator(x.dtype)),
        grid=grid,
        in_specs=[_whole(a.shape) for a in operands],
        out_specs=_whole(out_shape),
        interpret=p.interpret,
        compiler_params=_compiler_params(p),
        name="psconv_weight_gradient",
    )(*operands)
