"""What a run reports: log.jsonl records, TensorBoard scalars, console progress,
its summary line."""

import json
import math
import os
import sys
import time

import keras
import tensorflow as tf

from psconv_tf import rate_share


class RunLog:
    """Appends JSON records of a run's progress to log.jsonl, and TensorBoard.

    Args:
        folder: the run's `run_config.RunFolder`.
        position: `position()` returns the run's place as a dict (steps
            done, epoch, step, learning rate).
        verbose: whether to print epoch summaries and notices.
        model: the model trained; the rate shares of its dynamic PSConv
            layers, if any, are logged every epoch.
    """

    def __init__(self, folder, position, verbose, model=None):
        self.folder = folder
        self.position = position
        self.verbose = verbose
        self.model = model
        self._summaries = None  # created with the first epoch's figures

    def record(self, event, **fields):
        record = {"event": event, **self.position(), **fields, "time": time.time()}
        # JSON has no NaN: an undefined figure (an AP of no object) is null.
        record = {name: None if isinstance(value, float) and not math.isfinite(value)
                  else value for name, value in record.items()}
        # One write of one line: a kill leaves at worst a partial last line.
        with tf.io.gfile.GFile(self.folder.log, "a") as file:
            file.write(json.dumps(record) + "\n")

    def epoch(self, epoch, steps, train_logs, eval_logs, seconds, steps_done, learning_rate):
        val_logs = {f"val_{name}": value for name, value in eval_logs.items()}
        self.record("epoch", completed_epoch=epoch, steps=steps, seconds=round(seconds, 2),
                    **train_logs, **val_logs)
        if self._summaries is None:
            self._summaries = tf.summary.create_file_writer(self.folder.tensorboard)
        with self._summaries.as_default(step=steps_done):
            for name, value in {**train_logs, **val_logs}.items():
                tf.summary.scalar(name, value)
            tf.summary.scalar("learning_rate", learning_rate)
            if self.model is not None:
                rate_share.write_rate_shares(self.model)
        self._summaries.flush()
        if self.verbose:
            print(" - ".join(f"{name}: {value:.4f}" for name, value in val_logs.items()),
                  flush=True)


class Progress:
    """Progress of a loop: Keras's bar on a terminal, plain lines elsewhere.

    With `verbose` 1, a terminal shows Keras's progress bar; piped or
    redirected output gets one plain line (no ANSI codes) every `every`
    steps and at the end. `verbose` 2 prints nothing per step (the caller
    prints one line per epoch), 0 nothing at all.

    Args:
        title: what the lines start with, e.g. "epoch 2/90".
        total: the number of steps, or None where unknown.
        verbose: 0, 1 or 2.
        every: steps between plain lines.
        stream: where plain lines go (default sys.stdout); a terminal gets
            the bar.
    """

    def __init__(self, title, total, verbose, every=100, stream=None):
        self.title = title
        self.total = total
        self.every = every
        self.stream = stream or sys.stdout
        self.started = time.time()
        self.last_printed = None
        self.bar = None
        self.plain = verbose == 1 and not _is_terminal(self.stream)
        if verbose == 1 and not self.plain:
            self.bar = keras.utils.Progbar(total, verbose=1)

    def update(self, step, logs=(), finished=False):
        logs = list(dict(logs).items())
        if self.bar is not None:
            self.bar.update(step, logs, finalize=finished or None)
            return
        if not self.plain:
            return
        last = self.last_printed or 0
        due = step // self.every > last // self.every
        if not (due or finished) or step == self.last_printed:
            return
        self.last_printed = step
        of_total = f"/{self.total}" if self.total else ""
        figures = "".join(f" - {name}: {_format(value)}" for name, value in logs)
        print(f"{self.title} step {step}{of_total}{figures} - "
              f"{time.time() - self.started:.0f} s", file=self.stream, flush=True)


def _format(value):
    if value is None:  # undefined
        return "-"
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def summary_line(metrics, run_dir):
    """The last line of a run: its best and final validation figures, its
    time and where its files are.

    >>> print(summary_line({"model": "m", "epochs": 2, "steps_done": 20,
    ...     "monitor": "top1", "final": {"loss": 0.5, "top1": 0.75},
    ...     "best": {"epoch": 1, "val_loss": 0.4, "val_top1": 0.8}, "seconds": 75.0},
    ...     "runs/m"))
    m: best validation top-1 80.00 % at epoch 1 (runs/m/best.keras); final validation loss 0.5000, top-1 75.00 %; 2 epochs, 20 steps in 1 min 15 s; metrics in runs/m/metrics.json
    """
    best, monitor = metrics["best"], metrics.get("monitor", "top1")
    final = ", ".join(_figure(name, value) for name, value in metrics["final"].items())
    epochs = metrics["epochs"]
    return (f"{metrics['model']}: best validation {_figure(monitor, best[f'val_{monitor}'])} "
            f"at epoch {best['epoch']} ({os.path.join(run_dir, 'best.keras')}); final "
            f"validation {final}; {epochs} epoch{'s' * (epochs != 1)}, "
            f"{metrics['steps_done']} steps in {_duration(metrics['seconds'])}; metrics in "
            f"{os.path.join(run_dir, 'metrics.json')}")


def _figure(name, value):
    if name in ("top1", "top5", "accuracy"):
        return f"{name.replace('top', 'top-')} {100 * value:.2f} %"
    return f"{name} {_format(value)}"


def _duration(seconds):
    """
    >>> _duration(12.3), _duration(3725)
    ('12 s', '1 h 02 min')
    """
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
