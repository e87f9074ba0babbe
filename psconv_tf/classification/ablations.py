"""The paper's ablations (§4.2, Tables 3-5) as rows of one experiment.

Each row of Tables 3-5 is a lattice of PS-ResNet-50 on ImageNet:
- Table 3, cyclic interval t: a cycle of t rates, the second 2 and the
  others 1 ("we set the dilation rate in one slot of a cycle to 2 and the
  other slots to 1"); t = 1 is the standard ResNet-50, the baseline.
- Table 4, dilation pattern {d1, d2, d3, d4} at t = 4; {1, 1, 1, 1} is the
  baseline again, {1, 2, 4, 8} has no figure (the text says over 5 % worse).
- Table 5, cyclic axis: {1, 2, 1, 4} with the rates shifting along the input
  channels only (no shift between filters), the filters only, or both (the
  paper's PSConv).

A row becomes a zoo model: the baseline is the standard twin of the PS model
(`ps_NAME` -> `NAME`), every other row `ps_NAME` with `pattern` and
`cyclic`. Rows that define the same network (Table 3's t = 4 and Table 4's
{1, 2, 1, 1}; the baselines; Table 4's {1, 2, 1, 4} and Table 5's "both")
share one run, so the tables show one figure for them. Every (network,
seed) is a run folder of its own, `<run_name>_seed<seed>`, trained by the
one `Trainer` (`runs.train`): a rerun resumes an unfinished one and leaves
a finished one as it is.

The paper's figures are top-1 errors (%) of PS-ResNet-50 on ImageNet's
validation set, of the best epoch of 120; this module's are the best
epoch's top-1 error on whatever data and budget it is given.
"""

import dataclasses
import os

import keras

from psconv_tf.classification import runs
from psconv_tf.runtime import statistics
from psconv_tf.runtime.errors import InputError

TABLES = (3, 4, 5)
CYCLIC_INTERVALS = (1, 2, 4, 8, 16, 32)
PAPER_MODEL = "PS-ResNet-50, ImageNet val."


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the paper's Tables 3-5.

    Attributes:
        table: 3, 4 or 5.
        label: the row as the paper names it.
        pattern: the rates of one cycle; None for the standard baseline.
        cyclic: "both", "input" or "output" (`PSConv2D`'s `cyclic`).
        paper_error: the paper's top-1 error (%), or None where it gives none.
        paper_note: what the paper says instead of a figure, or a remark.
    """

    table: int
    label: str
    pattern: tuple = None
    cyclic: str = "both"
    paper_error: float = None
    paper_note: str = ""

    @property
    def run_name(self):
        """The name of the network, shared by the rows that define the same one."""
        if self.pattern is None:
            return "standard"
        return f"ps_{_compact(self.pattern)}_{self.cyclic}"

    def model(self, ps_model):
        """(zoo name, zoo arguments) of this row for the PS model `ps_model`."""
        if self.pattern is None:
            return ps_model.removeprefix("ps_"), {}
        return ps_model, {"pattern": list(self.pattern), "cyclic": self.cyclic}


def _compact(pattern):
    """"1-2-1-1" for (1, 2, 1, 1); three or more equal rates in a row as
    "1x14": (1, 2) + (1,) * 14 is "1-2-1x14"."""
    parts, start = [], 0
    while start < len(pattern):
        end = start
        while end < len(pattern) and pattern[end] == pattern[start]:
            end += 1
        count = end - start
        parts += [f"{pattern[start]}x{count}"] if count > 2 else [str(pattern[start])] * count
        start = end
    return "-".join(parts)


def cyclic_interval_pattern(t):
    """Table 3's cycle for interval t: the second rate 2, the others 1; None
    (the standard network) for t = 1."""
    return None if t == 1 else (1, 2) + (1,) * (t - 2)


# The paper's Tables 3, 4 and 5 (top-1 error, %, PS-ResNet-50 on ImageNet).
ROWS = (
    Row(3, "t = 1 (baseline)", None, paper_error=22.850),
    Row(3, "t = 2", cyclic_interval_pattern(2), paper_error=21.948),
    Row(3, "t = 4", cyclic_interval_pattern(4), paper_error=21.476,
        paper_note="Table 4 gives this lattice ({1, 2, 1, 1}) 22.368"),
    Row(3, "t = 8", cyclic_interval_pattern(8), paper_error=21.634),
    Row(3, "t = 16", cyclic_interval_pattern(16), paper_note="not in the paper"),
    Row(3, "t = 32", cyclic_interval_pattern(32), paper_note="not in the paper"),
    Row(4, "{1, 1, 1, 1} (baseline)", None, paper_error=22.850),
    Row(4, "{1, 2, 1, 1}", (1, 2, 1, 1), paper_error=22.368,
        paper_note="Table 3 gives this lattice (t = 4) 21.476"),
    Row(4, "{1, 4, 1, 1}", (1, 4, 1, 1), paper_error=22.754),
    Row(4, "{1, 2, 1, 2}", (1, 2, 1, 2), paper_error=21.948),
    Row(4, "{1, 2, 1, 4} (default)", (1, 2, 1, 4), paper_error=21.126),
    Row(4, "{1, 2, 4, 8}", (1, 2, 4, 8), paper_note="text: over 5 % worse, no figure"),
    Row(5, "input ✓, output ✗", (1, 2, 1, 4), "input", paper_error=21.658),
    Row(5, "input ✗, output ✓", (1, 2, 1, 4), "output", paper_error=22.056),
    Row(5, "input ✓, output ✓", (1, 2, 1, 4), "both", paper_error=21.126),
)

TITLES = {
    3: "Table 3: cyclic interval t (one rate 2 per cycle, the others 1)",
    4: "Table 4: dilation pattern {d1, d2, d3, d4} (t = 4)",
    5: "Table 5: axes along which the rates of {1, 2, 1, 4} shift",
}


def rows_of(tables):
    """The rows of the given tables, in the paper's order."""
    tables = tuple(tables)
    unknown = sorted(set(tables) - set(TABLES))
    if unknown or not tables:
        raise InputError(f"must name tables among {', '.join(map(str, TABLES))}; got "
                         f"{', '.join(map(str, tables)) or 'none'}.", argument="tables")
    return [row for row in ROWS if row.table in tables]


def run_folder_name(run_name, seed):
    """The run folder of one network and seed, e.g. "ps_1-2-1-4_both_seed0"."""
    return f"{run_name}_seed{seed}"


@dataclasses.dataclass(frozen=True)
class Network:
    """One network the rows define: its run name, zoo model and arguments."""

    run_name: str
    model: str
    model_kwargs: dict


def networks(rows, ps_model):
    """The distinct networks of `rows`, in order of first appearance."""
    found = {}
    for row in rows:
        model, kwargs = row.model(ps_model)
        found.setdefault(row.run_name, Network(row.run_name, model, kwargs))
    return list(found.values())


def unbuildable(network_list, config_for):
    """{run name: reason} of the networks the model cannot have (e.g. a cycle
    longer than a layer's channels), found by building each once.

    Args:
        network_list: `Network`s.
        config_for: `fn(network)` giving its `RunConfig`.
    """
    reasons = {}
    for network in network_list:
        try:
            runs.build_model(config_for(network))
        except InputError as error:
            reasons[network.run_name] = str(error)
        finally:
            keras.backend.clear_session()
    return reasons


def train_networks(network_list, seeds, run_dir, train_one, skip=(), verbose=1):
    """Trains every (network, seed) not in `skip`.

    Args:
        network_list: `Network`s.
        seeds: the seeds, each a run of every network.
        run_dir: the folder of the run folders.
        train_one: `fn(network, seed, run_folder)` -> the trainer's metrics.
        skip: run names not to train.
        verbose: print a line per run when > 0.

    Returns:
        ({run name: [best top-1 error (%) of each seed]}, the seconds the
        runs trained and evaluated, by their own clocks, so that a rerun
        that trains nothing reports what the runs took).
    """
    errors, seconds = {}, 0.0
    todo = [network for network in network_list if network.run_name not in skip]
    for number, network in enumerate(todo, 1):
        errors[network.run_name] = []
        for seed in seeds:
            folder = os.path.join(run_dir, run_folder_name(network.run_name, seed))
            if verbose:
                print(f"Network {number} of {len(todo)}, seed {seed}: {network.model} "
                      f"{network.model_kwargs or ''} in {folder}", flush=True)
            metrics = train_one(network, seed, folder)
            errors[network.run_name].append(100 * (1 - metrics["best"]["val_top1"]))
            seconds += metrics["seconds"]
    return errors, seconds


def _measured(values, reason):
    if values:
        mean, std = statistics.mean_and_std(values)
        return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"
    if reason:
        # The layer's message ends with "Received: <the sizes at fault>."
        return "not built: " + reason.rsplit("Received: ", 1)[-1].rstrip(".")
    return "not run"


def format_tables(rows, errors, reasons=None, measured_on="measured"):
    """The tables in the paper's form, the paper's figures beside the measured.

    Args:
        rows: `Row`s.
        errors: {run name: [top-1 error (%) of each seed]}.
        reasons: {run name: why it was not built}.
        measured_on: the header of the measured column.

    Returns:
        Markdown text: one table per paper table.
    """
    reasons = reasons or {}
    blocks = []
    for table in sorted({row.table for row in rows}):
        lines = [f"{TITLES[table]}", "",
                 f"| row | network | paper: top-1 err. (%), {PAPER_MODEL} | {measured_on} |",
                 "|---|---|---|---|"]
        for row in (row for row in rows if row.table == table):
            paper = f"{row.paper_error:.3f}" if row.paper_error is not None else "—"
            if row.paper_note:
                paper += f" ({row.paper_note})"
            measured = _measured(errors.get(row.run_name), reasons.get(row.run_name))
            lines.append(f"| {row.label} | {row.run_name} | {paper} | {measured} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


# Runners: how a network is configured and trained on one kind of data. ----


@dataclasses.dataclass(frozen=True)
class Runner:
    """`config_for(network, seed)` -> `RunConfig`; `train_one(network,
    seed, run_folder)` -> the trainer's metrics."""

    config_for: object
    train_one: object


def small_image_runner(data, recipe, strategy, options, script, arguments):
    """A `Runner` on a `small_data.LoadedSmallDataset`."""

    def config_for(network, seed=0):
        return runs.small_image_config(network.model, network.model_kwargs, data, recipe,
                                       seed, strategy, options, script, arguments)

    def train_one(network, seed, folder):
        return runs.train_small_images(config_for(network, seed), data, strategy,
                                       dataclasses.replace(options, run_dir=folder))

    return Runner(config_for, train_one)


def imagenet_runner(train_source, val_source, image_size, dataset, recipe, strategy,
                    options, script, arguments, fixed_steps_per_epoch=None):
    """A `Runner` on ImageNet-style sources (`runs.open_image_sources`)."""

    def config_for(network, seed=0):
        return runs.imagenet_config(network.model, network.model_kwargs, train_source,
                                    image_size, recipe, dataset, seed, strategy, options,
                                    script, arguments, fixed_steps_per_epoch)

    def train_one(network, seed, folder):
        return runs.train_imagenet(config_for(network, seed), strategy,
                                   dataclasses.replace(options, run_dir=folder),
                                   train_source, val_source)

    return Runner(config_for, train_one)
