"""Training a zoo classifier from a `RunConfig`: ImageNet-style and small images.

The training scripts are thin layers over these functions; each takes a
complete `RunConfig`, so a run is the same whether it starts from the
command line, from a replayed config.json or from Python.
"""

import os

import keras
import tensorflow as tf

from psconv_tf import models
from psconv_tf.classification import image_data
from psconv_tf.classification import preprocessing
from psconv_tf.classification import small_data
from psconv_tf.runtime import statistics
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.run_config import Preprocessing
from psconv_tf.runtime.run_config import RunConfig
from psconv_tf.training.trainer import Trainer

SOURCES = ("auto", "tfds", "folders")


def train(config, strategy, options, train_input, eval_input, steps_per_epoch, callbacks=()):
    """Builds the config's model and trains it (see `Trainer.fit`).

    Args:
        config: `RunConfig`.
        strategy: `tf.distribute.Strategy`.
        options: `trainer.RunOptions`.
        train_input, eval_input: `dataset_fn(input_context)`s.
        steps_per_epoch: optimizer steps per epoch.
        callbacks: `keras.callbacks.Callback`s for the loop.

    Returns:
        The metrics dict of `Trainer.fit`.
    """
    keras.utils.set_random_seed(config.seed)
    trainer = Trainer(strategy, lambda: build_model(config), config.recipe,
                      steps_per_epoch, options)
    return trainer.fit(train_input, eval_input, config, callbacks=callbacks)


def build_model(config):
    """The config's zoo model; a model its arguments cannot build is an
    `InputError` (e.g. a pattern whose length does not divide the channels)."""
    try:
        return models.get(config.model, **config.model_arguments())
    except ValueError as error:
        arguments = ", ".join(f"{name}={value}" for name, value in config.model_kwargs.items())
        raise InputError(
            f"{config.model} cannot be built with {arguments or 'its defaults'}: {error}",
            argument="pattern" if "pattern" in config.model_kwargs else "model",
        ) from None


# ImageNet-style images ------------------------------------------------------


def open_image_sources(data_dir, source="auto", dataset="imagenet2012",
                       train_split="train", val_split="validation"):
    """(training, validation) `image_data.ImageSource`s.

    Args:
        data_dir: a folder with train/ and val/ class folders, or a TFDS
            data folder.
        source: "folders", "tfds", or "auto" (folders if data_dir/train
            exists).
        dataset, train_split, val_split: for TFDS.
    """
    if source not in SOURCES:
        raise InputError(f"must be one of {', '.join(SOURCES)}; got {source!r}.",
                         argument="source")
    if not tf.io.gfile.isdir(data_dir):
        raise InputError(f"no folder {data_dir}.", argument="data_dir")
    if source == "auto":
        source = "folders" if tf.io.gfile.isdir(os.path.join(data_dir, "train")) else "tfds"
    if source == "folders":
        train = image_data.image_folder_source(os.path.join(data_dir, "train"))
        val = image_data.image_folder_source(os.path.join(data_dir, "val"), train.class_names)
        return train, val
    return (image_data.tfds_source(dataset, train_split, data_dir),
            image_data.tfds_source(dataset, val_split, data_dir))


def imagenet_preprocessing(image_size):
    """The `Preprocessing` of ImageNet-style runs at `image_size`."""
    return Preprocessing(
        mean=statistics.IMAGENET_MEAN_RGB, std=statistics.IMAGENET_STDDEV_RGB,
        resize_shorter_side=round(image_size / preprocessing.CROP_FRACTION),
        center_crop=image_size,
    )


def steps_per_epoch(train_examples, batch_size, fixed=None):
    """Optimizer steps per epoch: `fixed` where given (a config's or the
    command line's `steps_per_epoch`), else the training images // batch_size.

    Raises:
        InputError: (argument "steps_per_epoch") nothing fixes it and the
            size of the training split is unknown.
    """
    if fixed is not None:
        return fixed
    if train_examples is None:
        raise InputError("the size of the training split is unknown; give it explicitly.",
                         argument="steps_per_epoch")
    return train_examples // batch_size


def imagenet_config(model, model_kwargs, train_source, image_size, recipe, dataset, seed,
                    strategy, options, script, arguments, fixed_steps_per_epoch=None):
    """The `RunConfig` of a run on ImageNet-style sources.

    Args:
        model, model_kwargs: zoo name and extra arguments (pattern, cyclic).
        train_source: the training `image_data.ImageSource`.
        image_size: side of the training and evaluation crops.
        recipe: `configs.Recipe`.
        dataset: the TFDS name; class folders are named by `data_dir`.
        seed: seed of the initialization and augmentation.
        strategy, options: where and how it runs.
        script, arguments: the command and its arguments, for replays.
        fixed_steps_per_epoch: steps per epoch, else the training images //
            batch size.
    """
    return RunConfig(
        model=model,
        model_kwargs=model_kwargs,
        num_classes=train_source.num_classes,
        image_size=image_size,
        channels=3,
        recipe=recipe,
        dataset=dataset,
        preprocessing=imagenet_preprocessing(image_size),
        class_names=tuple(train_source.class_names or ()),
        train_examples=train_source.num_examples,
        steps_per_epoch=steps_per_epoch(
            train_source.num_examples, recipe.batch_size, fixed_steps_per_epoch),
        seed=seed,
        **options.config_fields(strategy),
        script=script,
        arguments=arguments,
    )


def train_imagenet(config, strategy, options, train_source, val_source, callbacks=()):
    """Trains on ImageNet-style sources; undecodable images are skipped.

    `config.steps_per_epoch` or `config.train_examples` must be set (see
    `steps_per_epoch`).
    """
    inputs = [image_data.imagenet_input(source, training, config.image_size,
                                        config.recipe.batch_size)
              for source, training in ((train_source, True), (val_source, False))]
    steps = steps_per_epoch(config.train_examples, config.recipe.batch_size,
                            config.steps_per_epoch)
    return train(config, strategy, options, *inputs, steps, callbacks)


# Small images ---------------------------------------------------------------


def small_data_preprocessing(data):
    """The `Preprocessing` of a `small_data.LoadedSmallDataset`: its own statistics."""
    return Preprocessing(mean=data.mean, std=data.stddev)


def small_image_config(model, model_kwargs, data, recipe, seed, strategy, options,
                       script, arguments):
    """The `RunConfig` of a run on a `small_data.LoadedSmallDataset`.

    Args:
        model, model_kwargs: zoo name and extra arguments (pattern, cyclic).
        data: `small_data.LoadedSmallDataset`.
        recipe: `configs.Recipe`.
        seed: seed of the initialization and augmentation.
        strategy, options: where and how it runs.
        script, arguments: the command and its arguments, for replays.
    """
    return RunConfig(
        model=model,
        model_kwargs=model_kwargs,
        num_classes=data.num_classes,
        image_size=data.image_shape[0],
        channels=data.image_shape[2],
        recipe=recipe,
        dataset=data.name,
        preprocessing=small_data_preprocessing(data),
        train_examples=len(data.train[0]),
        steps_per_epoch=steps_per_epoch(len(data.train[0]), recipe.batch_size),
        seed=seed,
        **options.config_fields(strategy),
        script=script,
        arguments=arguments,
    )


def train_small_images(config, data, strategy, options, callbacks=()):
    """Trains on a `small_data.LoadedSmallDataset` (pad-crop-flip, standardized).

    Args:
        config: `RunConfig`, whose preprocessing is `data`'s statistics.
        data: `small_data.LoadedSmallDataset`.
        strategy, options, callbacks: see `train`.
    """
    batch_size = config.recipe.batch_size
    steps = steps_per_epoch(len(data.train[0]), batch_size, config.steps_per_epoch)
    inputs = [
        small_data.small_image_input(
            *(data.train if training else data.test), config.preprocessing.mean,
            config.preprocessing.std, training=training, global_batch_size=batch_size,
        )
        for training in (True, False)
    ]
    return train(config, strategy, options, *inputs, steps, callbacks)
