"""The serving signature and the SavedModel that carries it."""

import re

import keras
import numpy as np

from psconv_tf.engine import autotune
from psconv_tf.runtime import files
from psconv_tf.export.errors import ExportError
from psconv_tf.runtime.statistics import IMAGENET_MEAN
from psconv_tf.runtime.statistics import IMAGENET_STD
from psconv_tf.runtime.statistics import to_pixels

INPUT_DTYPES = ("float32", "uint8")
SIGNATURE_KEY = "serving_default"
# TensorFlow ops that call back into the Python interpreter at run time.
PYTHON_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")


def _normalization_statistics(normalization):
    """(mean, std) per channel for pixel values in [0, 1], or None."""
    if normalization is None:
        return None
    if normalization == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if (
        isinstance(normalization, (tuple, list))
        and len(normalization) == 2
        and not isinstance(normalization[0], str)
    ):
        mean, std = (np.asarray(v, "float32").reshape(-1) for v in normalization)
        if (mean.shape != std.shape or not np.all(np.isfinite(mean))
                or not np.all(np.isfinite(std)) or np.any(std <= 0)):
            raise ValueError(
                "Argument `normalization` must hold a finite mean and a finite "
                "positive std "
                f"of equal length. Received: normalization={normalization!r}"
            )
        return tuple(mean.tolist()), tuple(std.tolist())
    raise ValueError(
        "Argument `normalization` must be None, 'imagenet' or a (mean, std) "
        f"pair. Received: normalization={normalization!r}"
    )


def _image_size(value, name):
    if value is None:
        return None
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or not all(
        v is None or (isinstance(v, (int, np.integer)) and v > 0) for v in size
    ):
        raise ValueError(
            f"Argument `{name}` must be an int, or (height, width) of positive "
            f"ints or None. Received: {name}={value!r}"
        )
    return tuple(None if v is None else int(v) for v in size)


def serving_model(
    model, input_dtype="float32", normalization=None, input_size=None,
    image_size=None,
):
    """`model` behind the preprocessing of its serving signature.

    Args:
        model: a `keras.Model` taking one channels-last image batch.
        input_dtype: "float32" or "uint8", the dtype of the served images.
        normalization: None (images go to the model as they are, cast to
            float32), "imagenet", or (mean, std) per channel: images are then
            pixel values in [0, 255] and become (x / 255 - mean) / std.
        input_size: None (images have the model's input size), or
            (height, width) of the served images, each possibly None (any),
            resized bilinearly to the model's input size.
        image_size: (height, width) of the model's input where the model
            leaves it free (None); ignored otherwise.

    Returns:
        A `keras.Model` with one input named "images" and a dict of named
        outputs (see `output_names`).
    """
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(
            f"Argument `input_dtype` must be one of {INPUT_DTYPES}. "
            f"Received: input_dtype={input_dtype!r}"
        )
    statistics = _normalization_statistics(normalization)
    input_size = _image_size(input_size, "input_size")
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ValueError(
            f"Model {model.name!r} must take one batch of images (rank 4); "
            f"its inputs are {[tuple(x.shape) for x in model.inputs]}."
        )
    height, width, channels = model.inputs[0].shape[1:]
    if None in (height, width):
        height, width = _image_size(image_size, "image_size") or (height, width)
    if statistics is not None and len(statistics[0]) not in (1, channels):
        raise ValueError(
            f"Argument `normalization` has {len(statistics[0])} channels; "
            f"model {model.name!r} takes {channels}."
        )
    served_size = input_size or (height, width)
    images = keras.Input(served_size + (channels,), dtype=input_dtype, name="images")
    x = keras.ops.cast(images, "float32")
    if input_size is not None and input_size != (height, width):
        if None in (height, width):
            raise ValueError(
                f"Cannot resize to the input of model {model.name!r}: its "
                "size is free; pass `image_size`."
            )
        x = keras.layers.Resizing(height, width, name="resize")(x)
    if statistics is not None:
        # (x - mean) / std in pixel units, as `psconv_tf.runtime.statistics.normalize`.
        mean, std = (np.asarray(to_pixels(v), "float32") for v in statistics)
        x = keras.layers.Normalization(
            mean=mean, variance=std**2, name="normalize"
        )(x)
    outputs = model(x, training=False)
    if not isinstance(outputs, dict):
        outputs = dict(zip(output_names(model), keras.tree.flatten(outputs)))
    return keras.Model(images, outputs, name=f"{model.name}_serving")


def output_names(model):
    """The names of a model's outputs in its serving signature.

    A model with one output whose last layer has no activation (the zoo's
    classifiers, any model ending in a plain `Dense`) serves "logits";
    other models serve their Keras output names (e.g. "predictions" for
    `keras.applications` classifiers, whose last layer applies the softmax),
    and dict outputs keep their keys.

    >>> from psconv_tf import models
    >>> output_names(models.get("cifar_resnet20"))
    ['logits']
    >>> inputs = keras.Input((4,))
    >>> outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(inputs)
    >>> output_names(keras.Model(inputs, outputs))
    ['predictions']
    """
    names = list(getattr(model, "output_names", None) or [model.layers[-1].name])
    if len(names) == 1:
        activation = getattr(model.get_layer(names[0]), "activation", None)
        if activation is keras.activations.linear:
            return ["logits"]
    return names


# No data-dependent branch in the graph: TFLite's int8 calibration cannot
# quantize one (see `autotune.branch_free`).
@autotune.branch_free()
def export_saved_model(model, directory, **serving_options):
    """Writes `model` as a SavedModel with a `serving_default` signature.

    The folder is written under a temporary name and renamed when complete:
    a killed export leaves no partial SavedModel, and a previous one at
    `directory` survives until the new one replaces it.

    The SavedModel needs only TensorFlow to run: `tf.saved_model.load(directory)
    .signatures["serving_default"](images=...)` returns a dict of outputs,
    {"logits": ...} for the zoo's classifiers (see `output_names`).

    Args:
        model: a `keras.Model`.
        directory: where to write the SavedModel.
        **serving_options: input_dtype, normalization, input_size,
            image_size (see `serving_model`).

    Returns:
        `directory`.
    """
    import tensorflow as tf

    serving = serving_model(model, **serving_options)
    spec = serving.inputs[0]
    signature = [tf.TensorSpec(spec.shape, spec.dtype, name="images")]
    # The endpoint tracks the variables it uses; tracking the model as well
    # would retrace every layer when writing.
    archive = keras.export.ExportArchive()
    try:
        function = archive.add_endpoint(
            "serve", lambda images: serving(images, training=False), signature
        )
        concrete_function = function.get_concrete_function(*signature)
    except Exception as error:  # Any failure of user code while tracing.
        raise ExportError(
            f"Could not trace model {model.name!r} into a TensorFlow graph: a "
            f"layer's call() does not run on symbolic tensors.\n{error}"
        ) from error
    _reject_python_ops(concrete_function, model)
    with files.atomic_path(directory) as temporary:
        archive.write_out(temporary, verbose=False)
    return directory


def _reject_python_ops(concrete_function, model):
    """A SavedModel cannot carry Python code: refuse tf.py_function & co."""
    graph = concrete_function.graph.as_graph_def()
    nodes = list(graph.node)
    for function in graph.library.function:
        nodes += function.node_def
    found = [
        describe_op(node.op, node.name) for node in nodes if node.op in PYTHON_OPS
    ]
    if found:
        raise ExportError(
            f"Model {model.name!r} calls Python at run time: {'; '.join(found)}. "
            "A SavedModel or a TFLite file cannot carry Python code: write the "
            "layer with TensorFlow or keras.ops operations."
        )


def describe_op(op_type, op_path):
    """`op_type` at `op_path`, with the layer whose name scope holds it."""
    op_path = op_path.split("@")[0]  # Drops the name of the traced function.
    scopes = op_path.split("/")[:-1]
    if not scopes:
        return f"{op_type} at {op_path!r}"
    # Tracing makes name scopes unique with a "_<n>" suffix.
    layer = re.sub(r"_\d+$", "", scopes[-1])
    return f"{op_type} at {op_path!r} (layer {layer!r})"

