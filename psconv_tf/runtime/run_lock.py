"""The lock of a run folder: one process writes a run folder at a time.

The lock is the file `psconv_run.lock` in the folder, holding the holder's
process id, host, start time and command line (JSON), which a refused run
names. On a local or network filesystem that supports `flock` the lock is
the kernel's advisory lock on that file: it is released when the holder
ends, however it ends (a kill, a crash), so a lock file left by a killed
run is taken over at once. Elsewhere (gs://, or a filesystem without
`flock`) the file itself is the lock: it is taken over only where it names
a process of this host that no longer runs (or cannot be read); a lock of
another host must be removed by hand once that process is gone, as the
error says.

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> with RunLock(folder):
...     RunLock(folder).acquire()
Traceback (most recent call last):
...
psconv_tf.runtime.errors.RunFolderInUseError: ... is in use by process ...
"""

import errno
import json
import os
import socket
import sys
import time

import tensorflow as tf

from psconv_tf.runtime.errors import RunFolderInUseError

LOCK_FILE = "psconv_run.lock"

try:
    import fcntl
except ImportError:  # not POSIX: the file is the lock
    fcntl = None


def _is_local(path):
    return "://" not in os.fspath(path)


def _holder_record():
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except (OverflowError, ValueError):
        return False
    return True


class RunLock:
    """The lock of the run folder `folder` (created if absent).

    Use as a context manager, or `acquire()` and `release()`.

    Raises (on acquiring):
        RunFolderInUseError: another process holds it; the message names
            that process (id, host, start, command).
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self._descriptor = None
        self._held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()

    def acquire(self):
        tf.io.gfile.makedirs(self.folder)
        if _is_local(self.path) and fcntl is not None:
            if self._acquire_flock():
                return
        self._acquire_file()

    def _acquire_flock(self):
        """Takes the kernel's lock; False where the filesystem has none."""
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                self._refuse(self._read_holder(wait=True))
            except OSError as error:
                os.close(descriptor)
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    return False
                raise
            # The holder before us may have removed the file between our
            # open and our lock: hold the file that is at the path, or retry.
            try:
                same = os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(descriptor)
                continue
            os.ftruncate(descriptor, 0)
            os.write(descriptor, json.dumps(_holder_record()).encode())
            os.fsync(descriptor)
            self._descriptor = descriptor
            self._held = True
            return True

    def _acquire_file(self):
        if tf.io.gfile.exists(self.path):
            holder = self._read_holder()
            stale = (holder is None or (holder.get("host") == socket.gethostname()
                                        and not _process_alive(holder.get("pid"))))
            if not stale:
                self._refuse(holder, remote=True)
        with tf.io.gfile.GFile(self.path, "wb") as file:
            file.write(json.dumps(_holder_record()).encode())
        self._held = True

    def _read_holder(self, wait=False):
        """The holder's record, or None if unreadable (retried briefly when
        `wait`: a holder writes it right after taking the lock)."""
        for attempt in range(20 if wait else 1):
            try:
                with tf.io.gfile.GFile(self.path, "rb") as file:
                    holder = json.loads(file.read().decode("utf-8"))
                if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
                    return holder
            except (OSError, tf.errors.OpError, UnicodeDecodeError, ValueError):
                pass
            if wait:
                time.sleep(0.05)
        return None

    def _refuse(self, holder, remote=False):
        if holder is None:
            who = "another process"
        else:
            who = (f"process {holder['pid']} on {holder.get('host', 'an unknown host')} "
                   f"(started {holder.get('started', '?')}: {holder.get('command', '?')})")
        advice = "wait for it to end or use another run folder"
        if remote:
            advice += f"; if that process is gone, delete {self.path}"
        raise RunFolderInUseError(f"{self.folder} is in use by {who}; {advice}.",
                                  self.folder, holder)

    def release(self):
        if not self._held:
            return
        self._held = False
        try:
            # Removed while still held, so that no one takes a file about to go.
            if tf.io.gfile.exists(self.path):
                tf.io.gfile.remove(self.path)
        except (OSError, tf.errors.OpError):
            pass  # a lock file left behind is taken over by the next run
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
