"""Scale allocation of trained PS models: docs/scale_allocation.md.

For every PS model of the given run folders (a quick run's RUN_DIR, whose
model folders it reads, or one model's run folder) it prints what was
trained (data set, training images, epochs, batch, seed, test top-1 where
the quick run recorded it) and `psconv_tf.scale_allocation`'s table: per PS
layer, the share of kernels and of kernel weight energy at each rate, at
initialization and after training. The initialization is the run's own
starting point: the model rebuilt from its config.json right after seeding
with its seed, as the training library builds it; the line under the
table says how far training moved the kernels from it
(||W - W_init|| / ||W_init|| over all PS kernels), the largest change of an
energy share (in a layer, and over the model) and how many kernels changed
rate.

    python training/quick_run.py --train-examples 4000 --run-dir /tmp/scales_qr
    python -m benchmarks.scale_allocation /tmp/scales_qr --write-docs

With --write-docs the tables replace the section between
`<!-- benchmark:scale_allocation -->` and its closing marker in
docs/scale_allocation.md, and the first model's plot is written to
docs/scale_allocation.png (each file whole or not at all).
"""

import argparse
import json
import os

import keras
import numpy as np

from benchmarks import report
from psconv_tf import scale_allocation as sa
from psconv_tf.classification import runs
from psconv_tf.inspection import ps_layers
from psconv_tf.runtime import run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "scale_allocation.md")
PLOT = os.path.join(ROOT, "docs", "scale_allocation.png")
SECTION = "scale_allocation"
DATASETS = {"fashion_mnist": "Fashion-MNIST"}


def model_folders(run_dir):
    """[(model folder, (test top-1, test images) or None)] of a quick run's
    RUN_DIR, or of one model's run folder."""
    if os.path.isfile(os.path.join(run_dir, "best.keras")):
        return [(run_dir, None)]
    summary_path = os.path.join(run_dir, "quick_run.json")
    if not os.path.isfile(summary_path):
        raise ValueError(f"{run_dir}: neither a model's run folder (best.keras) "
                         "nor a quick run's (quick_run.json)")
    with open(summary_path, encoding="utf-8") as file:
        summary = json.load(file)
    results = summary.get("results", {})
    return [(os.path.join(run_dir, name),
             (result["test_top1"], summary["test_examples"]) if "test_top1" in result else None)
            for name, result in results.items()
            if os.path.isfile(os.path.join(run_dir, name, "best.keras"))]


def describe_run(config, test):
    """What the run of `config` (a `RunConfig`) trained: a sentence and a
    short label."""
    data = DATASETS.get(config.dataset, config.dataset)
    epochs = config.recipe.epochs
    epochs_text = f"{epochs} epoch{'s' * (epochs != 1)}"
    line = (f"`{config.model}` trained on {data} ({config.train_examples:,} training "
            f"images, seeded subset, {config.image_size} x {config.image_size} x "
            f"{config.channels}), {epochs_text} at batch {config.recipe.batch_size}, "
            f"seed {config.seed}")
    if test is not None:
        line += f"; test top-1 {100 * test[0]:.2f} % on {test[1]:,} test images"
    short = (f"{config.model}: {data}, {config.train_examples:,} images, {epochs_text}, "
             f"seed {config.seed}")
    return line + ".", short


def starting_model(config):
    """The model the run of `config` started from: built as the training
    library builds it (`runs.build_model`) right after seeding with the
    run's seed, so it draws the same initial weights."""
    keras.utils.set_random_seed(config.seed)
    return runs.build_model(config)


def kernel_change(model, start):
    """||W - W_start|| / ||W_start|| over all PS kernels."""
    moved = total = 0.0
    for now, initial in zip(ps_layers(model), ps_layers(start)):
        now, initial = (np.asarray(layer.kernel.numpy(), np.float64) for layer in (now, initial))
        moved += float(np.sum((now - initial) ** 2))
        total += float(np.sum(initial ** 2))
    return (moved / total) ** 0.5


def changed_rates(model, start):
    """The number of kernels whose rate differs between the two models."""
    return sum(int(np.sum(now.dilation_matrix() != initial.dilation_matrix()))
               for now, initial in zip(ps_layers(model), ps_layers(start)))


def moved_text(allocations, initial, changed):
    """How far the shares moved: the largest change of an energy share in
    any layer and of the total's; `changed` kernels changed rate."""
    def largest(pairs):
        return max(abs(now.energy_shares[r] - start.energy_shares[r]) * 100
                   for now, start in pairs for r in now.kernels)

    pairs = [(a, b) for a, b in zip(allocations, initial)
             if a.problem is None and b.problem is None]
    return (f"the largest change of an energy share is {largest(pairs):.1f} points in a "
            f"layer and {largest([(sa.total(allocations), sa.total(initial))]):.1f} over "
            f"all layers; {changed} kernel(s) changed rate.")


def measure(run_dirs):
    """[(description, table, allocations, initial, title)] of every PS model."""
    results = []
    for run_dir in run_dirs:
        for folder, test in model_folders(run_dir):
            model = sa.load(folder)
            if not ps_layers(model):
                continue  # the standard twin
            config = run_config.read_config(folder)
            if config is None:
                raise ValueError(f"{folder}: no config.json, so no known training")
            description, short = describe_run(config, test)
            start = starting_model(config)
            allocations = sa.scale_allocation(model)
            initial = sa.scale_allocation(start)
            table = sa.format_table(allocations, initial)
            change = kernel_change(model, start)
            body = (f"{description}\n\n{table}\n\nTraining moved the PS kernels by "
                    f"||W - W_init|| / ||W_init|| = {change:.3f} from their initial values; "
                    f"{moved_text(allocations, initial, changed_rates(model, start))}")
            results.append((body, allocations, initial, short))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument(parser)
    args = parser.parse_args(argv)
    try:
        results = measure(args.run_dirs)
    except (ValueError, OSError, KeyError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if not results:
        parser.exit(2, f"{parser.prog}: error: no PS model in {', '.join(args.run_dirs)}\n")
    body = report.describe("benchmarks.scale_allocation") + "\n\n" + "\n\n".join(
        text for text, *_ in results)
    print(body)
    if args.write_docs:
        _, allocations, initial, title = results[0]
        sa.plot_scale_allocation(allocations, PLOT, initial, title=title, dpi=72)
        report.write_section(SECTION, body, path=PAGE)


if __name__ == "__main__":
    main()
