"""Trains a zoo model on ImageNet with the paper's recipe (§4.1).

The defaults are the paper's: SGD with momentum 0.9 and weight decay 1e-4
(coupled L2, as PyTorch applies it), batch 256 with learning rate 0.1,
scaled linearly with --batch-size, 120 epochs of half-cosine decay to zero
(optionally after --warmup-epochs of linear warm-up; --schedule step drops
it by --decay-factor at --decay-epochs instead, by default every 30 epochs,
the step-wise schedule of the paper's detection backbones); per image a
random crop of 8%-100% of the area with an aspect ratio in [3/4, 4/3],
resized to 224 x 224, and a random horizontal flip; evaluation on the
central 224 x 224 of images resized to 256 on the shorter side, top-1 and
top-5; the model of the best validation top-1 is kept. No label smoothing or
other extras.

Data (--data-dir, local or gs://):
- TFDS: a TFDS data folder with imagenet2012 (or another --dataset). TFDS
  builds imagenet2012 from image-net.org's ILSVRC2012_img_train.tar and
  ILSVRC2012_img_val.tar placed in DATA_DIR/downloads/manual/; this script
  prepares it on first use, or run `tfds build imagenet2012 --data_dir
  DATA_DIR` beforehand.
- Class folders: DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/
  <image> (JPEG or PNG); labels follow the sorted class names of train/.
An image that cannot be decoded is skipped, named in the log and counted in
metrics.json; --check-images lists all of them before training.

Multi-worker: run the same command on every worker, with TF_CONFIG set;
each worker reads its own shard of the files. --run-dir must be readable by
all workers (gs:// or a shared disk): they resume from the chief's backup.

Run folder (default runs/<model>): psconv_run.json (what the run writes
there), config.json, best.keras, backup/, log.jsonl, logs/ (TensorBoard),
metrics.json; a folder holding other files is refused (--force-run-dir adds
the run's files among them), and one run at a time writes it. Ctrl-C or
SIGTERM stops at the next step, saving a backup and saying where; rerunning
the same command then (or after a kill, e.g. a preempted TPU VM) resumes at
the step of the last backup, in the same epoch and at the same learning
rate; a restart with other settings is refused, and a finished run is left
as it is. --config RUN/config.json replays a run's settings.

    python training/imagenet.py --data-dir gs://bucket/tensorflow_datasets \\
        --model ps_resnet50 --strategy tpu --tpu my-tpu \\
        --run-dir gs://bucket/runs/ps_resnet50
"""

import argparse
import os

from psconv_tf.classification import runs
from psconv_tf.training import cli
from psconv_tf.training import configs
from psconv_tf.classification import image_data
from psconv_tf.runtime import ownership
from psconv_tf.runtime import run_config
from psconv_tf.runtime.errors import InputError
from psconv_tf.training.run_log import summary_line

SCRIPT = "imagenet"
DECAY_EVERY = 30


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=None,
        help="TFDS data folder, or a folder with train/ and val/ class folders (required)",
    )
    parser.add_argument(
        "--source", default="auto", choices=runs.SOURCES,
        help="tfds or folders; auto: folders if DATA_DIR/train exists, else tfds; default auto",
    )
    parser.add_argument("--dataset", default="imagenet2012",
                        help="TFDS data set name; default imagenet2012")
    parser.add_argument("--train-split", default="train",
                        help="TFDS training split; default train")
    parser.add_argument("--val-split", default="validation",
                        help="TFDS validation split; default validation")
    parser.add_argument("--image-size", type=cli.positive_int, default=224,
                        help="side of the training and evaluation crops; default 224")
    parser.add_argument(
        "--steps-per-epoch", type=cli.positive_int, default=None,
        help="optimizer steps per epoch; default: training images // --batch-size",
    )
    parser.add_argument(
        "--check-images", action="store_true",
        help="decode every image before training and list those that fail "
             "(they are skipped either way)",
    )
    cli.add_model_arguments(parser, "ps_resnet50")
    cli.add_recipe_arguments(parser, configs.IMAGENET,
                             default_decay=f"every {DECAY_EVERY} epochs")
    cli.add_runtime_arguments(parser, "runs/<model>")
    return parser


def _decay_epochs(epochs):
    return range(DECAY_EVERY, epochs, DECAY_EVERY)


def _check_images(sources):
    """Lists the undecodable images of both splits; returns the sources without them."""
    checked = []
    for split, source in zip(("train", "val"), sources):
        bad = image_data.scan_images(source)
        print(f"{split}: {len(bad)} of {source.num_examples} images cannot be decoded"
              + "".join(f"\n  {name}" for name in bad), flush=True)
        if bad and len(bad) == source.num_examples:
            raise InputError(f"no {split} image can be decoded ({len(bad)} of "
                             f"{len(bad)} fail).", argument="data_dir")
        checked.append(source.without(bad) if bad else source)
    return checked


def main(argv=None):
    args = cli.parse_args(build_parser(), argv, SCRIPT)
    if args.data_dir is None:
        raise InputError("is required (a TFDS data folder or class folders).",
                         argument="data_dir")
    if args.image_size < 32:
        raise InputError(f"must be at least 32; got {args.image_size}.", argument="image_size")
    model_kwargs = cli.model_kwargs_from_args(args)
    recipe = cli.recipe_from_args(configs.IMAGENET, args, _decay_epochs)
    run_dir = args.run_dir or os.path.join("runs", args.model)
    strategy, options = cli.runtime_from_args(args, run_dir)
    ownership.check(run_dir, run_config.KIND, args.force_run_dir)  # before reading the data
    sources = runs.open_image_sources(
        args.data_dir, args.source, args.dataset, args.train_split, args.val_split)
    if args.check_images:
        sources = _check_images(sources)
    train_source, val_source = sources
    config = runs.imagenet_config(
        args.model, model_kwargs, train_source, args.image_size, recipe,
        args.dataset if train_source.class_names is None else args.data_dir, args.seed,
        strategy, options, SCRIPT, cli.replay_arguments(args), args.steps_per_epoch)
    metrics = runs.train_imagenet(config, strategy, options, train_source, val_source)
    print(summary_line(metrics, run_dir))
    return metrics


if __name__ == "__main__":
    cli.run_main(main)
