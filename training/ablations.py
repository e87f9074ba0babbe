"""The paper's ablations, Tables 3-5, as one command.

Trains every row of Table 3 (cyclic interval t = 1, 2, 4, 8, 16, 32), Table 4
(dilation patterns {1,1,1,1}, {1,2,1,1}, {1,4,1,1}, {1,2,1,2}, {1,2,1,4},
{1,2,4,8}) and Table 5 (the rates of {1,2,1,4} shifting along the input
channels, the filters, or both) on one data set at one budget, for each of
--seeds seeds, and prints the tables in the paper's form beside the paper's
top-1 errors (PS-ResNet-50 on ImageNet; psconv_tf.classification.ablations
says how each row maps to a network). Rows that define the same network
share its runs; a row the model cannot have (a cycle longer than a layer's
channels) is named, not trained.

Data: --dataset fashion_mnist (the default, offline: --data-dir, else
Debian's /usr/share/datasets/fashion-mnist, else a copy TFDS has prepared),
cifar10 or cifar100 (local python batches in --data-dir, else TFDS), or
imagenet (--data-dir with train/ and val/ class folders, or a TFDS data
folder). The recipe is the quick run's (one epoch, batch 32, warm-up and
cosine decay) unless flags change it; the best epoch's top-1 error is
reported, as the paper does.

    python training/ablations.py --train-examples 4000 --seeds 2
    python training/ablations.py --dataset imagenet --data-dir ~/imagenet \\
        --model ps_resnet50 --epochs 120 --batch-size 256 --warmup-epochs 0

Writes RUN_DIR/<network>_seed<seed>/ (a run folder each) and
RUN_DIR/ablations.json. Rerunning the command resumes an unfinished run and
leaves finished ones as they are; --write-docs also puts the tables into
docs/ablations.md.
"""

import argparse
import os
import platform
import sys
import time

from psconv_tf.classification import ablations
from psconv_tf.classification import runs
from psconv_tf.classification import small_data
from psconv_tf.runtime import doc_sections
from psconv_tf.runtime import files
from psconv_tf.runtime import ownership
from psconv_tf.runtime import run_config
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import writing
from psconv_tf.runtime.strategy import worker_output_dir
from psconv_tf.training import cli
from psconv_tf.training import configs

SCRIPT = "ablations"
RESULTS_FILE = "ablations.json"
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "docs", "ablations.md")
DOCS_SECTION = "ablations"
DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagenet")
# RUN_DIR: a folder of run folders and the tables.
KIND = ownership.Kind("ablations", entries=(RESULTS_FILE, run_config.WORKERS_DIR),
                      child=run_config.KIND, peers=run_config.WORKERS_DIR)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", choices=DATASETS,
                        help="data set; default fashion_mnist")
    parser.add_argument(
        "--data-dir", default=None,
        help="folder of the data set's files (imagenet: train/ and val/ class folders or "
             f"a TFDS data folder); fashion_mnist defaults to {small_data.DEBIAN_FASHION_MNIST}")
    parser.add_argument("--model", default="ps_cifar_resnet20", metavar="NAME",
                        help="the PS zoo model of the rows (its standard twin is the "
                             "baseline); default ps_cifar_resnet20")
    parser.add_argument("--tables", default=ablations.TABLES, type=cli.int_list,
                        help="comma-separated tables to run; default 3,4,5")
    parser.add_argument("--seeds", type=cli.positive_int, default=1,
                        help="train every network with this many seeds, --seed, --seed + 1, "
                             "...; default 1")
    parser.add_argument("--train-examples", type=cli.positive_int, default=None,
                        help="small data sets: train on a seeded subset of this size")
    parser.add_argument("--test-examples", type=cli.positive_int, default=None,
                        help="small data sets: evaluate on a seeded subset of this size")
    parser.add_argument("--image-size", type=cli.positive_int, default=224,
                        help="imagenet: training and evaluation crop; default 224")
    parser.add_argument("--steps-per-epoch", type=cli.positive_int, default=None,
                        help="imagenet: steps per epoch; default the training images "
                             "// --batch-size")
    parser.add_argument("--write-docs", nargs="?", const=DOCS, default=None, metavar="PAGE",
                        help="also write the tables into PAGE (default docs/ablations.md) "
                             f"between its {doc_sections.markers(DOCS_SECTION)[0]} markers")
    cli.add_recipe_arguments(parser, configs.QUICK,
                             default_decay="when epoch / --epochs passes 0.49 and 0.74")
    cli.add_runtime_arguments(parser, "runs/ablations")
    return parser


def _runner(args, recipe, strategy, options):
    # Where the tables go is no setting of the runs.
    arguments = {name: value for name, value in cli.replay_arguments(args).items()
                 if name != "write_docs"}
    if args.dataset == "imagenet":
        if args.data_dir is None:
            raise InputError("is required for imagenet.", argument="data_dir")
        train_source, val_source = runs.open_image_sources(args.data_dir)
        dataset = "imagenet2012" if train_source.class_names is None else args.data_dir
        description = (f"{dataset}, {train_source.num_examples} training and "
                       f"{val_source.num_examples} validation images")
        return description, ablations.imagenet_runner(
            train_source, val_source, args.image_size, dataset, recipe, strategy, options,
            SCRIPT, arguments, args.steps_per_epoch), train_source.num_examples
    data_dir = args.data_dir
    if data_dir is None and args.dataset == "fashion_mnist" and os.path.isdir(
            small_data.DEBIAN_FASHION_MNIST):
        data_dir = small_data.DEBIAN_FASHION_MNIST
    data = small_data.load_data(args.dataset, data_dir, args.train_examples, args.seed,
                                download=args.dataset != "fashion_mnist",
                                test_examples=args.test_examples)
    names = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
    description = (f"{names[args.dataset]}, {len(data.train[0])} training and "
                   f"{len(data.test[0])} test images")
    return description, ablations.small_image_runner(
        data, recipe, strategy, options, SCRIPT, arguments), len(data.train[0])


def main(argv=None):
    args = cli.parse_args(build_parser(), argv, SCRIPT)
    started = time.time()
    cli.check_model_name(args.model)
    if not args.model.startswith("ps_"):
        raise InputError(f"must be a PS model (ps_...), got {args.model!r}.", argument="model")
    if args.seed + args.seeds - 1 > cli.MAX_SEED:
        raise InputError(f"--seed {args.seed} with {args.seeds} seeds passes {cli.MAX_SEED}.",
                         argument="seeds")
    rows = ablations.rows_of(args.tables)
    networks = ablations.networks(rows, args.model)
    seeds = list(range(args.seed, args.seed + args.seeds))
    recipe = cli.recipe_from_args(configs.QUICK, args, configs.cifar_decay_epochs)
    run_dir = args.run_dir or os.path.join("runs", "ablations")
    strategy, options = cli.runtime_from_args(args, run_dir)
    folders = [ablations.run_folder_name(network.run_name, seed)
               for network in networks for seed in seeds]
    ownership.check(run_dir, KIND, args.force_run_dir, folders)  # before reading the data
    description, runner, train_examples = _runner(args, recipe, strategy, options)
    reasons = ablations.unbuildable(networks, runner.config_for)
    output_dir = worker_output_dir(strategy, run_dir)
    with ownership.claim(output_dir, KIND, folders, args.force_run_dir,
                         chief_path=run_dir) as claim:
        claim.remove_temporaries()
        errors, seconds = ablations.train_networks(
            networks, seeds, run_dir, runner.train_one, skip=reasons, verbose=args.verbose)
        twin = " and its standard twin" * any(not n.model_kwargs for n in networks)
        budget = (f"{description}; {args.model}{twin}; {recipe.epochs} "
                  f"epoch{'s' * (recipe.epochs != 1)} at batch {recipe.batch_size} "
                  f"({recipe.schedule} schedule); seeds {', '.join(map(str, seeds))}")
        summary = {
            "budget": budget, "model": args.model, "dataset": args.dataset,
            "train_examples": train_examples, "seeds": seeds,
            "rows": [{"table": row.table, "row": row.label, "network": row.run_name,
                      "paper_top1_error": row.paper_error,
                      "top1_errors": errors.get(row.run_name),
                      "not_built": reasons.get(row.run_name)} for row in rows],
            "run_seconds": round(seconds, 1),
            "wall_seconds": round(time.time() - started, 1),
        }
        path = os.path.join(output_dir, RESULTS_FILE)
        with writing(path):
            files.write_json(path, summary)
    measured = f"measured: best top-1 err. (%){', mean ± std' * (len(seeds) > 1)}"
    tables = ablations.format_tables(rows, errors, reasons, measured)
    print(f"\n{budget}:\n\n{tables}\nTotal wall time {summary['wall_seconds']:.0f} s "
          f"(the runs trained and evaluated for {seconds:.0f} s); results in {path}")
    if args.write_docs:
        command = "python training/ablations.py " + " ".join(
            arg for arg in (argv if argv is not None else sys.argv[1:])
            if not arg.startswith("--write-docs"))
        body = (f"`{command.strip()}`\n\n{budget}; {os.cpu_count()} CPU cores "
                f"({platform.machine()}), {seconds:.0f} s of training and evaluation "
                f"in all:\n\n{tables}")
        doc_sections.write_section(args.write_docs, DOCS_SECTION, body)
        print(f"wrote the tables to {args.write_docs}")
    return summary


if __name__ == "__main__":
    cli.run_main(main)
