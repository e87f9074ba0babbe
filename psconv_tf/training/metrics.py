"""Metrics of the default task (classification: loss, top-1, top-5) and
the one read of metric values the trainer logs."""

import keras
import tensorflow as tf


def classification_metrics(num_classes):
    """Mean loss, top-1 and (above 5 classes) top-5 accuracy."""
    metrics = [keras.metrics.Mean(name="loss"),
               keras.metrics.SparseCategoricalAccuracy(name="top1")]
    if num_classes > 5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"))
    return metrics


def update_metrics(metrics, labels, logits, per_example_loss):
    """Updates `classification_metrics` with a batch."""
    loss, *accuracies = metrics
    loss.update_state(per_example_loss)
    for accuracy in accuracies:
        accuracy.update_state(labels, logits)


def metric_results(metrics):
    """{name: float value} of the metrics."""
    if not metrics:
        return {}
    # One transfer from the device for all of them.
    values = tf.stack([tf.cast(metric.result(), tf.float32) for metric in metrics]).numpy()
    return {metric.name: float(value) for metric, value in zip(metrics, values)}
