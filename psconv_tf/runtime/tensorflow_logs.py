"""Quieting TensorFlow's Python warnings where the library reports the failure itself."""

import contextlib
import gc
import logging

import tensorflow as tf


@contextlib.contextmanager
def quiet_tensorflow():
    """Silences TensorFlow's Python warnings inside the block, including
    those of objects it collects there (a failed checkpoint restore warns
    about every unrestored value when collected)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        gc.collect()
        logger.setLevel(level)
