"""Which folders are run folders, who writes in them, and what a run removes.

A run claims its folder (`claim`) before it writes anything there:
- a folder that does not exist, or is empty, becomes a run folder;
- a folder with a manifest of the run's kind is one already;
- a folder without a manifest is one written by an earlier release when
  every entry at its top is a name runs of that kind write (or a
  temporary of one, `files.temporary_of`) and the kind's evidence holds
  (for classification: a config.json that reads as a `RunConfig`, or a
  TensorFlow `backup/checkpoint`); it gets its manifest now;
- any other folder (the user's files, another kind of run) is refused
  with one line (`NotARunFolderError`), unless `force`: the run then adds
  its entries among the other files, and is refused if one of its names
  is already taken. A regular file is refused as well.

The manifest, `psconv_run.json`, names the kind and the entries (files and
folders at the top) that runs of this folder write, and whether an earlier
release wrote it. Claiming takes the
folder's lock (`run_lock.RunLock`) for as long as the run writes, and
`Claim.remove_temporaries` removes, and only after the run's arguments and
data were checked, nothing but what killed writers of this project left:
- at the top, temporaries (`files.TEMPORARY_MARK`; in a folder of an
  earlier release also its mark `.tmp-<12 hex digits>`) of the manifest's
  entries;
- inside the entries that are the run's own folders (`Kind.owned_folders`,
  e.g. backup/), temporaries with that mark and those of
  `tf.train.CheckpointManager` (`ckpt-N_temp/`, `checkpoint.tmp<32 hex>`,
  `ckpt-N.*.tempstate<digits>`).
Nothing else in a run folder is ever removed by this module.
"""

import dataclasses
import json
import os
import re
from typing import Callable
from typing import Optional

import tensorflow as tf

from psconv_tf.runtime import files
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import NotARunFolderError
from psconv_tf.runtime.errors import os_error_text
from psconv_tf.runtime.run_lock import LOCK_FILE
from psconv_tf.runtime.run_lock import RunLock

MANIFEST_FILE = "psconv_run.json"
FORMAT = "psconv-tf run folder"
VERSION = 1
# What tf.train.CheckpointManager (prefix "ckpt") leaves when killed while saving.
CHECKPOINT_TEMPORARY = re.compile(
    r"ckpt-\d+_temp|checkpoint\.tmp[0-9a-f]{32}|ckpt-\d+\.[\w-]+\.tempstate\d+")
# Entries of every run folder: the manifest and the lock.
_OWN = (MANIFEST_FILE, LOCK_FILE)


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of run folder.

    Attributes:
        name: e.g. "classification", written in the manifest.
        entries: names that runs of this kind write at the folder's top.
        owned_folders: those of `entries` that are folders only runs write
            into (their temporaries are removed, whatever their names).
        evidence: `evidence(path)`: whether a folder without manifest whose
            entries are all known was written by an earlier release.
        child: for a folder of run folders (the seeds of cifar.py, the
            models of the quick run): the kind of its sub-folders, which
            then count as known entries (and one of them as evidence).
        peers: the entry holding the folders of the other workers of a
            multi-worker run (of this kind); alone, it is evidence when each
            of its folders is one of this kind or still empty.
    """

    name: str
    entries: tuple
    owned_folders: tuple = ()
    evidence: Optional[Callable] = None
    child: Optional["Kind"] = None
    peers: Optional[str] = None


def read_manifest(path):
    """The manifest of folder `path` as a dict, or None where it has none.

    Raises:
        InputError: the manifest is damaged.
    """
    manifest = os.path.join(path, MANIFEST_FILE)
    if not tf.io.gfile.exists(manifest):
        return None
    try:
        with tf.io.gfile.GFile(manifest, "rb") as file:
            data = json.loads(file.read().decode("utf-8"))
        if (not isinstance(data, dict) or data.get("format") != FORMAT
                or not isinstance(data.get("kind"), str)
                or not all(isinstance(name, str) for name in data.get("entries", ()))):
            raise ValueError("not a run folder manifest")
    except (UnicodeDecodeError, ValueError, tf.errors.OpError) as error:
        raise InputError(
            f"{manifest} is damaged ({error}); delete it to have {path} recognised "
            "again from its files.", argument="run_dir") from None
    return data


def is_run_folder(path, kind):
    """Whether `path` is a run folder of `kind` (a manifest of that kind, or
    the files of an earlier release); False for an empty or missing one."""
    try:
        return _state(path, kind) in ("manifest", "earlier")
    except InputError:
        return False


def _listing(path):
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))


def _others(path):
    """The names in `path` but the manifest, the lock and their temporaries."""
    return [name for name in _listing(path)
            if name not in _OWN and files.temporary_of(name) not in _OWN]


def _state(path, kind):
    """"absent", "empty", "manifest", "earlier" or "foreign"."""
    blocking = _file_in_the_way(path)
    if blocking:
        raise InputError(f"{blocking} is a file, not a folder.", argument="run_dir")
    if not tf.io.gfile.exists(path):
        return "absent"
    manifest = read_manifest(path)
    if manifest is not None:
        if manifest["kind"] != kind.name:
            raise NotARunFolderError(
                f"{path} is a {manifest['kind']} run folder, not a {kind.name} one; "
                "use another folder.", path)
        return "manifest"
    names = _others(path)
    if not names:
        return "empty"
    if all(_known(path, name, kind) for name in names) and _evidence(path, names, kind):
        return "earlier"
    return "foreign"


def _evidence(path, names, kind):
    if kind.evidence is not None and kind.evidence(path):
        return True
    # A folder of run folders: one of them at least.
    if kind.child is not None and any(
            name not in kind.entries and files.temporary_of(name) is None for name in names):
        return True
    # The folders of the other workers, which may start first.
    peers = os.path.join(path, kind.peers) if kind.peers in names else None
    return peers is not None and tf.io.gfile.isdir(peers) and all(
        _state(os.path.join(peers, name), kind) != "foreign" for name in _listing(peers))


def _known(path, name, kind):
    if name in kind.entries or files.temporary_of(name, earlier_release=True) in kind.entries:
        return True
    return (kind.child is not None and tf.io.gfile.isdir(os.path.join(path, name))
            and is_run_folder(os.path.join(path, name), kind.child))


def _file_in_the_way(path):
    """The file at `path` or at one of its parent folders, if any."""
    path = os.fspath(path)
    while path and path not in ("/", "."):
        if tf.io.gfile.exists(path):
            return None if tf.io.gfile.isdir(path) else path
        parent = os.path.dirname(path.rstrip("/"))
        if parent == path:
            return None
        path = parent
    return None


def check(path, kind, force=False, entries=()):
    """Raises unless `claim(path, kind, entries, force)` would accept the
    folder (its lock aside); writes nothing. Returns `_state`'s answer."""
    state = _state(path, kind)
    if state == "foreign" and not force:
        count = len(_others(path))
        raise NotARunFolderError(
            f"{path} holds {count} file{'s' * (count != 1)} or folder"
            f"{'s' * (count != 1)} and is not a run folder of psconv-tf (it has no "
            f"{MANIFEST_FILE}); give a new or empty folder", path, forceable=True)
    if state == "foreign":
        taken = sorted(name for name in set(kind.entries) | set(entries)
                       if tf.io.gfile.exists(os.path.join(path, name)))
        if taken:
            raise NotARunFolderError(
                f"{os.path.join(path, taken[0])} exists and was not written by a run; "
                "the run would replace it. Use another folder.", path)
    return state


class Claim:
    """A claimed run folder: its lock is held until `release()`.

    Attributes:
        path: the folder.
        kind: its `Kind`.
        entries: the entries its manifest lists.
    """

    def __init__(self, path, kind, lock, entries, earlier_release=False):
        self.path = path
        self.kind = kind
        self._lock = lock
        self.entries = set(entries)
        self.earlier_release = earlier_release

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()

    def add_entries(self, names):
        """Lists more entries (e.g. a seed's folder) in the manifest."""
        if set(names) - self.entries:
            self.entries |= set(names)
            _write_manifest(self.path, self.kind, self.entries, self.earlier_release)

    def remove_temporaries(self):
        """Removes what killed writers of this run left (see the module's
        docstring); returns the removed paths."""
        removed = []
        entries = self.entries | {MANIFEST_FILE}
        for name in _listing(self.path):
            if files.temporary_of(name, self.earlier_release) in entries:
                removed.append(os.path.join(self.path, name))
        for folder in sorted(entries & set(self.kind.owned_folders)):
            folder = os.path.join(self.path, folder)
            if not tf.io.gfile.isdir(folder):
                continue
            for name in _listing(folder):
                if (files.temporary_of(name, self.earlier_release)
                        or CHECKPOINT_TEMPORARY.fullmatch(name)):
                    removed.append(os.path.join(folder, name))
        for path in removed:
            files.remove(path)
        return removed

    def release(self):
        self._lock.release()


def claim(path, kind, entries=(), force=False, chief_path=None):
    """Claims the run folder `path` for a run of `kind` (see the module's
    docstring); creates it if absent. Use as a context manager.

    Args:
        path: the folder.
        kind: `Kind`.
        entries: names this run writes besides `kind.entries`.
        force: accept a folder that holds other files (the run's own names
            must be free).
        chief_path: on a worker other than the chief, the chief's folder,
            which must not be another's folder either (checked, not claimed).

    Returns:
        A `Claim`, holding the folder's lock.

    Raises:
        InputError: the folder is a file, or its manifest is damaged.
        NotARunFolderError: the folder holds other files (and not `force`),
            one of the run's names is taken, or it holds another kind of run.
        RunFolderInUseError: another process holds its lock.
    """
    path = os.fspath(path)
    if chief_path is not None and os.fspath(chief_path) != path:
        check(chief_path, kind, force)
    state = check(path, kind, force, entries)
    wanted = set(kind.entries) | set(entries)
    lock = RunLock(path)
    try:
        lock.acquire()
    except (OSError, tf.errors.OpError) as error:
        raise InputError(f"cannot write to {path} ({os_error_text(error)}).",
                         argument="run_dir") from None
    try:
        listed, earlier = set(), state == "earlier"
        manifest = read_manifest(path)
        if manifest is not None:
            listed = set(manifest.get("entries", ()))
            earlier = bool(manifest.get("earlier_release"))
        elif earlier and kind.child is not None:
            listed = {name for name in _others(path) if _known(path, name, kind)}
        if manifest is None or wanted - listed:
            _write_manifest(path, kind, listed | wanted, earlier)
    except (OSError, tf.errors.OpError) as error:
        lock.release()
        raise InputError(f"cannot write to {path} ({os_error_text(error)}).",
                         argument="run_dir") from None
    except BaseException:
        lock.release()
        raise
    return Claim(path, kind, lock, listed | wanted, earlier)


def _write_manifest(path, kind, entries, earlier_release):
    manifest = {"format": FORMAT, "version": VERSION, "kind": kind.name,
                "entries": sorted(entries)}
    if earlier_release:  # its temporaries may carry the earlier mark
        manifest["earlier_release"] = True
    files.write_json(os.path.join(path, MANIFEST_FILE), manifest)
