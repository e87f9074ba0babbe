"""The official PSConv layers of d-li14/PSConv as `PSConv2D` kernels.

An official `PSConv2d` (and the grouped `PSGConv2d`) holds three
convolutions: `gwconv` (grouped, at rate d), `gwconv_shift` (grouped, at
rate 2d, over the input with its channel halves swapped per group) and
`conv` (dense, rate 1, meant to be zero where the other two act: the
masked positions). Together they are one `PSConv2D(pattern=(1, d, 1, 2d))`
in the blocked layout. `psconv_values` writes them into a layer's kernel and
returns the masked weights that are not zero; `with_masked_corrections`
adds those back as standard layers (`load_torch(masked="compat")`).

The released grouped layer masks only some groups
(`psconv_tf.engine.official_mask`); an `OfficialPSConv2D` holds the dense
conv's weights at the positions it leaves unmasked in its `rate1_kernel`, so
that only the weights at the positions the released layer masks remain to
be judged as masked.
"""

import keras
import numpy as np

from psconv_tf.engine import grouped
from psconv_tf.engine import official_mask
from psconv_tf.layers.official_ps_conv2d import OfficialPSConv2D


PSCONV_PARTS = ("gwconv", "gwconv_shift", "conv")
# PyTorch (out, in/groups, kh, kw) -> Keras (kh, kw, in/groups, out).
TORCH_TO_KERAS_CONV = (2, 3, 1, 0)
KERAS_TO_TORCH_CONV = (3, 2, 0, 1)


def checked(layer, module, param, value, torch_shape):
    """`value`, after checking that it has the shape the layer needs."""
    if tuple(value.shape) != tuple(torch_shape):
        raise ValueError(
            f"Shape mismatch for '{module}.{param}': the checkpoint has "
            f"{tuple(value.shape)}, layer {layer.name!r} needs "
            f"{tuple(torch_shape)} (PyTorch layout)."
        )
    return value


def psconv_values(layer, params, module, dilation):
    """The PSConv2D kernel (and bias) of an official layer, and its residual.

    The residual holds the dense conv's weights at the masked positions, as a
    Keras kernel of the layer's shape (zeros elsewhere). For an
    `OfficialPSConv2D`, the weights at its `rate1_positions()` fill its
    `rate1_kernel` and are no part of the residual.
    """
    if layer.activation is not keras.activations.linear:
        raise ValueError(
            f"Layer {layer.name!r} has an activation; the official layer has none."
        )
    if layer.padding != "symmetric" and (layer.padding, layer.strides) != ("same", (1, 1)):
        raise ValueError(
            f"Layer {layer.name!r} has padding={layer.padding!r}; the official "
            "layer pads as PyTorch does, which is padding='symmetric'."
        )
    if layer.pattern is None:
        raise ValueError(
            f"Layer {layer.name!r} has an explicit dilation matrix; the official "
            "layer is the cyclic lattice PSConv2D(pattern=(1, d, 1, 2d))."
        )
    parts = len(layer.pattern)
    if parts % 2:
        raise ValueError(
            f"Layer {layer.name!r}: the official layer swaps channel halves, "
            f"which needs an even number of parts; its pattern {layer.pattern} "
            f"has {parts}."
        )
    filters, groups = layer.filters, layer.groups
    in_channels = layer.kernel.shape[2] * groups
    kernel_size = tuple(layer.kernel_size)
    block_shape = (filters, in_channels // (groups * parts)) + kernel_size
    shapes = {
        "gwconv.weight": block_shape,
        "gwconv_shift.weight": block_shape,
        "conv.weight": (filters, in_channels // groups) + kernel_size,
    }
    for name, shape in shapes.items():
        checked(layer, module, name, params[name], shape)
    dense, rates, masked = official_dense_kernel(params, groups, parts, dilation)
    if not np.array_equal(rates, layer.dilation_matrix()):
        raise ValueError(
            f"Layer {layer.name!r} has other rates than the official layer "
            f"(dilation={dilation}, {parts} parts), which is "
            f"PSConv2D(pattern=(1, {dilation}, 1, {2 * dilation}), "
            "layout='blocked', cyclic='both'). Received: pattern="
            f"{layer.pattern}, layout={layer.layout!r}, cyclic={layer.cyclic!r}, "
            f"dilation_rate={layer.dilation_rate}."
        )
    residual = np.where(masked[:, :, None, None], params["conv.weight"], 0)
    kernel = dense.transpose(TORCH_TO_KERAS_CONV)
    values = [(layer.kernel, grouped.compress(kernel, groups, out_axis=3, in_axis=2))]
    if isinstance(layer, OfficialPSConv2D):
        beside = layer.rate1_positions()[:, :, None, None]
        values.append((layer.rate1_kernel, np.where(beside, residual, 0)
                       .transpose(TORCH_TO_KERAS_CONV)))
        residual = np.where(beside, 0, residual)
    if layer.use_bias:
        bias = sum(params[f"{part}.bias"] for part in PSCONV_PARTS)
        values.append((layer.bias, bias))
    return values, residual.transpose(TORCH_TO_KERAS_CONV)


def official_dense_kernel(params, groups=1, parts=4, dilation=2):
    """The official layer as one kernel with a rate per (filter, input).

    Args:
        params: arrays of `gwconv.weight`, `gwconv_shift.weight` and
            `conv.weight` of an official PSConv2d (groups=1) or PSGConv2d
            layer, in PyTorch layout.
        groups: the layer's groups (PSGConv2d's cardinality).
        parts: the layer's parts (even).
        dilation: the rate of `gwconv`.

    Returns:
        dense: (filters, in_channels, kh, kw), every kernel at its place:
            `gwconv` and `gwconv_shift` at their positions, `conv` elsewhere.
        rates: (filters, in_channels) int, the rate of every kernel, 0 across
            groups, comparable with `PSConv2D.dilation_matrix()`.
        masked: (filters, in_channels // groups) bool, the positions of `conv`
            where the other two act, in the layout of `conv.weight`.
    """
    filters, in_per_group = params["conv.weight"].shape[:2]
    in_channels = in_per_group * groups
    blocks = groups * parts
    # gwconv_shift reads channel swapped[j] = x[halves_swapped[j]].
    halves = np.arange(in_channels).reshape(groups, 2, -1)
    halves_swapped = halves[:, ::-1].ravel()
    diagonal = grouped.expand(np.ones((filters, in_channels // blocks), bool), blocks)
    shifted = np.zeros_like(diagonal)
    shifted[:, halves_swapped] = diagonal
    gw = grouped.expand(params["gwconv.weight"], blocks)
    gw_shift = np.zeros_like(gw)
    gw_shift[:, halves_swapped] = grouped.expand(params["gwconv_shift.weight"], blocks)
    conv = grouped.expand(params["conv.weight"], groups)
    same_group = grouped.expand(np.ones((filters, in_channels // groups), bool), groups)

    dense = np.where(
        diagonal[..., None, None], gw, np.where(shifted[..., None, None], gw_shift, conv)
    )
    rates = np.where(diagonal, dilation, np.where(shifted, 2 * dilation, same_group))
    masked = grouped.compress(diagonal | shifted, groups)
    return dense, rates.astype(np.int64), masked


def misses_released_mask(layer, residual):
    """Whether the nonzero weights of a (Keras-layout) `residual` of a
    grouped `PSConv2D` all lie where the released `PSGConv2d` leaves its
    rate-1 kernels, as in the authors' grouped checkpoints."""
    if layer.groups == 1 or isinstance(layer, OfficialPSConv2D) or not layer.pattern:
        return False
    filters, in_channels = layer.filters, layer.kernel.shape[2] * layer.groups
    try:
        released = official_mask.masked_positions(
            filters, in_channels, layer.groups, len(layer.pattern), slip=True
        )
    except ValueError:
        return False
    nonzero = np.any(residual != 0, axis=(0, 1)).T  # (filters, in / groups)
    return bool(nonzero.any()) and not np.any(nonzero & released)


def with_masked_corrections(model, residuals):
    """`model` plus a rate-1 conv of the masked weights beside the given layers."""

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if layer.name not in residuals:
            return outputs
        correction = _masked_conv(layer, args[0], residuals[layer.name])
        return keras.layers.Add(name=f"{layer.name}_compat")([outputs, correction])

    # Reuse the layers (and their weights) instead of copying them.
    return keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call
    )


def _masked_conv(layer, inputs, kernel):
    """The official dense conv restricted to the masked weights, PyTorch padding."""
    kh, kw = layer.kernel_size
    padded = keras.layers.ZeroPadding2D(
        (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2),
        data_format=layer.data_format,
        name=f"{layer.name}_masked_pad",
    )(inputs)
    conv = keras.layers.Conv2D(
        layer.filters, layer.kernel_size, strides=layer.strides,
        groups=layer.groups, use_bias=False, data_format=layer.data_format,
        name=f"{layer.name}_masked",
    )
    outputs = conv(padded)
    conv.kernel.assign(kernel.astype(conv.kernel.dtype))
    return outputs
