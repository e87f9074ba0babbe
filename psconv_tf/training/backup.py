"""A run's backup/: the training state it resumes from.

`tf.train.CheckpointManager` keeps one checkpoint (`backup/ckpt-<steps>`)
of the model, the optimizer, the steps done, the best validation figures
and the seconds the run has taken so far. Restoring checks the backup
before anything is assigned to the model, with one-line errors for a
backup of another model and for damaged files (named), and none of the
hundreds of TensorFlow warnings a failed restore prints otherwise. A
backup of an earlier release, without the seconds, restores too.
"""

import logging
import os

import tensorflow as tf

from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import describe_error
from psconv_tf.runtime.errors import writing
from psconv_tf.runtime.run_config import start_over_advice
from psconv_tf.runtime.tensorflow_logs import quiet_tensorflow

# Checkpoint entries that are not required to restore (added since the first release).
OPTIONAL = ("seconds",)


def _key(name):
    return f"{name}/.ATTRIBUTES/VARIABLE_VALUE"


class Backup:
    """The checkpoints of `folder.backup`.

    Args:
        folder: the `run_config.RunFolder` written to.
        objects: {name: trackable} saved in every checkpoint; those named in
            `OPTIONAL` may be missing from a restored one.
    """

    def __init__(self, folder, objects):
        self.folder = folder
        self.objects = dict(objects)
        self.checkpoint = tf.train.Checkpoint(**self.objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, folder.backup,
                                                  max_to_keep=1)

    def save(self, steps_done):
        """Saves a checkpoint numbered `steps_done` (the older one is removed)."""
        with writing(self.folder.backup):
            self.manager.save(checkpoint_number=steps_done)

    def latest_steps(self):
        """steps_done of the latest checkpoint, or None."""
        latest = self.manager.latest_checkpoint
        return None if latest is None else saved_steps(latest)

    def restore(self, prefix, run_dir):
        """Restores the checkpoint `prefix` (e.g. the chief's latest).

        Raises:
            InputError: (argument "run_dir") the checkpoint is damaged or of
                another model; nothing was assigned in the first case.
        """
        how = start_over_advice(os.path.dirname(prefix))
        try:
            with quiet_tensorflow():
                reader = tf.train.load_checkpoint(prefix)
        except (tf.errors.OpError, ValueError) as error:
            raise InputError(f"{prefix}.index is damaged ({_reason(error)}); {how}.",
                             argument="run_dir") from None
        required = {name: trackable for name, trackable in self.objects.items()
                    if name not in OPTIONAL or reader.has_tensor(_key(name))}
        failure = None
        with quiet_tensorflow():
            try:
                tf.train.Checkpoint(**required).restore(prefix).expect_partial() \
                    .assert_existing_objects_matched()
            except (AssertionError, ValueError):
                failure = (f"{run_dir} holds the backup of another model (its variables do "
                           "not match this one's); use a new run folder.")
            except (tf.errors.OpError, IndexError) as error:
                data = tf.io.gfile.glob(prefix + ".data-*") or [prefix + ".data-*"]
                failure = f"{data[0]} is damaged ({_reason(error)}); {how}."
        if failure:
            # The objects half restored warn, when collected (at exit), about
            # every value of the checkpoint: hundreds of lines after the error.
            logger = tf.get_logger()
            if not any(isinstance(f, _UnrestoredValues) for f in logger.filters):
                logger.addFilter(_UnrestoredValues())
            raise InputError(failure, argument="run_dir")


class _UnrestoredValues(logging.Filter):
    """Drops TensorFlow's warnings about the values of a failed restore."""

    MESSAGES = ("Value in checkpoint could not be found",
                "Detecting that an object or model or tf.train.Checkpoint is being deleted "
                "with unrestored values")

    def filter(self, record):
        return not record.getMessage().startswith(self.MESSAGES)


def saved_steps(prefix):
    """steps_done of the checkpoint `prefix`."""
    return int(tf.train.load_checkpoint(prefix).get_tensor(_key("steps_done")))


def _reason(error):
    if isinstance(error, tf.errors.OpError):
        return error.message.splitlines()[0]
    return describe_error(error)
