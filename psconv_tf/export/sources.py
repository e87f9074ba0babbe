"""What export reads: a model from a zoo name, a `.keras` file or a run folder."""

import os
import re
import warnings
import zipfile

import keras

from psconv_tf import models
from psconv_tf.export.errors import ExportError
from psconv_tf.runtime import run_config
from psconv_tf.runtime.errors import InputError


def load_model(source, **model_kwargs):
    """The Keras model named by `source`.

    Args:
        source: a `keras.Model` (returned as is); a zoo name such as
            "ps_resnet50" (see `psconv_tf.models.list_models()`), built with
            `model_kwargs`; the path of a `.keras` file; or a training run
            directory, from which `best.keras` is loaded.
        **model_kwargs: arguments of `psconv_tf.models.get`, for zoo names
            only (e.g. num_classes, input_shape, weights).

    Returns:
        A `keras.Model`.

    Example:

    >>> model = load_model("ps_cifar_resnet20", num_classes=10)
    >>> model.name
    'ps_cifar_resnet20'
    """
    if isinstance(source, keras.Model):
        _reject_model_kwargs(model_kwargs, "a keras.Model")
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "Argument `source` must be a keras.Model, a zoo model name or a "
            f"path. Received: source={source!r}"
        )
    source = os.fspath(source)
    if source in models.list_models():
        weights = model_kwargs.pop("weights", None)
        model = models.get(source, **model_kwargs)
        if weights is not None:
            load_weights_file(model, os.fspath(weights))
        return model
    if os.path.isdir(source):
        _reject_model_kwargs(model_kwargs, "a training run directory")
        return _load_run(source)
    if os.path.isfile(source):
        _reject_model_kwargs(model_kwargs, "a .keras file")
        if not source.endswith(".keras"):
            raise ValueError(
                f"Unsupported model file {source!r}: expected a `.keras` file "
                "(Keras 3 format), a zoo model name or a training run "
                "directory."
            )
        return load_keras_file(source)
    if source.endswith(".keras") or os.sep in source:
        raise FileNotFoundError(f"No model file or directory at {source!r}.")
    raise ValueError(
        f"Unknown model {source!r}: not a zoo model name (see "
        "psconv_tf.models.list_models()), nor an existing `.keras` file or "
        "training run directory."
    )


def _reject_model_kwargs(model_kwargs, what):
    if model_kwargs:
        raise ValueError(
            f"Model arguments {sorted(model_kwargs)} apply to zoo model names "
            f"only, not to {what}."
        )


def load_weights_file(model, path):
    """Loads a Keras weights file (`.weights.h5`, or a `.keras` file's
    weights) into `model`; any failure is one line naming the file.

    Raises:
        FileNotFoundError: no file at `path`.
        ExportError: the file is unreadable or holds weights of another
            model (the message names a layer and the shapes that differ).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights file at {path!r}.")
    if not path.endswith((".weights.h5", ".keras", ".h5")):
        raise ExportError(
            f"{path!r} is not a Keras weights file (.weights.h5, or a .keras "
            "file). A PyTorch checkpoint loads with psconv_tf.load_torch(model, "
            "path); save that model as .keras and export the file."
        )
    # Keras warns about every part it skips before it raises; the error
    # below says what does not fit. Warnings of a load that succeeds stay.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except (ValueError, OSError, KeyError) as error:
            raise ExportError(_weights_error(path, model, error)) from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)


def _weights_error(path, model, error):
    """One line for Keras's error on loading weights that do not fit."""
    text = str(error)
    count = re.search(r"A total of (\d+) objects could not be loaded", text)
    differ = f"{count.group(1)} layer(s) differ; " if count else ""
    hint = ("weights of the same model built with other arguments "
            "(num_classes, input_shape, ...) or of another architecture?")
    shapes = re.search(r"variable\.shape=(\(.*?\)), Received: value\.shape=(\(.*?\))", text)
    variable = re.search(r"path=([^,\s]+)", text)
    if shapes:
        where = f"variable {variable.group(1)!r}" if variable else "a variable"
        return (f"Weights file {path!r} does not fit model {model.name!r}: {where} has "
                f"shape {shapes.group(1)} in the model and {shapes.group(2)} in the file "
                f"({differ}{hint})")
    counts = re.search(r"Layer '(.+?)' expected (\d+) variables, but received (\d+)", text)
    if counts:
        layer, expected, received = counts.groups()
        return (f"Weights file {path!r} does not fit model {model.name!r}: layer "
                f"{layer!r} has {expected} variable(s), the file {received} for it "
                f"({differ}{hint})")
    first_line = text.strip().partition("\n")[0]
    return f"{path!r} is not a readable weights file for model {model.name!r} ({first_line})."


def load_keras_file(path):
    """Loads a `.keras` file; a damaged one is an `ExportError` naming it."""
    if not zipfile.is_zipfile(path):
        raise ExportError(
            f"{path!r} is not a readable .keras file: it is not a zip archive "
            "(empty, truncated or another format)."
        )
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # Keras raises many types for damaged archives
        first_line = str(error).strip().partition("\n")[0]
        raise ExportError(
            f"{path!r} is not a readable .keras file ({type(error).__name__}: "
            f"{first_line})."
        ) from error


def _load_run(directory):
    folder = run_config.RunFolder(directory)
    if not os.path.isfile(folder.best_model):
        entries = sorted(os.listdir(directory))
        runs = [
            name for name in entries
            if os.path.isfile(run_config.RunFolder(os.path.join(directory, name)).best_model)
        ]
        hint = (
            f" It holds runs {runs}: export one of them." if runs else
            " It is written once an epoch has improved the monitored metric;"
            " export a `.keras` file explicitly otherwise."
        )
        raise FileNotFoundError(
            f"Training run directory {directory!r} has no {run_config.BEST_MODEL_FILE} "
            f"(found: {', '.join(entries) or 'nothing'}).{hint}"
        )
    return load_keras_file(folder.best_model)


def read_run_config(directory):
    """What export takes from a training run's `config.json`.

    Returns:
        dict: "image_size", (height, width) or None; "normalization",
        (mean, std) per channel for pixel values in [0, 1], or None (no
        config.json).

    Raises:
        ExportError: config.json is damaged (the message names it).
    """
    try:
        config = run_config.read_config(directory)
    except InputError as error:
        raise ExportError(str(error)) from None
    if config is None:
        return {"image_size": None, "normalization": None}
    return {"image_size": (config.image_size, config.image_size),
            "normalization": config.preprocessing.unit_statistics()}
