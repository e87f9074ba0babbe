"""Files that are either whole or absent: write to a temporary name, rename.

A process killed while writing leaves at worst a temporary file next to the
target, never a truncated target, and the previous version survives until
the rename replaces it. Paths may be local or any `tf.io.gfile` filesystem
(gs://; there a rename is a copy and a delete, still never a partial
target). `remove_temporaries` clears what a killed writer left behind,
including the temporaries of `tf.train.CheckpointManager`.
"""

import contextlib
import json
import os
import uuid

import tensorflow as tf

# Temporary names: "<name>.tmp-<random><suffix>", so that
# `remove_temporaries` recognizes them and writers that require a suffix
# (.keras) accept them.
TEMPORARY_MARK = ".tmp-"
# What tf.train.CheckpointManager leaves when killed while it saves.
CHECKPOINT_TEMPORARIES = ("*_temp", "*_temp/", "checkpoint.tmp*", "*.tempstate*")


def temporary_path(path):
    """A fresh temporary name in `path`'s folder, keeping its extension.

    >>> temporary_path("runs/x/best.keras").startswith("runs/x/best.tmp-")
    True
    """
    root, extension = os.path.splitext(path)
    return f"{root}{TEMPORARY_MARK}{uuid.uuid4().hex[:12]}{extension}"


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path to write; renames it to `path` on success.

    On an error the temporary is removed and `path` is untouched. Works for
    files and for folders (a folder target is replaced as a whole, the old
    one removed only after the new one is in place).

    >>> import tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with atomic_path(target) as temporary:
    ...     _ = open(temporary, "w").write("whole")
    >>> open(target).read()
    'whole'
    """
    folder = os.path.dirname(path)
    if folder:
        tf.io.gfile.makedirs(folder)
    temporary = temporary_path(path)
    try:
        yield temporary
        _replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def _replace(source, target):
    if not tf.io.gfile.isdir(source):
        tf.io.gfile.rename(source, target, overwrite=True)
        return
    # A folder cannot replace another in one rename: move the old one aside
    # first, then remove it once the new one is in place.
    previous = None
    if tf.io.gfile.exists(target):
        previous = temporary_path(target)
        tf.io.gfile.rename(target, previous)
    tf.io.gfile.rename(source, target)
    if previous is not None:
        _remove(previous)


def _remove(path):
    if not tf.io.gfile.exists(path):
        return
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    else:
        tf.io.gfile.remove(path)


def write_bytes(path, data):
    """Writes `data` to `path` atomically, creating its folder."""
    with atomic_path(path) as temporary:
        with tf.io.gfile.GFile(temporary, "wb") as file:
            file.write(data)


def write_json(path, data):
    """Writes `data` as indented JSON to `path` atomically, creating its folder."""
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def save_model(model, path):
    """`model.save(path)` atomically: a `.keras` file whole or not at all."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def remove_temporaries(folder):
    """Removes what killed writers left in `folder`; returns their paths.

    That is this module's temporaries (at the top of `folder`) and, in
    `folder` and its sub-folders one level down (a run's backup/), those of
    `tf.train.CheckpointManager`.
    """
    if not tf.io.gfile.isdir(folder):
        return []
    patterns = [f"*{TEMPORARY_MARK}*"]
    patterns += [f"{prefix}{pattern}" for prefix in ("", "*/") for pattern in CHECKPOINT_TEMPORARIES]
    found = sorted({path.rstrip("/") for pattern in patterns
                    for path in tf.io.gfile.glob(os.path.join(folder, pattern))})
    for path in found:
        _remove(path)
    return found
