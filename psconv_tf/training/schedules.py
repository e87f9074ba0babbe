"""The recipes' learning rate as a function of the optimizer step."""

import keras


def learning_rate_schedule(recipe, steps_per_epoch):
    """The recipe's learning rate as a function of the optimizer step.

    "cosine": 0.5 * peak * (1 + cos(pi * t / T)) over the T steps after an
    optional linear warm-up from zero; "step": the peak, multiplied by
    `decay_factor` from the first step of every epoch in `decay_epochs`.

    Args:
        recipe: a `configs.Recipe`.
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        A `keras.optimizers.schedules.LearningRateSchedule`.

    >>> from psconv_tf.training import configs
    >>> schedule = learning_rate_schedule(configs.CIFAR, steps_per_epoch=10)
    >>> [round(float(schedule(step)), 4) for step in (1469, 1470, 2220)]
    [0.1, 0.01, 0.001]
    """
    peak = recipe.scaled_learning_rate
    total_steps = recipe.epochs * steps_per_epoch
    if recipe.schedule == "cosine":
        warmup_steps = round(recipe.warmup_epochs * steps_per_epoch)
        if not warmup_steps:
            return keras.optimizers.schedules.CosineDecay(peak, total_steps)
        return keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - warmup_steps, warmup_target=peak, warmup_steps=warmup_steps
        )
    if not recipe.decay_epochs:
        # A schedule all the same, so that the optimizer's state (and a
        # backup of it) has the same variables whatever the recipe.
        return keras.optimizers.schedules.PiecewiseConstantDecay([total_steps], [peak, peak])
    # PiecewiseConstantDecay keeps values[i] while step <= boundaries[i].
    boundaries = [epoch * steps_per_epoch - 1 for epoch in recipe.decay_epochs]
    values = [peak * recipe.decay_factor**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
