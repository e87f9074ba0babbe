"""The on-disk cache of PSConv2D's autotuner: one small JSON record per key.

Records live in `PSCONV_TF_AUTOTUNE_CACHE`, else
`$XDG_CACHE_HOME/psconv_tf/autotune` (~/.cache/...), one file per key, named
by the SHA-256 of the key's text. Writing goes to a temporary name, then a
rename, so no record is ever half-written (as `psconv_tf.runtime.files` writes, but
without TensorFlow: the tuner runs on every backend). Reading trusts nothing
at the key's path: only a regular file of at most MAX_RECORD_BYTES is read,
opened without blocking (a FIFO or device there is refused, never waited
on), and it must be JSON holding exactly its key and a known
implementation. Any failure, reading or writing, is one warning and counts
as "not cached"; a cache folder that cannot be used (a file, a symlink
loop, no permission) warns when written. Nothing is unpickled.
"""

import hashlib
import json
import os
import stat
import tempfile
import warnings

from psconv_tf.engine import arguments
from psconv_tf.engine import executor

ENVIRONMENT = "PSCONV_TF_AUTOTUNE_CACHE"
# A record is a few hundred bytes; anything larger is not one.
MAX_RECORD_BYTES = 1 << 16


def cache_dir():
    """The cache folder (see the module docstring)."""
    root = os.environ.get(ENVIRONMENT)
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "psconv_tf", "autotune")


def path_of(text):
    """The file of the key `text`."""
    return os.path.join(cache_dir(), hashlib.sha256(text.encode()).hexdigest() + ".json")


def load(text):
    """The cached choice for the key `text`, or None (see the module
    docstring: only small regular files, never a blocking read)."""
    if not os.path.isdir(cache_dir()):
        return None  # nothing cached; `store` says why it cannot write there
    path = path_of(text)
    try:
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        _ignore(path, error)
        return None
    try:
        with os.fdopen(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ValueError("not a regular file")
            data = file.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
        record = json.loads(data.decode("utf-8"))
        if not isinstance(record, dict) or json.dumps(record.get("key"), sort_keys=True) != text:
            raise ValueError("its key differs")
        choice = record.get("choice")
        if not isinstance(choice, str) or choice not in executor.IMPLEMENTATIONS + executor.JAX_IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {arguments.shown(choice)}")
        return choice
    except (OSError, ValueError, RecursionError) as error:
        _ignore(path, error)
        return None


def _ignore(path, error):
    warnings.warn(
        f"Ignoring PSConv2D autotune cache file {path}: "
        f"{type(error).__name__}: {str(error)[:200]}",
        stacklevel=3,
    )


def store(text, choice, times):
    """Writes the record of the key `text`; a failure is one warning."""
    record = {"key": json.loads(text), "choice": choice, "seconds": times}
    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(record, file, indent=1, sort_keys=True)
            os.replace(temporary, path_of(text))
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    except (OSError, ValueError) as error:
        warnings.warn(
            f"Could not write the PSConv2D autotune cache in {folder}: "
            f"{type(error).__name__}: {str(error)[:200]}; the choice is kept "
            "in memory only.",
            stacklevel=2,
        )
