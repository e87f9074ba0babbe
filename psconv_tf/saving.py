"""What Keras needs to load what this package saves, after `import psconv_tf`.

Keras finds a saved class by its registered name ("psconv_tf>PSConv2D"),
which it knows once the module defining the class has run. `import
psconv_tf` runs the core's modules (the layers, the zoo). The classes of the
parts with optional dependencies, `psconv_tf.hub` (keras-hub),
`psconv_tf.training` and `psconv_tf.detection` (TensorFlow), are registered
under their names as `Deferred` placeholders: Keras calls a placeholder's
`from_config`, which imports the defining module (whose decorator then
registers the real class in its place) and hands the config on, or raises
one line naming what to install. Nothing optional is imported before a file
needs it, so `import psconv_tf` stays free of TensorFlow on JAX and PyTorch.

keras-hub looks classes up itself and wants the real ones (a preset's class
must be a subclass of the one `from_preset` is called on): `psconv_tf.hub`
is imported as soon as keras-hub is, by a one-shot import hook, or at once
if keras-hub is imported already.

`load_model(path)` checks a `.keras` file's config before Keras parses it,
so that a class nobody registers, or one whose dependency is missing, is one
line naming it and the import or extra it needs, not a dump of the config.
"""

import importlib
import importlib.abc
import importlib.util
import json
import os
import sys
import warnings
import zipfile

import keras

# Registered name -> the module that registers it.
DEFERRED_CLASSES = {
    "psconv_tf>PSResNetBackbone": "psconv_tf.hub",
    "psconv_tf>PSResNetImageConverter": "psconv_tf.hub",
    "psconv_tf>PSResNetImageClassifierPreprocessor": "psconv_tf.hub",
    "psconv_tf>PSResNetImageClassifier": "psconv_tf.hub",
    "psconv_tf>ConvertedBackbone": "psconv_tf.hub",
    "psconv_tf>ConvertedImageConverter": "psconv_tf.hub",
    "psconv_tf>ConvertedImageClassifierPreprocessor": "psconv_tf.hub",
    "psconv_tf>ConvertedImageClassifier": "psconv_tf.hub",
    "psconv_training>CoupledWeightDecaySGD": "psconv_tf.training",
    "psconv_tf>WarmupPiecewise": "psconv_tf.training",
    "psconv_tf>MultiClassNMS": "psconv_tf.detection.nms",
    "psconv_tf>StrideAnchorGenerator": "psconv_tf.detection.anchors",
    "psconv_tf>PSRetinaNetBackbone": "psconv_tf.detection.neck",
}
# What each optional module imports, and the extra that installs it.
REQUIREMENTS = {
    "psconv_tf.hub": (("keras_hub",), "detect"),
    "psconv_tf.training": (("tensorflow",), "cpu"),
    "psconv_tf.detection.nms": (("tensorflow",), "cpu"),
    "psconv_tf.detection.anchors": (("tensorflow", "keras_hub"), "cpu,detect"),
    "psconv_tf.detection.neck": (("keras_hub",), "detect"),
}
OWN_PACKAGES = ("psconv_tf", "psconv_training")
CONFIG_MEMBER = "config.json"  # of a .keras archive
MAX_CONFIG_BYTES = 64 * 2**20


class Deferred:
    """Stands for the class `name` of `module` until a file needs it."""

    def __init__(self, name, module):
        self.name, self.module = name, module

    def missing(self):
        """A line saying what to install for `module`, or None."""
        dependencies, extra = REQUIREMENTS[self.module]
        absent = [d for d in dependencies if importlib.util.find_spec(d) is None]
        if not absent:
            return None
        return (
            f"{self.name} is defined in {self.module}, which needs "
            f"{' and '.join(absent)}: pip install \"psconv-tf[{extra}]\""
        )

    def resolve(self):
        problem = self.missing()
        if problem:
            raise ImportError(problem)
        importlib.import_module(self.module)
        # The global registry: Keras looks names up in a copy of it, taken
        # when loading began, which still holds the placeholder.
        cls = keras.saving.get_custom_objects().get(self.name)
        if cls is None or isinstance(cls, Deferred):
            raise ImportError(f"{self.module} does not define {self.name}")
        return cls

    def from_config(self, config):
        return self.resolve().from_config(config)

    def __repr__(self):
        return f"Deferred({self.name!r}, {self.module!r})"


def register_optional_classes():
    """Registers the `Deferred` placeholders and the keras-hub hook."""
    registry = keras.saving.get_custom_objects()
    for name, module in DEFERRED_CLASSES.items():
        registry.setdefault(name, Deferred(name, module))
    if "keras_hub" in sys.modules:
        _import_quietly("psconv_tf.hub")
    elif importlib.util.find_spec("keras_hub") is not None:
        if not any(isinstance(f, _ImportAfter) for f in sys.meta_path):
            sys.meta_path.insert(0, _ImportAfter("keras_hub", "psconv_tf.hub"))


class _ImportAfter(importlib.abc.MetaPathFinder):
    """Imports `follower` right after `leader` has been imported, once.

    Python has no post-import hook; this finder asks the other finders for
    `leader`'s spec and wraps that spec's loader, so that executing the
    module also imports `follower`."""

    def __init__(self, leader, follower):
        self.leader, self.follower = leader, follower
        self._searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.leader or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        exec_module, follower = spec.loader.exec_module, self.follower

        def exec_then_follow(module):
            exec_module(module)
            _import_quietly(follower)

        spec.loader.exec_module = exec_then_follow
        return spec


def _import_quietly(module):
    """Imports `module`; a failure warns in one line instead of breaking the
    import that triggered it."""
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - whatever it is, say it once
        warnings.warn(
            f"{module} could not be imported ({type(error).__name__}: "
            f"{_first_line(error)}); its classes load once it can be.",
            stacklevel=2,
        )


def load_model(path, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model` for files this package (or anyone) saved,
    with one-line errors.

    Before Keras parses the file, its config is read and every registered
    class name in it checked: a class of this package whose dependency is
    missing names the extra to install (an `ImportError`); a class that no
    imported module registers (another version of this package, or the
    user's own code not imported yet) is named with its module (a
    `ValueError`). A missing, empty, truncated or damaged file, and any
    error Keras raises while loading, is a `ValueError` naming the file with
    the first line of the cause.

    Args:
        path: a `.keras` file.
        custom_objects, compile, safe_mode: as for `keras.saving.load_model`.

    Returns:
        The model.
    """
    path = os.fspath(path)
    config = read_keras_config(path)
    problem = unresolved_class(config, custom_objects)
    if problem:
        kind, line = problem
        raise kind(f"{path}: {line}")
    try:
        return keras.saving.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    except Exception as error:  # noqa: BLE001 - Keras raises many types
        raise ValueError(
            f"{path}: cannot be loaded ({type(error).__name__}: {_first_line(error)})"
        ) from error


def read_keras_config(path):
    """The model config of the `.keras` archive at `path`, checked."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(
            f"{path}: a directory, not a .keras file (a keras-hub preset loads with "
            "its class's from_preset)"
        )
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a regular file (a .keras file is a zip archive)")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a readable .keras file: not a zip archive (empty, "
            "truncated or another format)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(CONFIG_MEMBER)
            if info.file_size > MAX_CONFIG_BYTES:
                raise ValueError(
                    f"{path}: its {CONFIG_MEMBER} is {info.file_size} bytes, more "
                    f"than the {MAX_CONFIG_BYTES} a model config can take"
                )
            text = archive.read(info)
        return json.loads(text)
    except KeyError:
        raise ValueError(f"{path}: not a .keras file (no {CONFIG_MEMBER} in the archive)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path}: damaged archive ({_first_line(error)})") from None
    except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path}: its {CONFIG_MEMBER} is not usable JSON ({type(error).__name__})"
        ) from None


def unresolved_class(config, custom_objects=None):
    """The first class in `config` that Keras could not build here, as
    (exception type, one line), or None."""
    for entry in _serialized_objects(config):
        name, module = entry.get("registered_name"), entry.get("module") or ""
        if isinstance(name, str) and ">" in name:
            found = (custom_objects or {}).get(name) or keras.saving.get_registered_object(name)
            if isinstance(found, Deferred):
                if found.missing():
                    return ImportError, found.missing()
            elif found is None:
                return ValueError, _unregistered(name, module, entry.get("class_name"))
        elif module.split(".")[0] == "keras_hub" and importlib.util.find_spec("keras_hub") is None:
            return ImportError, (
                f"{entry.get('class_name')} is a keras-hub class: pip install "
                "\"psconv-tf[detect]\" (or keras-hub)"
            )
    return None


def _unregistered(name, module, class_name):
    package = name.split(">")[0]
    if package in OWN_PACKAGES:
        return (
            f"{name} is not a class of this version of psconv_tf (saved by "
            "another version?)"
        )
    return (
        f"class {class_name or name} (registered as {name!r}, module "
        f"{module or 'unknown'}) is not registered here: import the module that "
        "defines it before loading, or pass it in custom_objects"
    )


def _serialized_objects(config):
    """Every dict of `config` that describes a serialized object."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node:
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _first_line(error):
    return str(error).strip().partition("\n")[0][:300] or type(error).__name__
