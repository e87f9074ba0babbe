"""The run in progress, as the training loop reports it: its files and
reporters, the images its pipelines skipped, and the messages of a run that
stops early (a signal, a failed write, data that yields nothing)."""

import dataclasses
import json
from typing import Callable
from typing import Optional

import keras
import tensorflow as tf

from psconv_tf.training.backup import Backup
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import NonFiniteLossError
from psconv_tf.runtime.errors import writing
from psconv_tf.training.run_log import RunLog


@dataclasses.dataclass
class RunState:
    """The files and reporters of the run in progress.

    Attributes:
        folder: its `run_config.RunFolder`.
        backup: its `backup.Backup`.
        log: its `run_log.RunLog`.
        skipped: {"train"/"eval": `image_data.SkippedImages` or None}.
        callbacks: `keras.callbacks.CallbackList`.
        steps_per_epoch: optimizer steps per epoch.
        position: `position()`: steps done, epoch (from 0), step, ...
        verbose: console verbosity.
        signals: the loop's `stopping.StopSignals`, while it runs.
    """

    folder: object
    backup: Backup
    log: RunLog
    skipped: dict
    callbacks: keras.callbacks.CallbackList
    steps_per_epoch: int
    position: Callable
    verbose: int
    signals: Optional[object] = None

    def report_skipped(self):
        """Logs (and prints) the images skipped since the last call."""
        for split, report in self.skipped.items():
            for name in report.new_names() if report is not None else ():
                with writing(self.folder.log):
                    self.log.record("skipped_image", split=split, file=name)
                if self.verbose:
                    print(f"Skipped an undecodable {split} image: {name}", flush=True)

    def data_ran_out(self, split):
        """The `InputError` of a dataset that yielded no batch (or ran out)."""
        report = self.skipped.get(split)
        skipped = report.summary()["count"] if report is not None else 0
        self.report_skipped()
        what = "training" if split == "train" else "validation"
        if skipped:
            return InputError(
                f"the {what} data yielded no batch: all its images were skipped as "
                f"undecodable ({skipped} skipped, listed in {self.folder.log}). Check "
                "the data.", argument="data_dir")
        if split == "train":
            position = self.position()
            return InputError(
                f"the training data ran out at epoch {position['epoch'] + 1}, step "
                f"{position['step']}; it must repeat endlessly.", argument="train_input")
        return InputError("the validation data yielded no batch.", argument="eval_input")

    def _epoch_and_step(self, steps_done):
        epoch, step = divmod(steps_done, self.steps_per_epoch)
        return epoch + 1, step

    def stop_position(self):
        """`stopping.TrainingStopped`'s stopped_at and resume_at (epochs from 1)."""
        return {"stopped_at": self._epoch_and_step(self.position()["steps_done"]),
                "resume_at": self._epoch_and_step(self.backup.latest_steps() or 0)}

    def non_finite(self, value, what):
        """The `NonFiniteLossError` of `what` (e.g. "training loss") become
        `value`; logs the stop."""
        position = self.position()
        saved = self.backup.latest_steps()
        kept = (f"the last good backup ({saved} steps) is kept in {self.folder.backup}"
                if saved is not None else "no backup had been saved")
        self.log.record("stopped", reason=f"{what} {value}")
        return NonFiniteLossError(
            f"the {what} became {value} at epoch {position['epoch'] + 1}, step "
            f"{position['step']} (learning rate {position['learning_rate']:.4g}): training "
            f"stopped and saved nothing; {kept}. Lower the learning rate or check the data."
        )

    def report_complete(self, run_dir, epochs, metrics):
        """Says that the run in `run_dir` has done its `epochs`."""
        print(f"{run_dir} is complete ({epochs} epoch{'s' * (epochs != 1)}, "
              f"{metrics.get('steps_done')} steps): nothing to do. Its model is "
              f"{self.folder.best_model}, its metrics {self.folder.metrics}.", flush=True)

    def write_error_message(self, error):
        """The message of a failed write: where training stopped, what is intact."""
        epoch, step = self._epoch_and_step(self.position()["steps_done"])
        intact = []
        saved = self.backup.latest_steps()
        if saved is not None:
            intact.append("the backup at epoch {}, step {}".format(*self._epoch_and_step(saved)))
        if tf.io.gfile.exists(self.folder.best_model):
            intact.append(self.folder.best_model)
        intact = (" and ".join(intact) + (" are" if len(intact) > 1 else " is") + " intact"
                  if intact else "nothing had been saved yet")
        return (f"{error}: training stopped at epoch {epoch}, step {step}; {intact}. Free "
                "space (or fix the folder) and rerun the same command to resume.")


def read_metrics(path):
    """The metrics.json of a finished run, or None if missing or unreadable."""
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            metrics = json.loads(file.read().decode("utf-8"))
    except (tf.errors.OpError, OSError, UnicodeDecodeError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and "final" in metrics else None
