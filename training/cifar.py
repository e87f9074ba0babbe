"""Trains ResNeXt-29 and PS-ResNeXt-29 on CIFAR-100, as the paper's §4.2.

The original ResNeXt CIFAR recipe, which the paper follows: SGD with
momentum 0.9 and weight decay 5e-4 (coupled L2, as PyTorch), batch 128,
learning rate 0.1 divided by 10 at epochs 150 and 225 of 300; zero padding of
4 pixels, a random crop of the original size and a random horizontal flip,
then per-channel standardization with the training set's mean and standard
deviation. `--seeds N` trains N seeds and prints the mean and standard
deviation of the final top-1 test error, as the paper's Table 6.

Data: cifar10, cifar100 or fashion_mnist, from local files in --data-dir
(CIFAR's python-pickle batches, as unpacked from cifar-10-python.tar.gz or
cifar-100-python.tar.gz; Fashion-MNIST's four IDX files, .gz or not) or else
from TFDS (--data-dir is then TFDS's data folder; it downloads when online).

    python training/cifar.py --dataset cifar100 --data-dir ~/data \\
        --model ps_resnext29_8x64d --seeds 5 --run-dir runs/ps_resnext29_8x64d

Each seed's run folder is RUN_DIR/seed_<seed> (config.json, best.keras,
log.jsonl, logs/, metrics.json, backup/); RUN_DIR/summary.json has the
errors of all seeds. Restarting the same command resumes where it stopped.
"""

import argparse
import dataclasses
import os

import keras
import numpy as np

import configs
import dataloaders
import train_lib
from configs import InputError
from psconv_tf import models


@dataclasses.dataclass(frozen=True)
class SmallData:
    """A small-image data set in memory, with its standardization statistics.

    Attributes:
        name: key of `dataloaders.SMALL_DATASETS`.
        train, test: (uint8 images [n, h, w, c], int labels [n]).
        mean, stddev: per-channel statistics of the whole training set.
    """

    name: str
    train: tuple
    test: tuple
    mean: tuple
    stddev: tuple

    @property
    def num_classes(self):
        return dataloaders.SMALL_DATASETS[self.name].num_classes

    @property
    def image_shape(self):
        return dataloaders.SMALL_DATASETS[self.name].image_shape


def load_data(name, data_dir=None, train_examples=None, seed=0, download=True):
    """Loads a small-image data set, optionally a seeded training subset.

    Args:
        name: "cifar10", "cifar100" or "fashion_mnist".
        data_dir: local files or TFDS data folder (see
            `dataloaders.load_small_dataset`).
        train_examples: train on this many images, drawn at random with
            `seed`; all when None. The statistics use the whole set.
        seed: seed of the subset.
        download: whether TFDS may download.

    Returns:
        `SmallData`.
    """
    splits = dataloaders.load_small_dataset(name, data_dir, download)
    images, labels = splits["train"]
    mean, stddev = dataloaders.channel_stats(images)
    if train_examples is not None:
        if not 0 < train_examples <= len(images):
            raise InputError(
                f"--train-examples must be in [1, {len(images)}]; got {train_examples}."
            )
        subset = np.random.default_rng(seed).permutation(len(images))[:train_examples]
        images, labels = images[subset], labels[subset]
    return SmallData(name, (images, labels), splits["test"],
                     tuple(mean.tolist()), tuple(stddev.tolist()))


def train_model(model_name, model_kwargs, data, recipe, strategy, options, seed):
    """Trains one zoo model on a `SmallData` and returns its metrics.

    Args:
        model_name: a name of `psconv_tf.models.list_models()`.
        model_kwargs: extra zoo arguments (pattern, cyclic).
        data: `SmallData`.
        recipe: `configs.Recipe`.
        strategy: `tf.distribute.Strategy`.
        options: `train_lib.RunOptions`.
        seed: seed of the initialization and the augmentation.

    Returns:
        The metrics dict of `train_lib.Trainer.fit`.
    """
    keras.utils.set_random_seed(seed)
    model_kwargs = dict(model_kwargs, num_classes=data.num_classes,
                        input_shape=list(data.image_shape))
    train_images, train_labels = data.train
    steps_per_epoch = len(train_images) // recipe.batch_size
    trainer = train_lib.Trainer(
        strategy, lambda: models.get(model_name, **model_kwargs), recipe,
        steps_per_epoch, options,
    )
    inputs = {
        training: dataloaders.small_image_input(
            *(data.train if training else data.test), data.mean, data.stddev,
            training=training, global_batch_size=recipe.batch_size,
        )
        for training in (True, False)
    }
    config = {
        "model": model_name,
        "model_kwargs": model_kwargs,
        "num_classes": data.num_classes,
        "image_size": data.image_shape[0],
        "channels": data.image_shape[2],
        "preprocessing": {
            "input": "uint8 pixels, standardized per channel: (x - mean) / std",
            "mean": list(data.mean),
            "std": list(data.stddev),
        },
        "dataset": data.name,
        "train_examples": len(train_images),
        "recipe": dataclasses.asdict(recipe),
        "seed": seed,
        "precision": options.precision,
        "jit_compile": options.jit_compile,
        "replicas": strategy.num_replicas_in_sync,
    }
    return trainer.fit(inputs[True], inputs[False], config)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="cifar100",
                        choices=sorted(dataloaders.SMALL_DATASETS),
                        help="data set; default cifar100")
    parser.add_argument(
        "--data-dir", default=None,
        help="folder of the local files (or of the folder their archive "
             "unpacks to), else TFDS's data folder; default: TFDS's",
    )
    parser.add_argument("--train-examples", type=int, default=None,
                        help="train on a seeded random subset of this size")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train this many seeds, --seed, --seed + 1, ...; default 1")
    train_lib.add_model_arguments(parser, "ps_resnext29_8x64d")
    train_lib.add_recipe_arguments(parser, configs.CIFAR)
    parser.add_argument(
        "--decay-epochs", default=None,
        help="comma-separated epochs where the learning rate drops by 10; "
             "default: at 50%% and 75%% of --epochs (150,225 of 300)",
    )
    train_lib.add_runtime_arguments(parser, "runs/cifar")
    return parser


def _recipe(args):
    if args.decay_epochs is None:
        halves = (args.epochs // 2, args.epochs * 3 // 4)
        decay_epochs = tuple(sorted({epoch for epoch in halves if epoch > 0}))
    else:
        try:
            decay_epochs = tuple(int(epoch) for epoch in args.decay_epochs.split(","))
        except ValueError:
            raise InputError(
                f"--decay-epochs: comma-separated integers expected; got {args.decay_epochs!r}."
            ) from None
    return train_lib.recipe_from_args(configs.CIFAR, args, decay_epochs=decay_epochs)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.seeds <= 0:
        raise InputError(f"--seeds must be a positive integer; got {args.seeds}.")
    model_kwargs = train_lib.model_kwargs_from_args(args)
    recipe = _recipe(args)
    strategy, options = train_lib.runtime_from_args(args)
    data = load_data(args.dataset, args.data_dir, args.train_examples, args.seed)
    errors = []
    for seed in range(args.seed, args.seed + args.seeds):
        seed_options = dataclasses.replace(
            options, run_dir=os.path.join(args.run_dir, f"seed_{seed}")
        )
        metrics = train_model(args.model, model_kwargs, data, recipe, strategy,
                              seed_options, seed)
        errors.append(100 * (1 - metrics["final"]["top1"]))
    # Sample standard deviation over seeds (0 for a single seed).
    summary = {
        "model": args.model,
        "dataset": args.dataset,
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "top1_error_percent": errors,
        "mean": float(np.mean(errors)),
        "std": float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0,
    }
    path = os.path.join(train_lib.worker_output_dir(strategy, args.run_dir), "summary.json")
    train_lib.write_json(path, summary)
    print(
        f"{args.model} on {args.dataset}: final top-1 error "
        f"{summary['mean']:.2f} ± {summary['std']:.2f} % over {len(errors)} seed(s); "
        f"summary in {path}"
    )
    return summary


if __name__ == "__main__":
    train_lib.run_main(main)
