"""Preset directories written file by file under temporary names.

keras-hub's saver writes `config.json`, `metadata.json` and the weights in
place; an interrupted save would leave a preset that loads half. Here the
saver writes into a temporary sibling directory and each finished file is
then renamed into the preset, so every file there is whole.
"""

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def staged_directory(directory):
    """Yields a temporary directory; on success its files replace those of
    the same name in `directory` (created if needed), each by one rename."""
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    try:
        yield staging
        os.makedirs(directory, exist_ok=True)
        for root, _, files in os.walk(staging):
            target_root = os.path.join(directory, os.path.relpath(root, staging))
            os.makedirs(target_root, exist_ok=True)
            for file in files:
                os.replace(os.path.join(root, file), os.path.join(target_root, file))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
