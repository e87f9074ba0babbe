"""Trains a zoo model on ImageNet with the paper's recipe (§4.1).

The defaults are the paper's: SGD with momentum 0.9 and weight decay 1e-4
(coupled L2, as PyTorch applies it), batch 256 with learning rate 0.1,
scaled linearly with --batch-size, 120 epochs of half-cosine decay to zero
(optionally after --warmup-epochs of linear warm-up); per image a random crop
of 8%-100% of the area with an aspect ratio in [3/4, 4/3], resized to
224 x 224, and a random horizontal flip; evaluation on the central 224 x 224
of images resized to 256 on the shorter side, top-1 and top-5; the model of
the best validation top-1 is kept. No label smoothing or other extras.

Data (--data-dir, local or gs://):
- TFDS: a TFDS data folder with imagenet2012 (or another --dataset). TFDS
  builds imagenet2012 from image-net.org's ILSVRC2012_img_train.tar and
  ILSVRC2012_img_val.tar placed in DATA_DIR/downloads/manual/; this script
  prepares it on first use, or run `tfds build imagenet2012 --data_dir
  DATA_DIR` beforehand.
- Class folders: DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/
  <image> (JPEG or PNG); labels follow the sorted class names of train/.

Multi-worker: run the same command on every worker, with TF_CONFIG set;
each worker reads its own shard of the files. --run-dir must be readable by
all workers (gs:// or a shared disk): they resume from the chief's backup.

Run folder: config.json, best.keras, backup/, log.jsonl, logs/
(TensorBoard), metrics.json. Restarting the same command after the process
was killed (SIGTERM or SIGKILL, e.g. a preempted TPU VM) resumes at the
step of the last backup, in the same epoch and at the same learning rate.

    python training/imagenet.py --data-dir gs://bucket/tensorflow_datasets \\
        --model ps_resnet50 --strategy tpu --tpu my-tpu \\
        --run-dir gs://bucket/runs/ps_resnet50
"""

import argparse
import dataclasses
import os

import keras
import tensorflow as tf

import configs
import dataloaders
import train_lib
from configs import InputError
from psconv_tf import models

SOURCES = ("auto", "tfds", "folders")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", required=True,
        help="TFDS data folder, or a folder with train/ and val/ class folders",
    )
    parser.add_argument(
        "--source", default="auto", choices=SOURCES,
        help="tfds or folders; auto: folders if DATA_DIR/train exists, else tfds",
    )
    parser.add_argument("--dataset", default="imagenet2012",
                        help="TFDS data set name; default imagenet2012")
    parser.add_argument("--train-split", default="train",
                        help="TFDS training split; default train")
    parser.add_argument("--val-split", default="validation",
                        help="TFDS validation split; default validation")
    parser.add_argument("--image-size", type=int, default=224,
                        help="side of the training and evaluation crops; default 224")
    parser.add_argument(
        "--steps-per-epoch", type=int, default=None,
        help="optimizer steps per epoch; default: training images // --batch-size",
    )
    parser.add_argument("--warmup-epochs", type=float, default=0.0,
                        help="linear warm-up before the cosine decay; default 0")
    train_lib.add_model_arguments(parser, "ps_resnet50")
    train_lib.add_recipe_arguments(parser, configs.IMAGENET)
    train_lib.add_runtime_arguments(parser, "runs/imagenet")
    return parser


def image_sources(args):
    """(training, validation) `dataloaders.ImageSource`s for the arguments."""
    if not tf.io.gfile.isdir(args.data_dir):
        raise InputError(f"--data-dir: no folder {args.data_dir}.")
    source = args.source
    if source == "auto":
        has_train_folder = tf.io.gfile.isdir(os.path.join(args.data_dir, "train"))
        source = "folders" if has_train_folder else "tfds"
    if source == "folders":
        train = dataloaders.image_folder_source(os.path.join(args.data_dir, "train"))
        val = dataloaders.image_folder_source(
            os.path.join(args.data_dir, "val"), train.class_names
        )
        return train, val
    return (dataloaders.tfds_source(args.dataset, args.train_split, args.data_dir),
            dataloaders.tfds_source(args.dataset, args.val_split, args.data_dir))


def _steps_per_epoch(args, train_source, batch_size):
    if args.steps_per_epoch is not None:
        return args.steps_per_epoch
    if train_source.num_examples is None:
        raise InputError(
            "the size of the training split is unknown: pass --steps-per-epoch."
        )
    return train_source.num_examples // batch_size


def main(argv=None):
    args = build_parser().parse_args(argv)
    model_kwargs = train_lib.model_kwargs_from_args(args)
    recipe = train_lib.recipe_from_args(configs.IMAGENET, args,
                                        warmup_epochs=args.warmup_epochs)
    if args.image_size < 32:
        raise InputError(f"--image-size must be at least 32; got {args.image_size}.")
    strategy, options = train_lib.runtime_from_args(args)
    keras.utils.set_random_seed(args.seed)
    train_source, val_source = image_sources(args)
    size = args.image_size
    model_kwargs.update(num_classes=train_source.num_classes, input_shape=[size, size, 3])
    trainer = train_lib.Trainer(
        strategy, lambda: models.get(args.model, **model_kwargs), recipe,
        _steps_per_epoch(args, train_source, recipe.batch_size), options,
    )
    config = {
        "model": args.model,
        "model_kwargs": model_kwargs,
        "num_classes": train_source.num_classes,
        "image_size": size,
        "channels": 3,
        "preprocessing": {
            "input": "RGB pixels in [0, 255], normalized per channel: (x - mean) / std",
            "mean": list(dataloaders.IMAGENET_MEAN_RGB),
            "std": list(dataloaders.IMAGENET_STDDEV_RGB),
            "resize_shorter_side": round(size / dataloaders.CROP_FRACTION),
            "center_crop": size,
        },
        "class_names": list(train_source.class_names or []),
        "dataset": args.dataset if train_source.class_names is None else args.data_dir,
        "recipe": dataclasses.asdict(recipe),
        "seed": args.seed,
        "precision": options.precision,
        "jit_compile": options.jit_compile,
        "replicas": strategy.num_replicas_in_sync,
    }
    inputs = [dataloaders.imagenet_input(source, training, size, recipe.batch_size)
              for source, training in ((train_source, True), (val_source, False))]
    metrics = trainer.fit(*inputs, config)
    best = metrics["best"]
    path = os.path.join(train_lib.worker_output_dir(strategy, args.run_dir), "metrics.json")
    print(f"{args.model}: best validation top-1 {100 * best['val_top1']:.2f} % "
          f"(epoch {best['epoch'] + 1}); last epoch "
          + ", ".join(f"{name} {value:.4f}" for name, value in metrics["final"].items())
          + f"; metrics in {path}")
    return metrics


if __name__ == "__main__":
    train_lib.run_main(main)
