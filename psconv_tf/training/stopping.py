"""Stopping a run with Ctrl-C (SIGINT) or SIGTERM: one line, then resume.

`StopSignals` defers both signals while a training loop runs: the handler
records the signal and the loop stops at its next step boundary, after
saving its state, so that rerunning the same command resumes exactly
there. A second signal while deferred stops at once (the rerun then
resumes from the last saved state, as after a kill). Outside the loop
(`raise_on_signals`, which the command lines install) both signals stop at
once. Either way the loop raises `TrainingStopped`, which the command
lines print as one line and exit with 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM), as shells report such exits.

>>> str(TrainingStopped(signal.SIGTERM, stopped_at=(2, 7), resume_at=(2, 5)))
'stopped by SIGTERM at epoch 2, step 7; rerun the same command to resume (from the backup at epoch 2, step 5)'
"""

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(KeyboardInterrupt):
    """A run stopped by a signal.

    Attributes:
        signal_number: the signal.
        stopped_at: (epoch from 1, step in that epoch) where it stopped, or
            None where unknown (outside the training loop).
        resume_at: where a rerun resumes, where that differs.
    """

    def __init__(self, signal_number, stopped_at=None, resume_at=None):
        self.signal_number = int(signal_number)
        self.stopped_at = stopped_at
        self.resume_at = resume_at
        super().__init__(self.message())

    @property
    def exit_status(self):
        return 128 + self.signal_number

    def message(self):
        name = signal.Signals(self.signal_number).name
        if self.stopped_at is None:
            return f"stopped by {name}; rerun the same command to resume"
        epoch, step = self.stopped_at
        text = (f"stopped by {name} at epoch {epoch}, step {step}; rerun the same command "
                "to resume")
        if self.resume_at is not None and tuple(self.resume_at) != tuple(self.stopped_at):
            text += f" (from the backup at epoch {self.resume_at[0]}, step {self.resume_at[1]})"
        return text

    def __str__(self):
        return self.message()


class StopSignals:
    """Defers SIGINT and SIGTERM inside a `with` block (main thread only;
    elsewhere it does nothing).

    Args:
        where: `where()` returns the keyword arguments `stopped_at` and
            `resume_at` of the `TrainingStopped` that a second signal raises.

    Attributes:
        requested: the first signal received, or None.
    """

    def __init__(self, where=dict):
        self.requested = None
        self._where = where
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number, frame):
        if self.requested is not None:  # asked twice: at once
            raise TrainingStopped(number, **self._where())
        self.requested = number


def _raise(number, frame):
    raise TrainingStopped(number)


@contextlib.contextmanager
def raise_on_signals():
    """Inside the block, SIGTERM (as SIGINT already does) raises at once
    (`TrainingStopped`); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
