"""Tuning a run's PS layers on its first real batch, before anything is traced.

`PSConv2D(implementation="auto")` measures its implementations only on an
eager call (`engine.autotune`); the trainer's step is a `tf.function`, which
would run the fixed defaults. `tune_on_first_batch` runs the model once
eagerly on one per-replica batch of the training pipeline (a pipeline of its
own, so the run's data order is untouched), in inference mode (so no
batch-norm statistic or random state moves), measuring each layer for
training and for evaluation; the traced steps then read the measured
choices.
"""

import collections
import time

import tensorflow as tf

from psconv_tf.engine import autotune
from psconv_tf.engine import model_tuning


def tune_on_first_batch(strategy, model, train_input):
    """Measures every "auto" PS layer of `model` on a real training batch.

    Args:
        strategy: the run's `tf.distribute.Strategy`; the batch is one
            replica's. Under a TPU strategy nothing is measured (eager calls
            would run on the host).
        model: the model the run trains.
        train_input: the run's `dataset_fn(input_context)`.

    Returns:
        ({"train": {layer path: implementation}, "infer": {...}}, seconds),
        the choices for the training step and for evaluation (measured on
        the same batch); empty where measuring is
        off (`PSCONV_TF_AUTOTUNE=0`), the model has no "auto" layer, or the
        strategy is a TPU strategy.
    """
    if not autotune.enabled() or isinstance(strategy, tf.distribute.TPUStrategy):
        return {}, 0.0
    started = time.perf_counter()
    context = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0,
        num_replicas_in_sync=strategy.num_replicas_in_sync)
    batch = next(iter(train_input(context).take(1)))
    choices = {mode: model_tuning.tune(model, batch, training=mode == "train")
               for mode in ("train", "infer")}
    return (choices if choices["train"] else {}), time.perf_counter() - started


def describe(choices, seconds):
    """One line: how many layers were tuned, in what time, to what (for
    training)."""
    counts = collections.Counter(choices["train"].values())
    chosen = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
    return (f"Tuned {len(choices['train'])} PS layers on the first batch in {seconds:.1f} s "
            f"({chosen}); the choices are in the run's log.")
