"""The recipes' learning rate as a function of the optimizer step.

One module for every task's schedule: the half cosine (with an optional
linear warm-up in epochs), and the step schedule, optionally after a linear
warm-up in steps (detection's 1x schedule); `scaled_milestones` places a
step schedule's drops for another number of epochs.
"""

import keras


def learning_rate_schedule(recipe, steps_per_epoch):
    """The recipe's learning rate as a function of the optimizer step.

    "cosine": 0.5 * peak * (1 + cos(pi * t / T)) over the T steps after an
    optional linear warm-up from zero; "step": the peak, multiplied by
    `decay_factor` from the first step of every epoch in `decay_epochs`,
    and, over the first `warmup_steps`, by a factor rising linearly from
    `warmup_ratio` to 1.

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
    boundaries = [epoch * steps_per_epoch for epoch in recipe.decay_epochs]
    if recipe.warmup_steps:
        return WarmupPiecewise(peak, boundaries, recipe.warmup_steps, recipe.warmup_ratio,
                               recipe.decay_factor)
    if not boundaries:
        # A schedule all the same, so that the optimizer's state (and a
        # backup of it) has the same variables whatever the recipe.
        return keras.optimizers.schedules.PiecewiseConstantDecay([total_steps], [peak, peak])
    # PiecewiseConstantDecay keeps values[i] while step <= boundaries[i].
    values = [peak * recipe.decay_factor**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [boundary - 1 for boundary in boundaries], values)


def scaled_milestones(milestones, reference_epochs, epochs):
    """A step schedule's drops for `epochs` instead of `reference_epochs`:
    each milestone m becomes floor(m * epochs / reference_epochs), those
    not inside (0, epochs) left out (mmdet's 2x schedule is the 1x one's
    drops so scaled: 8, 11 of 12 become 16, 22 of 24).

    >>> scaled_milestones((8, 11), 12, 24), scaled_milestones((8, 11), 12, 6)
    ((16, 22), (4, 5))
    """
    scaled = (milestone * epochs // reference_epochs for milestone in milestones)
    return tuple(sorted({epoch for epoch in scaled if 0 < epoch < epochs}))


@keras.saving.register_keras_serializable(package="psconv_tf")
class WarmupPiecewise(keras.optimizers.schedules.LearningRateSchedule):
    """`peak`, multiplied by `factor` from each boundary step on, after a
    linear warm-up from `warmup_ratio * peak` over `warmup_steps` steps."""

    def __init__(self, peak, boundaries, warmup_steps, warmup_ratio, factor=0.1):
        self.peak = float(peak)
        self.boundaries = [int(b) for b in boundaries]
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.factor = float(factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        drops = sum(keras.ops.cast(step >= b, "float32") for b in self.boundaries)
        rate = self.peak * keras.ops.power(self.factor, drops)
        if self.warmup_steps > 0:
            progress = keras.ops.minimum(step / self.warmup_steps, 1.0)
            rate *= self.warmup_ratio + (1.0 - self.warmup_ratio) * progress
        return rate

    def get_config(self):
        return dict(peak=self.peak, boundaries=self.boundaries, warmup_steps=self.warmup_steps,
                    warmup_ratio=self.warmup_ratio, factor=self.factor)
