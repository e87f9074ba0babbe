"""The recipes' optimizer: SGD with PyTorch's (coupled) weight decay, or AdamW."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="psconv_training")
class CoupledWeightDecaySGD(keras.optimizers.SGD):
    """SGD whose weight decay is an L2 term in the gradient, as PyTorch's.

    `torch.optim.SGD(weight_decay=wd)`, which the paper's recipes use, adds
    `wd * w` to the gradient of every weight before the momentum ("coupled"
    decay). Keras's `SGD(weight_decay=wd)` instead shrinks every weight by
    `learning_rate * wd * w` outside the momentum ("decoupled"), which with
    momentum 0.9 decays about ten times less than the recipes specify. This
    optimizer adds `coupled_weight_decay * w` to the gradient of every
    trainable weight (BatchNorm scales and biases included, as PyTorch's
    default) and then takes Keras's momentum step (plain or Nesterov).

    Keras's momentum step (m = momentum * m - lr * g; w += m) equals
    PyTorch's (b = momentum * b + g; w -= lr * b) while the learning rate
    is constant; after a change of learning rate the two differ only while
    the momentum of earlier steps fades (0.9 ** k after k steps).

    Args:
        learning_rate: float or `keras.optimizers.schedules` schedule.
        momentum: float in [0, 1).
        coupled_weight_decay: L2 coefficient added to the gradient.
        **kwargs: other arguments of `keras.optimizers.SGD` (e.g. nesterov).

    Example:

    >>> optimizer = CoupledWeightDecaySGD(0.1, momentum=0.9, coupled_weight_decay=1e-4)
    >>> weight = keras.Variable([1.0])
    >>> optimizer.apply([keras.ops.convert_to_tensor([0.0])], [weight])
    >>> round(float(weight.numpy()[0]), 6)  # 1 - 0.1 * (0 + 1e-4 * 1)
    0.99999
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, coupled_weight_decay=0.0,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        if not (isinstance(coupled_weight_decay, (int, float))
                and math.isfinite(coupled_weight_decay) and coupled_weight_decay >= 0):
            raise ValueError(
                "Argument `coupled_weight_decay` must be a finite non-negative number. "
                f"Received: coupled_weight_decay={coupled_weight_decay}"
            )
        self.coupled_weight_decay = coupled_weight_decay

    def update_step(self, gradient, variable, learning_rate):
        decay = ops.cast(self.coupled_weight_decay, variable.dtype)
        gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(decay, variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "coupled_weight_decay": self.coupled_weight_decay}


def build_optimizer(recipe, learning_rate, precision="float32"):
    """The recipe's optimizer; wrapped in a `LossScaleOptimizer` for mixed_float16.

    Args:
        recipe: a `configs.Recipe` (optimizer, momentum, nesterov, weight
            decay, gradient clipping).
        learning_rate: a float or a schedule (see `schedules`).
        precision: the Keras dtype policy of the run.
    """
    clipping = {} if recipe.clip_norm is None else {"global_clipnorm": recipe.clip_norm}
    if recipe.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(
            learning_rate, weight_decay=recipe.weight_decay, **clipping)
    else:
        optimizer = CoupledWeightDecaySGD(
            learning_rate,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            coupled_weight_decay=recipe.weight_decay,
            **clipping,
        )
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
