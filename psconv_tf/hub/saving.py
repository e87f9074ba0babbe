"""Preset directories: written file by file under temporary names, read
with one-line errors.

keras-hub's saver writes `config.json`, `metadata.json` and the weights in
place; an interrupted save would leave a preset that loads half. Here
(`StagedSaving`, a base of every class of `psconv_tf.hub`) the saver writes
into a temporary sibling directory and each finished file is then renamed
into the preset, so every file there is whole.

keras-hub's loader lets a damaged file through as a bare `JSONDecodeError`
(naming neither file nor preset) or a multi-line dump. `PresetLoading`, a
base of every class of `psconv_tf.hub`, checks a local preset's JSON files
before keras-hub reads them and turns what loading raises into one
`PresetError` line naming the preset (and the file, where known). The
generic entry points (`keras_hub.models.Backbone.from_preset`) are
keras-hub's own: call the class's (`PSResNetBackbone.from_preset`) for
these messages.
"""

import contextlib
import json
import os
import shutil
import tempfile

from keras_hub.layers import ImageConverter

# The JSON files keras-hub reads from a preset (its names).
PRESET_JSON_FILES = (
    "config.json", "metadata.json", "task.json", "preprocessor.json",
    "image_converter.json", "model.weights.json",
)
MAX_JSON_BYTES = 64 * 2**20


CONVERTER_FILE = "image_converter.json"  # keras-hub's name


class PresetError(ValueError):
    """A preset that cannot be loaded."""


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


def check_preset(preset):
    """Raises `PresetError` if a JSON file of the local preset directory
    `preset` is not a regular file holding a JSON object. Names and remote
    handles are keras-hub's to resolve."""
    if not isinstance(preset, (str, os.PathLike)) or not os.path.isdir(preset):
        return
    for name in PRESET_JSON_FILES:
        path = os.path.join(preset, name)
        if not os.path.lexists(path):
            continue
        problem = _json_problem(path)
        if problem:
            raise PresetError(f"preset {os.fspath(preset)!r}: {name} {problem}")


def _json_problem(path):
    if not os.path.isfile(path):
        return "is not a regular file"
    if os.path.getsize(path) > MAX_JSON_BYTES:
        return f"is larger than {MAX_JSON_BYTES} bytes"
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except json.JSONDecodeError as error:
        return f"is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    except RecursionError:
        return "is not usable JSON (nested too deeply)"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not isinstance(document, dict):
        return f"holds a JSON {type(document).__name__}, not an object"
    return None


class PresetLoading:
    """`from_preset` with the checks above; a base before the keras-hub
    class (`class PSResNetBackbone(PresetLoading, FeaturePyramidBackbone)`)."""

    @classmethod
    def from_preset(cls, preset, *args, **kwargs):
        """As keras-hub's; a preset that cannot be loaded is one
        `PresetError` line naming it (and the file, where known)."""
        check_preset(preset)
        try:
            return super().from_preset(preset, *args, **kwargs)
        except PresetError:
            raise
        except FileNotFoundError:
            raise  # keras-hub's message names the file and the preset
        except (ValueError, TypeError, KeyError, OSError) as error:
            name = os.fspath(preset) if isinstance(preset, os.PathLike) else preset
            first = str(error).strip().partition("\n")[0][:300]
            raise PresetError(
                f"preset {name!r}: cannot be loaded ({type(error).__name__}: {first})"
            ) from error


class StagedSaving:
    """`save_to_preset` as keras-hub's, each file written whole (temporary
    name, rename); a base before the keras-hub class. A backbone whose image
    converter class (the one whose `backbone_cls` it is) has a
    `preset_default()` also saves that converter where the preset has none,
    so that keras-hub's image tasks load the preset."""

    def save_to_preset(self, preset_dir, max_shard_size=10):
        with staged_directory(preset_dir) as staging:
            super().save_to_preset(staging, max_shard_size=max_shard_size)
            converter_cls = default_converter_class(type(self))
            present = any(
                os.path.exists(os.path.join(folder, CONVERTER_FILE))
                for folder in (preset_dir, staging)
            )
            if converter_cls is not None and not present:
                converter_cls.preset_default().save_to_preset(staging)


def default_converter_class(backbone_cls):
    """The `ImageConverter` subclass tied to `backbone_cls` (or its nearest
    base) that has a `preset_default()`, or None. keras-hub finds a preset's
    classes the same way: by the `backbone_cls` of the subclasses."""
    candidates = [
        converter for converter in _subclasses(ImageConverter)
        if hasattr(converter, "preset_default")
    ]
    for base in backbone_cls.__mro__:
        for converter in candidates:
            if converter.__dict__.get("backbone_cls", None) is base:
                return converter
    return None


def _subclasses(cls):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _subclasses(subclass)
