"""The quick run: PS-ResNet-20 against ResNet-20 on Fashion-MNIST, offline.

Trains `ps_cifar_resnet20` and its standard twin `cifar_resnet20` one after
the other on the same seeded subset of Fashion-MNIST's training set (24,000
of 60,000 images) with the same recipe (configs.QUICK: the CIFAR recipe cut
to one epoch at batch 32, with a warm-up and a cosine decay), evaluates both
on the whole test set (10,000 images) and prints their accuracies side by
side. It takes about four minutes on a 2-core CPU and needs no network.

The 28 x 28 x 1 images go to the models as they are: the CIFAR ResNets have
no fixed input size (their stages run at 28, 14 and 7 pixels here), so
nothing is padded or resized; the augmentation is CIFAR's (4-pixel zero
padding, random 28 x 28 crop, random flip).

Data, first found: --data-dir; the IDX files of Debian's package
dataset-fashion-mnist (/usr/share/datasets/fashion-mnist); a copy TFDS has
already prepared (TFDS is not asked to download).

    python training/quick_run.py [--epochs 1] [--train-examples 24000]

Writes RUN_DIR/<model>/ (a run folder each, see psconv_tf.runtime.run_config)
and RUN_DIR/quick_run.json; a RUN_DIR holding other files is refused
(--force-run-dir adds the run's files among them).
"""

import argparse
import dataclasses
import os
import time

from psconv_tf.runtime import files
from psconv_tf.classification import runs
from psconv_tf.training import cli
from psconv_tf.training import configs
from psconv_tf.runtime import ownership
from psconv_tf.runtime import run_config
from psconv_tf.classification import small_data
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import writing
from psconv_tf.runtime.strategy import worker_output_dir

SCRIPT = "quick_run"
DEBIAN_FASHION_MNIST = small_data.DEBIAN_FASHION_MNIST
RESULTS_FILE = "quick_run.json"
# RUN_DIR: a folder of the models' run folders and the comparison.
KIND = ownership.Kind("quick run", entries=(RESULTS_FILE, run_config.WORKERS_DIR),
                      child=run_config.KIND, peers=run_config.WORKERS_DIR)


def build_parser():
    defaults = configs.QuickRun()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=None,
        help="folder of Fashion-MNIST's IDX files (train-images-idx3-ubyte.gz, "
             f"...); default {DEBIAN_FASHION_MNIST} if present, else TFDS's copy",
    )
    parser.add_argument(
        "--models", default=",".join(defaults.models),
        help=f"comma-separated zoo models; default {','.join(defaults.models)}",
    )
    parser.add_argument(
        "--train-examples", type=cli.positive_int, default=defaults.train_examples,
        help=f"seeded training subset (of 60,000); default {defaults.train_examples}",
    )
    cli.add_recipe_arguments(parser, defaults.recipe, default_decay="none")
    cli.add_runtime_arguments(parser, "runs/quick_run")
    parser.set_defaults(seed=defaults.seed)
    return parser


def _data_dir(data_dir):
    if data_dir is None and os.path.isdir(DEBIAN_FASHION_MNIST):
        return DEBIAN_FASHION_MNIST
    return data_dir


def _model_names(text):
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise InputError("names no model; give comma-separated zoo models.", argument="models")
    if not all(names):
        raise InputError(f"has an empty name in {text!r}.", argument="models")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"names {repeated[0]} twice.", argument="models")
    for name in names:
        cli.check_model_name(name, argument="models")
    return names


def main(argv=None):
    args = cli.parse_args(build_parser(), argv, SCRIPT)
    started = time.time()
    model_names = _model_names(args.models)
    recipe = cli.recipe_from_args(configs.QUICK, args, lambda epochs: ())
    run_dir = args.run_dir or os.path.join("runs", "quick_run")
    strategy, options = cli.runtime_from_args(args, run_dir)
    ownership.check(run_dir, KIND, args.force_run_dir, model_names)  # before reading the data
    data = small_data.load_data("fashion_mnist", _data_dir(args.data_dir),
                                args.train_examples, args.seed, download=False)
    results = {}
    output_dir = worker_output_dir(strategy, run_dir)
    with ownership.claim(output_dir, KIND, model_names, args.force_run_dir,
                         chief_path=run_dir) as claim:
        claim.remove_temporaries()
        for number, name in enumerate(model_names, 1):
            model_dir = os.path.join(run_dir, name)
            if args.verbose:
                print(f"Training {name} ({number} of {len(model_names)}) in {model_dir}",
                      flush=True)
            config = runs.small_image_config(
                name, {}, data, recipe, args.seed, strategy, options, SCRIPT,
                cli.replay_arguments(args))
            metrics = runs.train_small_images(
                config, data, strategy, dataclasses.replace(options, run_dir=model_dir))
            results[name] = {"test_top1": metrics["final"]["top1"],
                             "seconds": metrics["seconds"]}
        summary = {
            "dataset": "fashion_mnist",
            "train_examples": len(data.train[0]),
            "test_examples": len(data.test[0]),
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "results": results,
            "wall_seconds": round(time.time() - started, 1),
        }
        path = os.path.join(output_dir, RESULTS_FILE)
        with writing(path):
            files.write_json(path, summary)
    print(f"\nFashion-MNIST, {summary['train_examples']} training images, "
          f"{recipe.epochs} epoch{'s' * (recipe.epochs != 1)}, "
          f"test set of {summary['test_examples']}:")
    print("| model | test top-1 | training + evaluation |")
    print("|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {100 * result['test_top1']:.2f} % | {result['seconds']:.0f} s |")
    print(f"Total wall time {summary['wall_seconds']:.0f} s; results in {path}")
    return summary


if __name__ == "__main__":
    cli.run_main(main)
