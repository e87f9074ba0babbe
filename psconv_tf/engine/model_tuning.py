"""Tuning a whole model's PS layers before anything is traced.

`autotune` measures a layer on its first eager call; a traced step (`fit`,
`tf.function`, `jax.jit`) can only read what was measured before. `tune`
runs a model once, eagerly and in inference mode (nothing it holds changes:
batch-norm statistics, random states), and has every "auto" layer measured
for the mode asked (training: forward+backward), so the traced step finds
the choices. `TuneCallback` does this at the start of `model.fit`.
"""

import keras

from psconv_tf.engine import autotune


def tune(model, data, training=True):
    """Measures every "auto" PSConv2D of `model` on one batch, eagerly.

    Call it before `fit`, `jit` or export with a batch of the shape they
    will see (per replica, under a distribution strategy); the choices land
    in the cache that traced calls read.

    The model runs forward once in inference mode, so nothing it holds
    changes (batch-norm statistics, random-number states); each layer is
    measured for the mode `training` asks for.

    Args:
        model: a Keras model or layer.
        data: a batch of inputs; or `(inputs, labels[, weights])`; or a
            `tf.data.Dataset` or other iterable of those, whose first
            element is used.
        training: measure forward+backward (True) or forward only.

    Returns:
        {layer path: implementation} of every "auto" PS layer called.
    """
    inputs = _first_inputs(data)
    with autotune.tuning(training) as choices:
        model(inputs, training=False)
    return dict(choices)


def _first_inputs(data):
    """The model inputs of a batch, an (inputs, labels) tuple, or the first
    element of a dataset or other iterable."""
    if hasattr(data, "shape") or isinstance(data, dict):
        return data
    if isinstance(data, (str, bytes)):  # iterable, but never a batch
        raise ValueError(f"tune: `data` must be a batch or a dataset; got {type(data).__name__}.")
    if isinstance(data, (tuple, list)):
        return data[0] if 2 <= len(data) <= 3 else data
    try:
        first = next(iter(data))
    except StopIteration:
        raise ValueError("tune: `data` yielded no batch.") from None
    except TypeError:
        raise ValueError(
            "tune: `data` must be a batch, an (inputs, labels) tuple or an "
            f"iterable of them; got {type(data).__name__}.") from None
    return _first_inputs(first)


class TuneCallback(keras.callbacks.Callback):
    """Tunes the model's PS layers before `model.fit` traces its step.

    `model.fit(train, callbacks=[TuneCallback(train)])`: at the start of
    training, `tune(model, data)` measures each "auto" layer on the first
    batch of `data` (a batch or a dataset). Keras traces the training step
    at its first call, after `on_train_begin`, so the traced step runs the
    measured implementations. `choices` holds what was chosen.
    """

    def __init__(self, data, training=True):
        super().__init__()
        self.data = data
        self.training = training
        self.choices = {}

    def on_train_begin(self, logs=None):
        if autotune.enabled():
            self.choices = tune(self.model, self.data, training=self.training)
