"""A small semantic segmentation example: keras-hub's DeepLabV3 on a zoo
backbone, trained on the generated shapes (`synthetic.generate`), scored by
mean IoU, through the one `Trainer` with the run folder of every training
script (--run-dir, default runs/segmentation: resumable, refusing other
settings, --config replays; best.keras of the best validation mean IoU).

    python -m psconv_tf.detection.segmentation --data-dir data/shapes \
        --model resnet18 --epochs 8

The data set is generated into --data-dir when that folder has no train/:
only into a new or empty folder, or one it generated before (marked by its
psconv_run.json), holding the folder's lock meanwhile, so that neither
another run nor the user's files are overwritten.
"""

import argparse
import dataclasses
import glob
import os

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from psconv_tf.detection import input_pipeline
from psconv_tf.detection import synthetic
from psconv_tf.hub import PSResNetBackbone
from psconv_tf.runtime import ownership
from psconv_tf.runtime.errors import InputError
from psconv_tf.training import cli
from psconv_tf.training import configs
from psconv_tf.runtime import run_config
from psconv_tf.runtime.run_config import Preprocessing
from psconv_tf.runtime.run_config import RunConfig
from psconv_tf.training.run_log import summary_line
from psconv_tf.training.trainer import Trainer

NUM_CLASSES = len(synthetic.CLASSES) + 1  # and the background
SCRIPT = "segmentation"
DEFAULT_RUN_DIR = "runs/segmentation"
# A segmentation run folder: the files of a classification one (`run_config`).
KIND = dataclasses.replace(run_config.KIND, name="segmentation")
SPLIT_FOLDERS = ("train", "val", "train_masks", "val_masks", "annotations")
# Written last by `synthetic.generate`: the data set is complete.
LAST_FILE = os.path.join("annotations", "instances_val.json")
# A folder of generated data (see the module's docstring).
DATA_KIND = ownership.Kind(
    "generated shapes", entries=SPLIT_FOLDERS, owned_folders=SPLIT_FOLDERS,
    evidence=lambda path: os.path.isfile(os.path.join(path, LAST_FILE)))


def prepare_data(data_dir, image_size, seed=0):
    """Generates the shapes into `data_dir` unless it holds a data set
    (train/ and val/, the user's or a complete generated one).

    Raises:
        InputError: the folder holds other files, is in use, or is a file.
    """
    generated = ownership.is_run_folder(data_dir, DATA_KIND)
    complete = os.path.isfile(os.path.join(data_dir, LAST_FILE))
    if os.path.isdir(os.path.join(data_dir, "train")) and (complete or not generated):
        return
    with ownership.claim(data_dir, DATA_KIND) as claim:
        claim.remove_temporaries()
        synthetic.generate(data_dir, image_size=image_size, max_size=int(image_size * 0.55),
                           min_size=8, seed=seed)


def build_segmenter(backbone, num_classes=NUM_CLASSES):
    """DeepLabV3+ (ASPP on P5 at rates 6/12/18, decoder on P2) on `backbone`,
    a `PSResNetBackbone` or zoo name."""
    if isinstance(backbone, str):
        backbone = PSResNetBackbone.from_zoo(backbone)
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=backbone,
        spatial_pyramid_pooling_key="P5",
        low_level_feature_key="P2",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
        image_shape=backbone.image_shape,
    )
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab, num_classes=num_classes)


def dataset(image_dir, mask_dir, image_size, batch_size, training, seed=0):
    """(normalized image, mask) batches of the JPEG/PNG pairs, resized to
    image_size x image_size (masks by nearest neighbour) and randomly flipped
    for training; DeepLabV3's upsampling needs the static size."""
    images = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    masks = [os.path.join(mask_dir, os.path.basename(p)[:-4] + ".png") for p in images]
    missing = [m for m in masks if not os.path.isfile(m)]
    if not images or missing:
        raise FileNotFoundError(
            f"{image_dir}: {'no .jpg images' if not images else f'no mask {missing[0]}'}"
        )

    def load(image_path, mask_path):
        image = tf.cast(tf.io.decode_jpeg(tf.io.read_file(image_path), channels=3), tf.float32)
        mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
        image = tf.image.resize(image, (image_size, image_size))
        mask = tf.image.resize(mask, (image_size, image_size), method="nearest")
        if training:
            flip = tf.random.uniform([], seed=seed) < 0.5
            image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
            mask = tf.cond(flip, lambda: tf.reverse(mask, [1]), lambda: mask)
        mean, std = input_pipeline.IMAGENET_MEAN_RGB, input_pipeline.IMAGENET_STDDEV_RGB
        image = (image - mean) / std
        return image, mask

    data = tf.data.Dataset.from_tensor_slices((images, masks))
    if training:
        data = data.shuffle(len(images), seed=seed)
    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def mean_iou(segmenter, batches, num_classes=NUM_CLASSES):
    """Mean over classes of intersection / union of predicted and true masks."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for images, masks in batches:
        predicted = np.argmax(segmenter(images, training=False), axis=-1).ravel()
        truth = np.asarray(masks).ravel()
        confusion += np.bincount(truth * num_classes + predicted,
                                 minlength=num_classes**2).reshape(num_classes, num_classes)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return float(np.mean(intersection[union > 0] / union[union > 0]))


class SegmentationTrainer(Trainer):
    """The `Trainer` with a per-pixel cross-entropy and mean IoU (see `Trainer`)."""

    MONITOR = "mean_iou"
    KIND = KIND

    def create_metrics(self):
        return [keras.metrics.Mean(name="loss"),
                keras.metrics.MeanIoU(self.model.output_shape[-1], name="mean_iou",
                                      sparse_y_pred=False)]

    def per_example_loss(self, labels, outputs, images):
        pixels = keras.losses.sparse_categorical_crossentropy(labels, outputs, from_logits=True)
        return tf.reduce_mean(pixels, axis=[1, 2])

    def update_metrics(self, metrics, labels, outputs, per_example_loss):
        metrics[0].update_state(per_example_loss)
        metrics[1].update_state(labels[..., 0], outputs)


def _dataset_fn(paths, image_size, batch_size, training, seed):
    def dataset_fn(context):
        data = dataset(*paths, image_size, context.get_per_replica_batch_size(batch_size),
                       training=training, seed=seed)
        if context.num_input_pipelines > 1:
            data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
        return data.repeat() if training else data

    return dataset_fn


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True,
                        help="folder of the generated data (written if absent); required")
    parser.add_argument("--image-size", type=cli.positive_int, default=128,
                        help="side the images are resized to (and generated at); default 128")
    cli.add_model_arguments(parser, "resnet18")
    cli.add_recipe_arguments(parser, configs.SEGMENTATION, default_decay="none")
    cli.add_runtime_arguments(parser, DEFAULT_RUN_DIR)
    return parser


def main(argv=None):
    args = cli.parse_args(build_parser(), argv, SCRIPT)
    model_kwargs = cli.model_kwargs_from_args(args, backbone=True)
    if args.image_size < 32:
        raise InputError(f"must be at least 32; got {args.image_size}", argument="image_size")
    recipe = cli.recipe_from_args(configs.SEGMENTATION, args, lambda epochs: ())
    run_dir = args.run_dir or DEFAULT_RUN_DIR
    strategy, options = cli.runtime_from_args(args, run_dir)
    ownership.check(run_dir, KIND, args.force_run_dir)  # before the data
    prepare_data(args.data_dir, args.image_size, args.seed)
    paths = {split: (os.path.join(args.data_dir, split),
                     os.path.join(args.data_dir, split + "_masks"))
             for split in ("train", "val")}
    try:  # read once here: a missing image or mask is named now
        dataset(*paths["val"], args.image_size, 1, training=False)
        train_examples = len(dataset(*paths["train"], args.image_size, 1, training=False))
    except FileNotFoundError as error:
        raise InputError(str(error), argument="data_dir") from None
    size = args.image_size
    config = RunConfig(
        model=args.model, model_kwargs=model_kwargs, num_classes=NUM_CLASSES,
        image_size=size, channels=3, recipe=recipe, dataset=args.data_dir,
        preprocessing=Preprocessing(input_pipeline.IMAGENET_MEAN_RGB,
                                    input_pipeline.IMAGENET_STDDEV_RGB),
        class_names=("background", *synthetic.CLASSES), train_examples=train_examples,
        steps_per_epoch=max(1, train_examples // recipe.batch_size), seed=args.seed,
        **options.config_fields(strategy), script=SCRIPT,
        arguments=cli.replay_arguments(args),
    )
    keras.utils.set_random_seed(args.seed)
    trainer = SegmentationTrainer(
        strategy, lambda: build_segmenter(PSResNetBackbone.from_zoo(
            args.model, image_shape=(size, size, 3), **model_kwargs)),
        recipe, config.steps_per_epoch, options)
    metrics = trainer.fit(
        _dataset_fn(paths["train"], size, recipe.batch_size, True, args.seed),
        _dataset_fn(paths["val"], size, recipe.batch_size, False, args.seed), config)
    print(summary_line(metrics, run_dir))
    return metrics


if __name__ == "__main__":
    cli.run_main(main)
