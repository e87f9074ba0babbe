"""The training library's errors: neutral, for the command line to word.

Library code raises `InputError` naming the *parameter* at fault
(`argument="batch_size"`), never a command-line flag; the scripts turn it
into a one-line `error: --batch-size: ...` (see `cli.run_main`).
"""


class InputError(ValueError):
    """A bad value or a bad data set; the message says what is wrong.

    Args:
        message: what is wrong, without the name of the parameter.
        argument: the parameter at fault (a `RunConfig` or function
            argument name such as "batch_size" or "run_dir"), or None.
    """

    def __init__(self, message, argument=None):
        super().__init__(message)
        self.argument = argument


class ResumeMismatchError(InputError):
    """A run folder holds a run whose settings differ from the ones given.

    Attributes:
        differences: [(field, stored value, new value)].
        run_dir: the run folder.
    """

    def __init__(self, message, run_dir, differences):
        super().__init__(message, argument="run_dir")
        self.run_dir = run_dir
        self.differences = differences


class NonFiniteLossError(RuntimeError):
    """Training stopped: the loss or the weights became NaN or infinite."""


def describe_error(error):
    """The error's type and the first line of its message, to quote it."""
    first_line = str(error).partition("\n")[0]
    return f"{type(error).__name__}: {first_line}"


class NotARunFolderError(InputError):
    """A folder given as a run folder holds files of its own and no run (or
    another kind of run).

    Attributes:
        run_dir: the folder.
        forceable: whether the run could add its files among those there
            (`ownership.claim(force=True)`).
    """

    def __init__(self, message, run_dir, forceable=False):
        super().__init__(message, argument="run_dir")
        self.run_dir = run_dir
        self.forceable = forceable


class RunFolderInUseError(InputError):
    """Another process holds the run folder's lock.

    Attributes:
        run_dir: the folder.
        holder: the holder's record (pid, host, started, command), or None.
    """

    def __init__(self, message, run_dir, holder):
        super().__init__(message, argument="run_dir")
        self.run_dir = run_dir
        self.holder = holder


class RunWriteError(RuntimeError):
    """A run could not write one of its files (a full disk, a lost mount);
    the message names the file and, from the training loop, what is intact
    and how to go on."""


def os_error_text(error):
    """What an `OSError` or a TensorFlow `OpError` says went wrong, briefly
    (e.g. "No space left on device")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = getattr(error, "message", None) or str(error)
    text = text.splitlines()[0] if text else type(error).__name__
    # TensorFlow prefixes the op and the file ("{{function_node ...}} path; reason [Op:X]").
    text = text.rsplit("; ", 1)[-1]
    return text.split(" [Op:")[0].strip() or type(error).__name__


class writing:
    """Turns the failure of a write to `path` (an `OSError` or a TensorFlow
    `OpError`: a full disk, a lost mount) into a `RunWriteError` naming it.

    >>> with writing("runs/x/best.keras"):
    ...     raise OSError(28, "No space left on device")
    Traceback (most recent call last):
    ...
    psconv_tf.runtime.errors.RunWriteError: cannot write runs/x/best.keras (No space left on device)
    """

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        import tensorflow as tf

        if error is not None and isinstance(error, (OSError, tf.errors.OpError)):
            raise RunWriteError(f"cannot write {self.path} ({os_error_text(error)})") from None
        return False
