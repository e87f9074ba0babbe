"""MMDetection's training protocol where it is a formula.

Linear warm-up (mmcv's `LrUpdaterHook.get_warmup_lr`, warmup="linear"): at
iteration i < warmup_iters the learning rate is the regular one times
1 - (1 - i / warmup_iters) * (1 - warmup_ratio), i.e.
ratio + (1 - ratio) * i / warmup_iters, and the regular one from
warmup_iters on. The PSConv authors' detection configs use warmup_iters=500
and warmup_ratio=1/3 (`configs/psconv/*_1x.py`: lr_config warmup='linear',
warmup_iters=500, warmup_ratio=1.0 / 3).
"""

import math

import keras

WARMUP_STEPS = 500
WARMUP_RATIO = 1.0 / 3.0


def mmdet_warmup_factor(step, warmup_steps=WARMUP_STEPS, ratio=WARMUP_RATIO):
    """The factor on the learning rate at (0-based) `step`: `ratio` at step
    0, rising linearly to 1 at `warmup_steps`, 1 after; 1 throughout when
    `warmup_steps` is 0. `step` may be a number or a tensor."""
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0. Received: {warmup_steps!r}")
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0 < ratio <= 1):
        raise ValueError(f"ratio must lie in (0, 1]. Received: {ratio!r}")
    if warmup_steps == 0:
        return keras.ops.ones_like(keras.ops.cast(step, "float32"))
    progress = keras.ops.clip(keras.ops.cast(step, "float32") / warmup_steps, 0.0, 1.0)
    return ratio + (1.0 - ratio) * progress
