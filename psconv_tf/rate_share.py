"""The share of each dilation rate in the learned lattices, for training logs."""

import keras

from psconv_tf import graph
from psconv_tf.engine import arguments
from psconv_tf.layers.dynamic_ps_conv2d import DynamicPSConv2D


def dynamic_layers(model):
    """Every DynamicPSConv2D of `model`, nested models included, in order."""
    return [layer for layer in graph.layers_of(model) if isinstance(layer, DynamicPSConv2D)]


def rate_shares(model):
    """{layer name: {rate: share of its kernels at that rate}} of every
    DynamicPSConv2D of `model`, from its current mask."""
    return {layer.name: layer.rate_shares() for layer in dynamic_layers(model)}


def write_rate_shares(model, step=None):
    """Writes every layer's share of each rate as a TensorBoard scalar
    `rate_share/<layer>/rate_<r>` to the default `tf.summary` writer.

    In a custom loop, call it inside `with writer.as_default(step=step):`
    (`step` None: the writer's default step); a model without dynamic layers
    writes nothing.
    """
    import tensorflow as tf

    for name, shares in rate_shares(model).items():
        for rate, share in shares.items():
            tf.summary.scalar(f"rate_share/{name}/rate_{rate}", share, step=step)


class RateShareLogger(keras.callbacks.Callback):
    """Logs the per-layer share of each rate of the dynamic layers.

    After every epoch (or every `update_freq` batches) it writes the scalars
    of `write_rate_shares` to TensorBoard under `log_dir` and appends
    (step, `rate_shares(model)`) to `self.history`.

    Args:
        log_dir: TensorBoard folder (e.g. that of `keras.callbacks.TensorBoard`,
            whose files it sits beside), or None to keep `history` only.
        update_freq: "epoch", or a positive int: every that many batches.

    Example:

    >>> logger = RateShareLogger("logs/rate_share")
    >>> model.fit(x, y, callbacks=[logger])  # doctest: +SKIP
    """

    def __init__(self, log_dir=None, update_freq="epoch"):
        super().__init__()
        if update_freq != "epoch" and not arguments.is_positive_int(update_freq):
            raise ValueError(
                "Argument `update_freq` must be 'epoch' or a positive integer. "
                f"Received: update_freq={update_freq!r}"
            )
        self.log_dir = log_dir
        self.update_freq = update_freq
        self.history = []
        self._writer = None
        self._batches = 0

    def _log(self, step):
        shares = rate_shares(self.model)
        self.history.append((step, shares))
        if self.log_dir is None:
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            write_rate_shares(self.model, step)
        self._writer.flush()

    def on_train_begin(self, logs=None):
        self._log(0)

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self._log(self._batches)

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._log(epoch + 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
