"""Training recipes: the paper's ImageNet (§4.1) and CIFAR (§4.2) settings.

A `Recipe` holds what the paper specifies (optimizer, schedule, length,
batch); the scripts start from one of the recipes below and override fields
from their command line with `dataclasses.replace`.

>>> recipe = dataclasses.replace(CIFAR, batch_size=64)
>>> recipe.scaled_learning_rate
0.05
"""

import dataclasses

from psconv_tf.runtime.recipe import Recipe

# §4.1: SGD 0.9, weight decay 1e-4, batch 256, LR 0.1, 120 epochs of half-cosine
# decay to zero.
IMAGENET = Recipe(
    epochs=120,
    batch_size=256,
    learning_rate=0.1,
    reference_batch_size=256,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="cosine",
)


# ResNeXt's CIFAR reference (train.lua): the fractions of the epochs after
# which the learning rate is divided by 10, then by 100.
CIFAR_DECAY_FRACTIONS = (0.49, 0.74)


def cifar_decay_epochs(epochs):
    """The epochs where ResNeXt's CIFAR reference code divides the LR by 10.

    Its rule, for the 1-based epoch n of N: the LR is divided by 10 once
    n / N > 0.49 and by 100 once n / N > 0.74. In this package's 0-based
    epochs (a drop at epoch e takes effect from e's first step) that is the
    first e with (e + 1) / N above each threshold: epochs 147 and 222 of
    300, not 150 and 225. A drop the rule puts at epoch 0 (N <= 2) is left
    out: the run starts at the peak.

    >>> cifar_decay_epochs(300)
    (147, 222)
    """
    drops = []
    for threshold in CIFAR_DECAY_FRACTIONS:
        first = next(e for e in range(epochs) if (e + 1) / epochs > threshold)
        if first > 0 and first not in drops:
            drops.append(first)
    return tuple(drops)


# §4.2 follows the original ResNeXt CIFAR recipe (Xie et al. 2017, whose code
# uses Nesterov momentum): batch 128, LR 0.1, weight decay 5e-4, 300 epochs,
# LR / 10 when epoch / 300 passes 0.49 and 0.74 (from epochs 147 and 222,
# 0-based).
CIFAR = Recipe(
    epochs=300,
    batch_size=128,
    learning_rate=0.1,
    reference_batch_size=128,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="step",
    decay_epochs=cifar_decay_epochs(300),
)

# The quick run: the CIFAR recipe cut to one epoch on a subset, with a warm-up
# and a cosine decay, at batch 32 (LR 0.1 x 32 / 128). On a 2-core CPU the
# number of steps is what limits accuracy: for the same 32,000 images seen,
# ResNet-20 reached 84.7 % on Fashion-MNIST at batch 32 and 80.8 % at 128.
QUICK = Recipe(
    epochs=1,
    batch_size=32,
    learning_rate=0.1,
    reference_batch_size=128,
    momentum=0.9,
    weight_decay=5e-4,
    schedule="cosine",
    warmup_epochs=0.25,
)


# Detection's 1x schedule (mmdet's `schedule_1x`, RetinaNet): SGD 0.9,
# coupled weight decay 1e-4, LR 0.01 at 16 images, 500 steps of linear
# warm-up from 1/3 x (the PSConv authors' configs/psconv/*_1x.py: warmup
# 'linear', warmup_iters=500, warmup_ratio=1.0 / 3; mmcv's linear warm-up is
# ratio + (1 - ratio) * i / 500), 12 epochs with LR / 10 at epochs 8 and 11
# (scaled with the epochs: `schedules.scaled_milestones`), gradients clipped
# to 35.
COCO_1X = Recipe(
    epochs=12,
    batch_size=16,
    learning_rate=0.01,
    reference_batch_size=16,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="step",
    decay_epochs=(8, 11),
    warmup_steps=500,
    warmup_ratio=1.0 / 3.0,
    clip_norm=35.0,
)


# The segmentation example: Adam (AdamW without decay), 1e-3 at batch 16,
# constant, 8 epochs.
SEGMENTATION = Recipe(
    epochs=8,
    batch_size=16,
    learning_rate=1e-3,
    reference_batch_size=16,
    weight_decay=0.0,
    schedule="step",
    optimizer="adamw",
)


@dataclasses.dataclass(frozen=True)
class QuickRun:
    """The offline quick run: a PS model and its standard twin, same data.

    Attributes:
        models: zoo names trained one after the other.
        dataset: a small-image dataset name (see `small_data.SMALL_DATASETS`).
        train_examples: size of the (fixed, seeded) training subset.
        recipe: the optimization recipe.
        seed: seed of the subset, the initialization and the augmentation.
    """

    models: tuple = ("ps_cifar_resnet20", "cifar_resnet20")
    dataset: str = "fashion_mnist"
    train_examples: int = 24000
    recipe: Recipe = QUICK
    seed: int = 0
