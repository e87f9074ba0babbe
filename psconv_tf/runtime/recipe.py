"""The optimization recipe of a run: `Recipe`, what `config.json` holds of it.

A `Recipe` holds what the paper specifies (optimizer, schedule, length,
batch); the named recipes (the paper's ImageNet and CIFAR settings) are in
`psconv_tf.training.configs`.

>>> recipe = Recipe(epochs=10, batch_size=64, learning_rate=0.1, reference_batch_size=128)
>>> recipe.scaled_learning_rate
0.05
"""

import dataclasses
import math
from typing import Optional

SCHEDULES = ("cosine", "step")
OPTIMIZERS = ("sgd", "adamw")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """SGD with momentum, coupled L2 weight decay and a learning-rate schedule.

    Attributes:
        epochs: passes over the training set.
        batch_size: the global batch, all replicas together.
        learning_rate: peak learning rate at `reference_batch_size`; the
            learning rate used is scaled linearly with `batch_size`.
        reference_batch_size: the batch size `learning_rate` is given for.
        momentum: SGD momentum.
        nesterov: Nesterov momentum (the ResNeXt CIFAR recipe's).
        weight_decay: L2 coefficient added to the gradient as
            `torch.optim.SGD(weight_decay=...)` does (see
            `optimizer.CoupledWeightDecaySGD`).
        schedule: `"cosine"` (half cosine from the peak to zero over the
            epochs after warm-up) or `"step"` (multiplied by `decay_factor`
            at the start of every epoch in `decay_epochs`).
        warmup_epochs: for `"cosine"`, a linear warm-up from zero to the peak.
        decay_epochs: for `"step"`, the epochs where the learning rate drops.
        decay_factor: for `"step"`, the factor of each drop.
        warmup_steps: for `"step"`, optimizer steps of linear warm-up from
            `warmup_ratio` times the peak (mmdet's 1x schedule).
        warmup_ratio: for `"step"`, where that warm-up starts, in [0, 1).
        optimizer: `"sgd"` (with momentum and coupled weight decay, the
            recipes') or `"adamw"` (decoupled decay; short runs from scratch).
        clip_norm: the global gradient norm is clipped to it, or None.
    """

    epochs: int
    batch_size: int
    learning_rate: float
    reference_batch_size: int
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    decay_epochs: tuple = ()
    decay_factor: float = 0.1
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    optimizer: str = "sgd"
    clip_norm: Optional[float] = None

    def __post_init__(self):
        for name in ("learning_rate", "momentum", "weight_decay", "warmup_epochs",
                     "decay_factor", "warmup_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(
                    f"`{name}` must be a finite number. Received: {name}={value!r}"
                )
        for name in ("epochs", "batch_size", "reference_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"`{name}` must be a positive integer. Received: {name}={value!r}"
                )
        if self.learning_rate <= 0:
            raise ValueError(
                "`learning_rate` must be positive. "
                f"Received: learning_rate={self.learning_rate!r}"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(
                f"`momentum` must be in [0, 1). Received: momentum={self.momentum!r}"
            )
        if self.weight_decay < 0:
            raise ValueError(
                "`weight_decay` must be non-negative. "
                f"Received: weight_decay={self.weight_decay!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"`schedule` must be one of {SCHEDULES}. "
                f"Received: schedule={self.schedule!r}"
            )
        if not 0 < self.decay_factor <= 1:
            raise ValueError(
                "`decay_factor` must be in (0, 1]. "
                f"Received: decay_factor={self.decay_factor!r}"
            )
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                "`warmup_epochs` must be in [0, epochs). Received: "
                f"warmup_epochs={self.warmup_epochs!r}, epochs={self.epochs}"
            )
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError(
                "`warmup_epochs` applies to the cosine schedule only. "
                f"Received: warmup_epochs={self.warmup_epochs!r}, "
                f"schedule={self.schedule!r}"
            )
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) \
                or self.warmup_steps < 0:
            raise ValueError(
                "`warmup_steps` must be 0 or more. "
                f"Received: warmup_steps={self.warmup_steps!r}"
            )
        if self.warmup_steps and self.schedule != "step":
            raise ValueError(
                "`warmup_steps` applies to the step schedule only (the cosine one "
                f"takes warmup_epochs). Received: warmup_steps={self.warmup_steps!r}, "
                f"schedule={self.schedule!r}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(
                "`warmup_ratio` must be in [0, 1). "
                f"Received: warmup_ratio={self.warmup_ratio!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"`optimizer` must be one of {OPTIMIZERS}. "
                f"Received: optimizer={self.optimizer!r}"
            )
        if self.clip_norm is not None and not (
                isinstance(self.clip_norm, (int, float)) and math.isfinite(self.clip_norm)
                and self.clip_norm > 0):
            raise ValueError(
                "`clip_norm` must be a positive number or None. "
                f"Received: clip_norm={self.clip_norm!r}"
            )
        if list(self.decay_epochs) != sorted(set(self.decay_epochs)) or any(
            not 0 < epoch < self.epochs for epoch in self.decay_epochs
        ):
            raise ValueError(
                f"`decay_epochs` must be increasing epochs in (0, {self.epochs}). "
                f"Received: decay_epochs={self.decay_epochs!r}"
            )

    @property
    def scaled_learning_rate(self):
        """The peak learning rate for `batch_size` (linear scaling rule)."""
        return self.learning_rate * self.batch_size / self.reference_batch_size
