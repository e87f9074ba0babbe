"""Trains ResNeXt-29 and PS-ResNeXt-29 on CIFAR-100, as the paper's §4.2.

The original ResNeXt CIFAR recipe, which the paper follows: SGD with
Nesterov momentum 0.9 and weight decay 5e-4 (coupled L2, as PyTorch), batch
128, learning rate 0.1 divided by 10 when epoch / 300 passes 0.49 and 0.74
(from epochs 147 and 222, 0-based, as the reference code's rule); per-channel
standardization with the training set's mean and standard deviation, then
zero padding of 4 pixels (the mean colour once standardized), a random crop
of the original size and a random horizontal flip. `--seeds N` trains N seeds and prints the mean
and standard deviation of the top-1 test error, both of the final epoch and
of the best epoch (the reference code's figure), as the paper's Table 6.

Data: cifar10, cifar100 or fashion_mnist, from local files in --data-dir
(CIFAR's python batches, as unpacked from cifar-10-python.tar.gz or
cifar-100-python.tar.gz, read without running any code a file may hold;
Fashion-MNIST's four IDX files, .gz or not) or else from TFDS (--data-dir
is then TFDS's data folder; it downloads when online).

    python training/cifar.py --dataset cifar100 --data-dir ~/data \\
        --model ps_resnext29_8x64d --seeds 5

Each seed's run folder is RUN_DIR/seed_<seed> (default RUN_DIR:
runs/<dataset>_<model>; config.json, best.keras, log.jsonl, logs/,
metrics.json, backup/); RUN_DIR/summary.json has the errors of all seeds.
A RUN_DIR holding other files is refused (--force-run-dir adds the run's
files among them); one run at a time writes it. Restarting the same command
resumes where it stopped (Ctrl-C and SIGTERM stop at the next step, saving
a backup); finished seeds are left as they are.
"""

import argparse
import dataclasses
import os

from psconv_tf.runtime import files
from psconv_tf.classification import runs
from psconv_tf.training import cli
from psconv_tf.training import configs
from psconv_tf.runtime import ownership
from psconv_tf.runtime import run_config
from psconv_tf.runtime import statistics
from psconv_tf.classification import small_data
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import writing
from psconv_tf.training.run_log import summary_line
from psconv_tf.runtime.strategy import worker_output_dir

SCRIPT = "cifar"
SUMMARY_FILE = "summary.json"
# RUN_DIR: a folder of seed run folders and the summary.
KIND = ownership.Kind("cifar seeds", entries=(SUMMARY_FILE, run_config.WORKERS_DIR),
                      child=run_config.KIND, peers=run_config.WORKERS_DIR)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="cifar100",
                        choices=sorted(small_data.SMALL_DATASETS),
                        help="data set; default cifar100")
    parser.add_argument(
        "--data-dir", default=None,
        help="folder of the local files (or of the folder their archive "
             "unpacks to), else TFDS's data folder; default: TFDS's",
    )
    parser.add_argument("--train-examples", type=cli.positive_int, default=None,
                        help="train on a seeded random subset of this size")
    parser.add_argument("--seeds", type=cli.positive_int, default=1,
                        help="train this many seeds, --seed, --seed + 1, ...; default 1")
    cli.add_model_arguments(parser, "ps_resnext29_8x64d")
    cli.add_recipe_arguments(parser, configs.CIFAR,
                             default_decay="when epoch / --epochs passes 0.49 and 0.74, as "
                                           "ResNeXt's CIFAR code (147,222 of 300)")
    cli.add_runtime_arguments(parser, "runs/<dataset>_<model>")
    return parser


def main(argv=None):
    args = cli.parse_args(build_parser(), argv, SCRIPT)
    if args.seed + args.seeds - 1 > cli.MAX_SEED:
        raise InputError(f"--seed {args.seed} with {args.seeds} seeds passes {cli.MAX_SEED}.",
                         argument="seeds")
    model_kwargs = cli.model_kwargs_from_args(args)
    recipe = cli.recipe_from_args(configs.CIFAR, args, configs.cifar_decay_epochs)
    run_dir = args.run_dir or os.path.join("runs", f"{args.dataset}_{args.model}")
    strategy, options = cli.runtime_from_args(args, run_dir)
    seeds = list(range(args.seed, args.seed + args.seeds))
    ownership.check(run_dir, KIND, args.force_run_dir,
                    [f"seed_{seed}" for seed in seeds])  # before reading the data
    data = small_data.load_data(args.dataset, args.data_dir, args.train_examples, args.seed)
    errors = {"final": [], "best": []}
    output_dir = worker_output_dir(strategy, run_dir)
    with ownership.claim(output_dir, KIND, [f"seed_{seed}" for seed in seeds],
                         args.force_run_dir, chief_path=run_dir) as claim:
        claim.remove_temporaries()
        for number, seed in enumerate(seeds, 1):
            seed_dir = os.path.join(run_dir, f"seed_{seed}")
            if args.verbose:
                print(f"Seed {seed} ({number} of {len(seeds)}): {args.model} on "
                      f"{args.dataset} in {seed_dir}", flush=True)
            config = runs.small_image_config(
                args.model, model_kwargs, data, recipe, seed, strategy, options, SCRIPT,
                cli.replay_arguments(args))
            metrics = runs.train_small_images(
                config, data, strategy, dataclasses.replace(options, run_dir=seed_dir))
            if args.verbose:
                print(summary_line(metrics, seed_dir), flush=True)
            errors["final"].append(100 * (1 - metrics["final"]["top1"]))
            errors["best"].append(100 * (1 - metrics["best"]["val_top1"]))
        summary = {"model": args.model, "dataset": args.dataset, "seeds": seeds}
        for kind, values in errors.items():
            mean, std = statistics.mean_and_std(values)
            summary[f"{kind}_top1_error_percent"] = {"values": values, "mean": mean, "std": std}
        path = os.path.join(output_dir, SUMMARY_FILE)
        with writing(path):
            files.write_json(path, summary)
    final, best = summary["final_top1_error_percent"], summary["best_top1_error_percent"]
    print(f"{args.model} on {args.dataset}, top-1 error over {len(seeds)} seed(s): "
          f"final {final['mean']:.2f} ± {final['std']:.2f} %, "
          f"best {best['mean']:.2f} ± {best['std']:.2f} %; summary in {path}")
    return summary


if __name__ == "__main__":
    cli.run_main(main)
