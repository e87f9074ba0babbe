"""Classification runs: the steps of an epoch, one rule for every kind of run."""

import dataclasses
import types

import numpy as np
import pytest

from psconv_tf.classification import runs
from psconv_tf.classification import small_data
from psconv_tf.runtime.errors import InputError
from psconv_tf.training import configs
from psconv_tf.training.run_options import RunOptions

pytestmark = pytest.mark.tensorflow


def _small_images(count):
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), np.uint8)
    labels = np.arange(count) % 10
    return small_data.LoadedSmallDataset("cifar10", (images, labels), (images[:4], labels[:4]),
                                         (120.0, 121.0, 122.0), (60.0, 61.0, 62.0))


def _config(data, batch_size):
    recipe = dataclasses.replace(configs.QUICK, batch_size=batch_size)
    return runs.small_image_config(
        "cifar_resnet20", {}, data, recipe, seed=0,
        strategy=types.SimpleNamespace(num_replicas_in_sync=1),
        options=RunOptions(run_dir="unused", precision="float32", jit_compile=False),
        script="cifar", arguments={})


def _steps_trained(monkeypatch, train_function, *arguments):
    """The steps per epoch that `train_function` hands to the trainer."""
    handed = []
    monkeypatch.setattr(runs, "train", lambda config, strategy, options, train_input,
                        eval_input, steps, callbacks=(): handed.append(steps))
    train_function(*arguments)
    return handed[0]


def test_steps_per_epoch_rule():
    assert runs.steps_per_epoch(100, 32) == 3
    assert runs.steps_per_epoch(100, 32, fixed=7) == 7
    assert runs.steps_per_epoch(None, 32, fixed=7) == 7
    with pytest.raises(InputError, match="size of the training split is unknown") as error:
        runs.steps_per_epoch(None, 32)
    assert error.value.argument == "steps_per_epoch"


def test_small_image_run_honours_the_configured_steps_per_epoch(monkeypatch):
    data = _small_images(40)
    config = _config(data, batch_size=8)
    assert config.steps_per_epoch == 5  # 40 images // 8
    assert _steps_trained(monkeypatch, runs.train_small_images, config, data, None, None) == 5
    # A config.json that fixes its own steps (a replay, a shortened run) is
    # trained as it says, not as the data's size would.
    fixed = dataclasses.replace(config, steps_per_epoch=3)
    assert _steps_trained(monkeypatch, runs.train_small_images, fixed, data, None, None) == 3


def test_imagenet_run_counts_steps_from_its_training_images(monkeypatch):
    data = _small_images(40)
    config = dataclasses.replace(_config(data, batch_size=8), steps_per_epoch=None,
                                 train_examples=20)
    monkeypatch.setattr(runs.image_data, "imagenet_input", lambda *arguments: None)
    assert _steps_trained(monkeypatch, runs.train_imagenet, config, None, None, None, None) == 2
