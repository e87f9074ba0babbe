"""How a PS model spreads its kernels' weight energy over the dilation rates.

The paper argues that PSConv lets a network allocate capacity across scales:
every kernel (filter c, input channel k) of a PS layer runs at its own rate
D[c, k], so the weights a layer gives each rate show which scales it uses.
For every PSConv2D and DynamicPSConv2D of a model (nested models included,
`inspection.ps_layers`) this module measures, for each rate r,

    energy share(r) = sum of W[:, :, k, c]**2 over the kernels with D[c, k] = r
                      / the same sum over every kernel,
    kernel share(r) = number of kernels with D[c, k] = r / number of kernels,

in float64, from the layer's `dense_kernel()` and `dilation_matrix()` (so a
grouped layer's kernels sit at their place and the zeros across groups count
for nothing), with D the current learned lattice of a DynamicPSConv2D.

Invariants: the shares of a layer sum to 1 over its rates. An initializer
that draws every kernel weight from one distribution (He, Glorot) gives
every kernel the same expected energy, so at initialization the energy
share of a rate is its kernel share up to sampling noise; what differs after
training is what training moved. `initial_allocation` measures that
starting point on a freshly initialized copy of the model.

A layer whose shares are undefined (a kernel with NaN or infinite weights,
a kernel of zeros, an unbuilt layer, a dynamic layer whose latent factors
are not finite) is reported with its `problem` and no energy shares; the
other layers are reported as usual.

    from psconv_tf import scale_allocation as sa
    allocations = sa.scale_allocation(model)
    print(sa.format_table(allocations))
    sa.plot_scale_allocation(allocations, "scales.png")

Command line: `python -m psconv_tf.scale_allocation SOURCE` with SOURCE a
zoo model name, a `.keras` file or a run folder (its `best.keras`); see
`--help`.
"""

import argparse
import dataclasses
import io
import json
import os
import sys

import keras
import numpy as np

from psconv_tf.inspection import ps_layers
from psconv_tf.layers.dynamic_ps_conv2d import DynamicPSConv2D

PLOT_INSTALL = 'pip install "psconv-tf[plot]"'


@dataclasses.dataclass(frozen=True)
class LayerAllocation:
    """The measurements of one PS layer.

    Attributes:
        name: the layer's name.
        kind: "static" (PSConv2D) or "dynamic" (DynamicPSConv2D, D learned).
        filters, in_channels, groups: the layer's shape.
        kernels: {rate: number of kernels at that rate}, rates ascending.
        energies: {rate: sum of the squared weights of those kernels}
            (float64), or None where `problem` says why not.
        problem: None, or why the energies are undefined.
    """

    name: str
    kind: str
    filters: int
    in_channels: int
    groups: int
    kernels: dict
    energies: dict = None
    problem: str = None

    @property
    def kernel_shares(self):
        """{rate: share of the layer's kernels at that rate}."""
        return _shares(self.kernels)

    @property
    def energy_shares(self):
        """{rate: share of the layer's kernel energy at that rate}, or None."""
        return None if self.energies is None else _shares(self.energies)

    def to_dict(self):
        """A JSON-ready dict: the attributes, the shares, rates as strings."""
        def keyed(values):
            return None if values is None else {str(r): v for r, v in values.items()}

        return dict(
            name=self.name, kind=self.kind, filters=self.filters,
            in_channels=self.in_channels, groups=self.groups,
            kernels=keyed(self.kernels), energies=keyed(self.energies),
            kernel_shares=keyed(self.kernel_shares),
            energy_shares=keyed(self.energy_shares), problem=self.problem,
        )


def _shares(values):
    total = sum(values.values())
    return {rate: value / total for rate, value in values.items()}


def layer_allocation(layer):
    """The `LayerAllocation` of one built PSConv2D or DynamicPSConv2D."""
    kind = "dynamic" if isinstance(layer, DynamicPSConv2D) else "static"
    shape = dict(name=layer.name, kind=kind, filters=int(layer.filters),
                 groups=int(layer.groups))
    try:
        matrix = layer.dilation_matrix()  # raises where D is undefined
        kernel = np.asarray(layer.dense_kernel(), dtype=np.float64)
    except ValueError as error:
        return LayerAllocation(in_channels=0, kernels={}, problem=str(error), **shape)
    shape["in_channels"] = int(matrix.shape[1])
    # A dynamic layer's two rates, also one that has lost all its kernels.
    rates = sorted({int(r) for r in np.unique(matrix[matrix > 0])}
                   | ({layer.small_rate, layer.large_rate} if kind == "dynamic" else set()))
    kernels = {r: int(np.sum(matrix == r)) for r in rates}
    bad = int(np.sum(~np.isfinite(kernel)))
    if bad:
        return LayerAllocation(
            kernels=kernels, problem=f"its kernel holds {bad} non-finite value(s)", **shape)
    # (kh, kw, in, filters) -> energy of each kernel, (filters, in) as D.
    energy = np.sum(np.square(kernel), axis=(0, 1)).T
    if not np.any(energy[matrix > 0]):
        return LayerAllocation(kernels=kernels, problem="its kernel is all zeros", **shape)
    energies = {r: float(np.sum(energy[matrix == r])) for r in rates}
    return LayerAllocation(kernels=kernels, energies=energies, **shape)


def scale_allocation(model):
    """[`LayerAllocation`] of every PS layer of `model`, in order.

    Raises:
        ValueError: `model` holds no PSConv2D or DynamicPSConv2D.
    """
    layers = ps_layers(model)
    if not layers:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(f"model {name!r} has no PSConv2D or DynamicPSConv2D layer")
    return [layer_allocation(layer) for layer in layers]


def initial_allocation(model, seed=0):
    """`scale_allocation` of a copy of `model` with fresh initial weights:
    its layers' own initializers (a DynamicPSConv2D's initial lattice
    included), drawn after `keras.utils.set_random_seed(seed)` (which seeds
    the global generators of Python, NumPy and the backend)."""
    keras.utils.set_random_seed(seed)
    return scale_allocation(keras.models.clone_model(model))


def total(allocations, name="all layers"):
    """One `LayerAllocation` summing the kernels and the energies of
    `allocations` (those without a problem) per rate."""
    valid = [a for a in allocations if a.problem is None]
    kernels, energies = {}, {}
    for allocation in valid:
        for rate, count in allocation.kernels.items():
            kernels[rate] = kernels.get(rate, 0) + count
            energies[rate] = energies.get(rate, 0.0) + allocation.energies[rate]
    order = sorted(kernels)
    return LayerAllocation(
        name=name, kind="-", filters=sum(a.filters for a in valid),
        in_channels=sum(a.in_channels for a in valid), groups=0,
        kernels={r: kernels[r] for r in order},
        energies={r: energies[r] for r in order} if valid else None,
        problem=None if valid else "no layer has defined energies",
    )


def format_table(allocations, initial=None):
    """A Markdown table (readable as text): one row per layer, then the
    total, with the share in % of the kernels and of the energy at each
    rate (columns: every rate of the model; "-" where a layer lacks one);
    with `initial` (`initial_allocation` of the same model), also the
    energy shares at initialization, and the kernel shares there too where
    the model has dynamic layers. Layers with a problem are listed below
    the table."""
    if initial is not None and [a.name for a in initial] != [a.name for a in allocations]:
        raise ValueError("`initial` must measure the same layers, in the same order")
    rows = list(allocations) + [total(allocations)]
    starts = None if initial is None else list(initial) + [total(initial)]
    rates = sorted({r for a in rows + (starts or []) for r in a.kernels})
    rate_text = " · ".join(str(r) for r in rates)
    # A dynamic layer's kernels change rate in training: then both shares.
    moved = starts is not None and any(a.kind == "dynamic" for a in allocations)
    header = ["layer", "kind", "channels"]
    if moved:
        header.append(f"kernels % at init, {rate_text}")
    header.append(f"kernels % {'now, ' if moved else 'at '}{rate_text}")
    if starts is not None:
        header.append(f"energy % at init, {rate_text}")
    header.append(f"energy % at {rate_text}" if starts is None else f"energy % now, {rate_text}")
    lines = []
    for number, row in enumerate(rows):
        cells = [row.name, row.kind, _channels(row) if number < len(allocations) else "-"]
        if moved:
            start = starts[number]
            cells.append(_percentages(start.kernel_shares if start.kernels else None, rates))
        cells.append(_percentages(row.kernel_shares if row.kernels else None, rates))
        if starts is not None:
            cells.append(_percentages(starts[number].energy_shares, rates))
        cells.append(_percentages(row.energy_shares, rates))
        lines.append(cells)
    widths = [max(len(c) for c in column) for column in zip(header, *lines)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    text = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    text += [line(cells) for cells in lines]
    text += [f"\n{a.name}: {a.problem}" for a in allocations if a.problem]
    return "\n".join(text)


def _channels(row):
    if not row.in_channels:  # unknown: the layer is not built
        return "-"
    return f"{row.in_channels} -> {row.filters}" + (
        f", {row.groups} groups" if row.groups > 1 else "")


def _percentages(shares, rates):
    if shares is None:
        return "-"
    return " · ".join(f"{100 * shares[r]:.1f}" if r in shares else "-" for r in rates)


def plot_scale_allocation(allocations, path=None, initial=None, title=None, dpi=100):
    """Draws each rate's energy share along the layers (solid), its kernel
    share (dotted) and, given `initial`, its energy share at initialization
    (dashed). Needs matplotlib (`pip install "psconv-tf[plot]"`).

    Args:
        allocations: `scale_allocation(model)`.
        path: where to write the figure as a PNG (written whole, under a
            temporary name, then renamed; a failure is a
            `psconv_tf.runtime.errors.RunWriteError` naming it), or None.
        initial: `initial_allocation` of the same model, or None.
        title: the figure's title.
        dpi: the PNG's dots per inch.

    Returns:
        The matplotlib Figure (outside pyplot when written to `path`).
    """
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"plotting needs matplotlib: {PLOT_INSTALL}") from error
    size = (max(5.0, 0.32 * len(allocations) + 2.5), 3.4)
    if path is None:  # for display: a pyplot figure
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=size)
    else:  # for the file only: no pyplot, no display, the user's backend untouched
        figure = Figure(figsize=size)
    axes = figure.subplots()
    palette = matplotlib.colormaps["tab10"]
    rates = sorted({r for a in allocations for r in a.kernels})
    steps = np.arange(len(allocations))

    def series(measured, shares_of, rate):
        return [100 * shares_of(a)[rate] if shares_of(a) and rate in shares_of(a)
                else np.nan for a in measured]

    for index, rate in enumerate(rates):
        colour = palette(index % 10)
        axes.plot(steps, series(allocations, lambda a: a.energy_shares, rate), "o-",
                  color=colour, markersize=3, label=f"rate {rate}: energy")
        if initial is not None:
            axes.plot(steps, series(initial, lambda a: a.energy_shares, rate), "--",
                      color=colour, alpha=0.7, label=f"rate {rate}: energy at init")
        axes.plot(steps, series(allocations, lambda a: a.kernel_shares, rate), ":",
                  color=colour, alpha=0.9, label=f"rate {rate}: kernels")
    axes.set_xticks(steps, [a.name for a in allocations], rotation=90, fontsize=6)
    axes.set_ylabel("share (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        axes.set_title(title, fontsize=8)
    figure.tight_layout()
    if path is not None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi)
        _write(path, lambda files, path: files.write_bytes(path, buffer.getvalue()))
    return figure


def _write(path, write):
    """`write(files, path)` with `psconv_tf.runtime.files` (TensorFlow, for
    the atomic write, imported only here); a failure is a `RunWriteError`
    naming `path`."""
    from psconv_tf.runtime import files
    from psconv_tf.runtime.errors import writing

    path = os.fspath(path)
    with writing(path):
        write(files, path)


def load(source):
    """The model `source` names: a zoo model name (built with the zoo's
    defaults), a `.keras` file, or a run folder holding `best.keras`."""
    from psconv_tf import models
    from psconv_tf.saving import load_model

    source = os.fspath(source)
    if source in models.list_models():
        return models.get(source)
    if os.path.isdir(source):
        best = os.path.join(source, "best.keras")
        if not os.path.isfile(best):
            raise ValueError(f"{source}: a folder without best.keras, not a run folder")
        source = best
    elif not os.path.exists(source) and not source.endswith(".keras") and os.sep not in source:
        raise ValueError(f"{source!r}: neither a zoo model name nor an existing file")
    return load_model(source)


def main(argv=None):
    """`python -m psconv_tf.scale_allocation SOURCE [--json PATH] [--plot PATH]
    [--compare-init]`: prints the table; errors are one line."""
    parser = argparse.ArgumentParser(
        prog="python -m psconv_tf.scale_allocation",
        description="The share of kernel weight energy (and of kernels) at each "
                    "dilation rate, per PS layer of a model.")
    parser.add_argument("source", help="zoo model name, .keras file or run folder")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the measurements as JSON ('-': to stdout "
                             "instead of the table)")
    parser.add_argument("--plot", metavar="PATH", help="also draw them into a PNG")
    parser.add_argument("--compare-init", action="store_true",
                        help="also measure a freshly initialized copy of the model")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of that initialization (default: %(default)s)")
    args = parser.parse_args(argv)

    def fail(flag, error):
        where = f"{flag}: " if flag else ""
        parser.exit(2, f"{parser.prog}: error: {where}{error}\n")

    try:
        model = load(args.source)
        allocations = scale_allocation(model)
        initial = initial_allocation(model, args.seed) if args.compare_init else None
    except (ValueError, OSError, ImportError) as error:
        fail("", error)
    report = {"model": model.name, "layers": [a.to_dict() for a in allocations],
              "total": total(allocations).to_dict()}
    if initial is not None:
        report["initial"] = {"seed": args.seed, "layers": [a.to_dict() for a in initial],
                             "total": total(initial).to_dict()}
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(format_table(allocations, initial))
    from psconv_tf.runtime.errors import RunWriteError

    if args.json not in (None, "-"):
        try:
            _write(args.json, lambda files, path: files.write_json(path, report))
        except RunWriteError as error:
            fail("--json", error)
    if args.plot is not None:
        try:
            plot_scale_allocation(allocations, args.plot, initial, title=model.name)
        except (ImportError, RunWriteError) as error:
            fail("--plot", error)


if __name__ == "__main__":
    main(sys.argv[1:])
