"""Looking at PSConv layers: a summary of a model and the lattice of a layer."""

import numpy as np

from psconv_tf import graph
from psconv_tf.layers.base import PSConvBase
from psconv_tf.layers.ps_conv2d import PSConv2D


def ps_layers(model):
    """Every PSConv layer (PSConv2D, DynamicPSConv2D) of `model`, nested
    models included, in order."""
    return [layer for layer in graph.layers_of(model) if isinstance(layer, PSConvBase)]


def summary(model, print_fn=print):
    """Prints one line per PSConv2D of `model`; returns the rows as dicts.

    Each row: name, channels (in -> out), kernel, strides, groups, pattern,
    cyclic, layout ("explicit", "-", "-" for a layer built from a dilation
    matrix; "learned (small, large)", "-", "-" for a DynamicPSConv2D), and
    the share of kernels at each rate (a DynamicPSConv2D's current ones).
    """
    rows = []
    for layer in ps_layers(model):
        matrix = layer.dilation_matrix()
        rates, counts = np.unique(matrix[matrix > 0], return_counts=True)
        rows.append(
            dict(
                name=layer.name,
                channels=f"{matrix.shape[1]} -> {matrix.shape[0]}",
                kernel="x".join(map(str, layer.kernel_size)),
                strides="x".join(map(str, layer.strides)),
                groups=layer.groups,
                **_lattice(layer),
                rates={
                    int(r): round(float(c / counts.sum()), 4)
                    for r, c in zip(rates, counts)
                },
            )
        )
    header = ("name", "channels", "kernel", "strides", "groups", "pattern",
              "cyclic", "layout", "rates")
    table = [header] + [
        tuple(_cell(row[key]) for key in header) for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print_fn("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))
    print_fn(f"{len(rows)} PSConv2D layers")
    return rows


def _lattice(layer):
    """The pattern, cyclic and layout cells of a row."""
    if not isinstance(layer, PSConv2D):  # a DynamicPSConv2D
        return dict(pattern=f"learned {layer.rates}", cyclic="-", layout="-")
    return dict(
        pattern="explicit" if layer.pattern is None else layer.pattern,
        cyclic=layer.cyclic or "-",
        layout=layer.layout or "-",
    )


def _cell(value):
    if isinstance(value, dict):  # rate -> share of kernels
        return " ".join(f"{rate}:{share:.0%}" for rate, share in value.items())
    return str(value)


def plot_lattice(layer_or_matrix, ax=None, title=None):
    """Draws the kernel lattice D as in the paper's Fig. 2.

    One cell per kernel (rows: filters, columns: input channels), coloured by
    its dilation rate; white where no kernel exists (across groups). Needs
    matplotlib (`pip install psconv-tf[plot]`).

    Args:
        layer_or_matrix: a built PSConv2D, or a (filters, in_channels) int
            matrix such as `psconv_tf.dilation_matrix(...)`.
        ax: matplotlib Axes to draw on; a new figure when None.
        title: axes title; the layer name by default.

    Returns:
        The matplotlib Axes.
    """
    try:
        import matplotlib.pyplot as plt
        from matplotlib import colors
        from matplotlib.patches import Patch
    except ImportError as error:
        raise ImportError(
            "plot_lattice needs matplotlib: pip install 'psconv-tf[plot]'"
        ) from error
    if isinstance(layer_or_matrix, PSConvBase):
        matrix = layer_or_matrix.dilation_matrix()
        title = layer_or_matrix.name if title is None else title
    else:
        matrix = np.asarray(layer_or_matrix)
        if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.integer):
            raise ValueError(
                "plot_lattice takes a PSConv2D or a 2D integer matrix of rates; "
                f"received an array of shape {matrix.shape} and dtype {matrix.dtype}."
            )
    rates = [int(r) for r in np.unique(matrix[matrix > 0])]
    palette = plt.get_cmap("tab10")
    cmap = colors.ListedColormap(["white"] + [palette(i % 10) for i in range(len(rates))])
    index = np.searchsorted([0] + rates, matrix)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5 * matrix.shape[0] / matrix.shape[1] + 0.6))
    ax.imshow(index, cmap=cmap, vmin=0, vmax=len(rates), interpolation="nearest")
    ax.set_xlabel("input channel k")
    ax.set_ylabel("filter c")
    if title:
        ax.set_title(title)
    ax.legend(
        handles=[
            Patch(color=cmap(i + 1), label=f"rate {rate}") for i, rate in enumerate(rates)
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    return ax
