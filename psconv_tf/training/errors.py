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


def tensorflow_error_text(error):
    """The lines of a TensorFlow runtime error that say what went wrong."""
    lines = [line.strip() for line in error.message.splitlines()]
    return " ".join(line for line in lines
                    if line and not line.startswith(("[[", "Detected at node",
                                                     "Graph execution error")))
