"""Files that are either whole or absent: write to a temporary name, rename.

A process killed while writing leaves at worst a temporary file next to the
target, never a truncated target, and the previous version survives until
the rename replaces it. Paths may be local or any `tf.io.gfile` filesystem
(gs://; there a rename is a copy and a delete, still never a partial
target).

Temporaries carry a mark no one else uses, `.psconv-tmp-<12 hex digits>`,
inserted before the name's first extension so that writers which require
a suffix (`.keras`, `.weights.h5`) accept them: `best.keras` is written as
`best.psconv-tmp-0123456789ab.keras`. `temporary_of` recognises them (and,
asked to, those of earlier releases, `best.tmp-0123456789ab.keras`); a run
folder removes only the temporaries of the entries its manifest lists
(`psconv_tf.runtime.ownership`).
"""

import contextlib
import json
import os
import re
import uuid

import tensorflow as tf

TEMPORARY_MARK = ".psconv-tmp-"
_TEMPORARY = re.compile(r"\.psconv-tmp-[0-9a-f]{12}")
# The mark of earlier releases, recognised in their folders only.
_EARLIER_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{12}")


def temporary_path(path):
    """A fresh temporary name in `path`'s folder, keeping its extensions.

    >>> temporary_path("runs/x/best.keras").startswith("runs/x/best.psconv-tmp-")
    True
    >>> temporary_path("backup/latest.weights.h5").endswith(".weights.h5")
    True
    """
    folder, name = os.path.split(os.fspath(path).rstrip("/"))
    dot = name.find(".", 1)  # a leading dot is part of the name
    stem, extensions = (name, "") if dot < 0 else (name[:dot], name[dot:])
    return os.path.join(folder, f"{stem}{TEMPORARY_MARK}{uuid.uuid4().hex[:12]}{extensions}")


def temporary_of(name, earlier_release=False):
    """The name a temporary was written for, or None if `name` is none;
    with `earlier_release`, the temporaries of earlier releases too
    (`best.tmp-0123456789ab.keras`).

    >>> temporary_of("best.psconv-tmp-0123456789ab.keras")
    'best.keras'
    >>> temporary_of("best.tmp-0123456789ab.keras") is None
    True
    """
    for pattern in (_TEMPORARY, _EARLIER_TEMPORARY) if earlier_release else (_TEMPORARY,):
        match = pattern.search(name)
        if match is not None:
            return name[:match.start()] + name[match.end():]
    return None


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
        remove(temporary)
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
        remove(previous)


def remove(path):
    """Removes a file or a folder with its contents; nothing if absent."""
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
    """Writes `data` as indented JSON to `path` atomically, creating its folder.

    NaN and infinities are refused (`ValueError`): they are not JSON; write
    None (null) for an undefined value.
    """
    write_bytes(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())


def save_model(model, path):
    """`model.save(path)` atomically: a `.keras` file whole or not at all."""
    with atomic_path(path) as temporary:
        model.save(temporary)
