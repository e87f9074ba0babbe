"""Export for deployment: a SavedModel with a serving signature, and TFLite.

A model (a zoo name, a `.keras` file or a training run directory) becomes a
SavedModel whose `serving_default` signature takes a batch of `images`
(float32 or uint8, channels last), optionally with the normalization and a
resize built in, and TFLite flatbuffers converted from that SavedModel:

- `float32`: the float model;
- `float16`: float16 weights, float32 computation;
- `dynamic_int8`: int8 weights, activations quantized on the fly;
- `int8`: integer-only computation, calibrated on a representative dataset
  (a directory of images, a `.npy`/`.npz` file, an array or a callable).

TFLite files use builtin operators only (no Flex / SELECT_TF_OPS), so they
run on the plain LiteRT runtime (`ai_edge_litert`). Command line:

    python -m psconv_tf.export ps_resnet50 exported/ --weights w.weights.h5 \\
        --formats saved_model,float32,int8 --input-dtype uint8 --normalize \\
        --representative-data calibration_images/

A training run directory (written by `training/imagenet.py` or
`training/cifar.py`) is read through two files only: `best.keras`, the model,
and `config.json`, of which two entries: `image_size`, the input size of a
model built with free spatial dimensions, and `preprocessing` {`mean`,
`std`} (per channel, for pixel values in [0, 255]), the normalization that
`normalization="auto"` (`--normalize`) builds in.
"""

import argparse
import json
import os
import re
import tempfile
import warnings

import keras
import numpy as np

from psconv_tf import models

FORMATS = ("saved_model", "float32", "float16", "dynamic_int8", "int8")
QUANTIZATIONS = FORMATS[1:]
INPUT_DTYPES = ("float32", "uint8")
# torchvision's ImageNet statistics, for pixel values scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RUN_MODEL_FILE = "best.keras"
RUN_CONFIG_FILE = "config.json"
SIGNATURE_KEY = "serving_default"
# TensorFlow ops that call back into the Python interpreter at run time.
PYTHON_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")
COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


class ExportError(Exception):
    """A model that cannot be exported as asked; the message says why."""


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
        return models.get(source, **model_kwargs)
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
        return keras.saving.load_model(source)
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


def _load_run(directory):
    model_path = os.path.join(directory, RUN_MODEL_FILE)
    if not os.path.isfile(model_path):
        entries = sorted(os.listdir(directory))
        runs = [
            name for name in entries
            if os.path.isfile(os.path.join(directory, name, RUN_MODEL_FILE))
        ]
        hint = (
            f" It holds runs {runs}: export one of them." if runs else
            " It is written once an epoch has improved the monitored metric;"
            " export a `.keras` file explicitly otherwise."
        )
        raise FileNotFoundError(
            f"Training run directory {directory!r} has no {RUN_MODEL_FILE} "
            f"(found: {', '.join(entries) or 'nothing'}).{hint}"
        )
    return keras.saving.load_model(model_path)


def read_run_config(directory):
    """What export takes from a training run's `config.json`.

    Returns:
        dict: "image_size", (height, width) or None; "normalization",
        (mean, std) per channel for pixel values in [0, 1], or None.
    """
    config_path = os.path.join(directory, RUN_CONFIG_FILE)
    config = {}
    if os.path.isfile(config_path):
        with open(config_path) as config_file:
            config = json.load(config_file)
    size = config.get("image_size")
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
    preprocessing = config.get("preprocessing", {})
    normalization = None
    if "mean" in preprocessing and "std" in preprocessing:
        normalization = tuple(
            tuple(value / 255.0 for value in preprocessing[key])
            for key in ("mean", "std")
        )
    return {"image_size": size, "normalization": normalization}


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
        if mean.shape != std.shape or np.any(std <= 0):
            raise ValueError(
                "Argument `normalization` must hold a mean and a positive std "
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
        A `keras.Model` with one input named "images".
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
        mean, std = (255.0 * np.asarray(v, "float32") for v in statistics)
        x = keras.layers.Normalization(
            mean=mean, variance=std**2, name="normalize"
        )(x)
    return keras.Model(images, model(x, training=False), name=f"{model.name}_serving")


def export_saved_model(model, directory, **serving_options):
    """Writes `model` as a SavedModel with a `serving_default` signature.

    The SavedModel needs only TensorFlow to run: `tf.saved_model.load(directory)
    .signatures["serving_default"](images=...)`.

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
    archive.write_out(directory, verbose=False)
    return directory


def _reject_python_ops(concrete_function, model):
    """A SavedModel cannot carry Python code: refuse tf.py_function & co."""
    graph = concrete_function.graph.as_graph_def()
    nodes = list(graph.node)
    for function in graph.library.function:
        nodes += function.node_def
    found = [
        _describe_op(node.op, node.name) for node in nodes if node.op in PYTHON_OPS
    ]
    if found:
        raise ExportError(
            f"Model {model.name!r} calls Python at run time: {'; '.join(found)}. "
            "A SavedModel or a TFLite file cannot carry Python code: write the "
            "layer with TensorFlow or keras.ops operations."
        )


def _describe_op(op_type, op_path):
    """`op_type` at `op_path`, with the layer whose name scope holds it."""
    op_path = op_path.split("@")[0]  # Drops the name of the traced function.
    scopes = op_path.split("/")[:-1]
    if not scopes:
        return f"{op_type} at {op_path!r}"
    # Tracing makes name scopes unique with a "_<n>" suffix.
    layer = re.sub(r"_\d+$", "", scopes[-1])
    return f"{op_type} at {op_path!r} (layer {layer!r})"


def representative_dataset(data, input_shape, num_samples=100):
    """Calibration inputs for full-integer quantization, one image at a time.

    Args:
        data: a directory of images (searched recursively; jpeg, png, bmp,
            gif), loaded as pixel values in [0, 255] and resized bilinearly
            to `input_shape`; a `.npy` / `.npz` file or an array of images
            (N, H, W, C); or a callable returning an iterable of images or
            batches. Files, arrays and callables must hold what the serving
            signature takes (e.g. pixel values when normalization is built
            in).
        input_shape: (height, width, channels) of the signature's images;
            height and width may be None (any) for files and arrays.
        num_samples: number of images to calibrate on.

    Returns:
        A callable yielding `[float32 image batch of 1]`, as
        `tf.lite.TFLiteConverter.representative_dataset` takes it.
    """
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(
            "Argument `num_samples` must be a positive integer. "
            f"Received: num_samples={num_samples!r}"
        )
    input_shape = tuple(input_shape)
    if isinstance(data, (str, os.PathLike)):
        load = _image_loader(os.fspath(data), input_shape)
    elif callable(data):
        load = data
    else:
        array = np.asarray(data)
        load = array.__iter__

    def generate():
        count = 0
        for item in load():
            batch = np.asarray(item)
            batch = batch[None] if batch.ndim == 3 else batch
            _check_calibration_batch(batch, input_shape)
            for image in batch:
                yield [image[None].astype("float32")]
                count += 1
                if count == num_samples:
                    return
        if count == 0:
            raise ValueError(f"The representative data {data!r} holds no image.")

    return generate


def _image_loader(path, input_shape):
    """A function that loads the images of `path`, for `input_shape`."""
    if os.path.isdir(path):
        height, width, channels = input_shape
        if None in (height, width) or channels not in COLOR_MODES:
            raise ValueError(
                "Images from a directory need a fixed input size and 1, 3 or "
                f"4 channels; the signature takes {input_shape}."
            )

        def load():
            return keras.utils.image_dataset_from_directory(
                path, labels=None, color_mode=COLOR_MODES[channels],
                batch_size=None, image_size=(height, width), seed=0,
                verbose=False,
            ).as_numpy_iterator()

        return load
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No representative data at {path!r}.")
    if path.endswith(".npy"):
        return lambda: np.load(path)
    if path.endswith(".npz"):
        with np.load(path) as archive:
            if len(archive.files) != 1:
                raise ValueError(
                    f"{path!r} must hold one array of images; it holds "
                    f"{archive.files}."
                )
            key = archive.files[0]
        return lambda: np.load(path)[key]
    raise ValueError(
        f"Unsupported representative data {path!r}: expected a directory of "
        "images, a .npy or a .npz file."
    )


def _check_calibration_batch(batch, input_shape):
    if batch.ndim != 4 or any(
        size is not None and size != got
        for size, got in zip(input_shape, batch.shape[1:])
    ):
        raise ValueError(
            f"Representative images must have shape {input_shape} (or a batch "
            f"of them); received a batch of shape {batch.shape}."
        )


def convert_to_tflite(
    saved_model_dir, quantization="float32", representative_data=None,
    num_samples=100, int8_input=None,
):
    """Converts a SavedModel's serving signature to a TFLite flatbuffer.

    Args:
        saved_model_dir: a SavedModel, e.g. from `export_saved_model`.
        quantization: "float32", "float16" (float16 weights),
            "dynamic_int8" (int8 weights, dynamic-range activations) or
            "int8" (integer-only computation; needs `representative_data`
            and a float32 signature).
        representative_data: calibration data for "int8", see
            `representative_dataset`.
        num_samples: number of calibration images.
        int8_input: for "int8", None (the model takes float32 and quantizes
            it) or "uint8" / "int8", the dtype of its input tensor, whose
            scale and zero point come from calibration: (1, 0) for "uint8"
            when the calibration images span the pixel values 0 to 255.

    Returns:
        The flatbuffer as bytes; it uses builtin TFLite operators only.
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Argument `quantization` must be one of {QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}"
        )
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' needs `representative_data` (a directory of "
            "images, a .npy/.npz file, an array or a callable)."
        )
    if int8_input not in (None, "uint8", "int8") or (
        int8_input is not None and quantization != "int8"
    ):
        raise ValueError(
            "Argument `int8_input` must be None, or 'uint8' or 'int8' with "
            f"quantization='int8'. Received: int8_input={int8_input!r}, "
            f"quantization={quantization!r}"
        )
    if not os.path.isdir(saved_model_dir):
        raise FileNotFoundError(f"No SavedModel at {saved_model_dir!r}.")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[SIGNATURE_KEY]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        _set_integer_only(converter, saved_model_dir, representative_data, num_samples)
        if int8_input is not None:
            converter.inference_input_type = tf.as_dtype(int8_input)
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # The converter's error types are private.
        raise _conversion_error(error, saved_model_dir) from error
    _require_builtin_operators(flatbuffer)
    if quantization == "int8":
        _require_integer_only(flatbuffer)
    return flatbuffer


def _set_integer_only(converter, saved_model_dir, representative_data, num_samples):
    import tensorflow as tf

    signature = tf.saved_model.load(saved_model_dir).signatures[SIGNATURE_KEY]
    images = signature.structured_input_signature[1]["images"]
    if images.dtype != tf.float32:
        raise ValueError(
            f"quantization='int8' needs a float32 signature; {saved_model_dir!r} "
            f"takes {images.dtype.name} images. Export the signature with "
            "input_dtype='float32' (the same pixel values) and pass "
            "int8_input='uint8' for a model that takes uint8 images."
        )
    calibration = representative_dataset(
        representative_data, images.shape[1:], num_samples
    )
    next(calibration())  # Bad data fails here, not inside the converter.
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # The default (MLIR) quantizer leaves convolutions of strided PSConv2D
    # layers in float: the flatbuffer quantizer quantizes every operator
    # (though not a uint8 -> float cast, hence the float32 signature).
    converter.experimental_new_quantizer = False


def _conversion_error(error, saved_model_dir):
    """An ExportError naming the TensorFlow ops that TFLite lacks."""
    unsupported = sorted({
        _describe_op(data.operator.name, data.location.call[0].name)
        for data in getattr(error, "errors", [])
        if data.operator.name and data.location.call
    })
    if not unsupported:
        return ExportError(f"TFLite conversion of {saved_model_dir!r} failed: {error}")
    return ExportError(
        f"TFLite has no builtin operator for: {'; '.join(unsupported)}. Exports "
        "use builtin operators only (no Flex / SELECT_TF_OPS): write the "
        "layer with operators that TFLite supports."
    )


def tflite_operators(flatbuffer):
    """Names of the operators a TFLite flatbuffer uses, sorted.

    Builtin operators have their schema name ("CONV_2D"); custom and Flex
    operators their custom code ("FlexSvd").
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    names = set()
    for index, code in enumerate(model.operatorCodes):
        if code.customCode:
            names.add(code.customCode.decode())
        else:
            names.add(flatbuffer_utils.opcode_to_name(model, index))
    return sorted(names)


def float_operators(flatbuffer):
    """Operators that compute in float: those with a float input, except
    the QUANTIZE operators at the integer model's input."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    types = flatbuffer_utils.TensorType
    float_types = (types.FLOAT32, types.FLOAT16)
    found = []
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            name = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
            inputs = [subgraph.tensors[i] for i in operator.inputs if i >= 0]
            if name != "QUANTIZE" and any(t.type in float_types for t in inputs):
                found.append(f"{name}({inputs[0].name.decode()})")
    return found


def _require_builtin_operators(flatbuffer):
    custom = [name for name in tflite_operators(flatbuffer) if not name.isupper()]
    if custom:
        raise ExportError(
            f"The TFLite model uses non-builtin operators {custom}; exports "
            "must run on builtin operators only."
        )


def _require_integer_only(flatbuffer):
    found = float_operators(flatbuffer)
    if found:
        raise ExportError(
            f"The int8 model still computes in float: {found[:10]}"
            f"{' ...' if len(found) > 10 else ''}."
        )


def export(
    source, output_dir, formats=("saved_model", "float32"),
    representative_data=None, num_samples=100, input_dtype="float32",
    normalization=None, input_size=None, **model_kwargs,
):
    """Exports `source` to `output_dir` in every format of `formats`.

    Args:
        source: see `load_model`.
        output_dir: directory for `saved_model/` and `model_<format>.tflite`.
        formats: some of "saved_model", "float32", "float16",
            "dynamic_int8", "int8". TFLite files are converted from the
            SavedModel, which is written in any case.
        representative_data, num_samples: calibration for "int8", see
            `representative_dataset`.
        input_dtype, normalization, input_size: the serving signature, see
            `serving_model`; normalization="auto" is the training run's
            (config.json) for a run directory, else ImageNet's. With
            input_dtype="uint8", the int8 file takes uint8 images too (see
            `convert_to_tflite`'s `int8_input`).
        **model_kwargs: for zoo names, see `load_model`.

    Returns:
        dict: format -> path of what was written.

    Example:

    >>> paths = export("ps_cifar_resnet20", "exported", formats=["float32"])
    >>> sorted(paths)
    ['float32', 'saved_model']
    """
    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(
            f"Argument `formats` must hold some of {FORMATS}. "
            f"Received: formats={formats!r}"
        )
    if "int8" in formats and representative_data is None:
        raise ValueError("Format 'int8' needs `representative_data`.")
    model = load_model(source, **model_kwargs)
    run = {"image_size": None, "normalization": None}
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        run = read_run_config(os.fspath(source))
    if normalization == "auto":
        normalization = run["normalization"] or "imagenet"
    signature = dict(
        normalization=normalization, input_size=input_size,
        image_size=run["image_size"],
    )
    os.makedirs(output_dir, exist_ok=True)
    saved_model_dir = os.path.join(output_dir, "saved_model")
    export_saved_model(model, saved_model_dir, input_dtype=input_dtype, **signature)
    paths = {"saved_model": saved_model_dir}
    for quantization in QUANTIZATIONS:
        if quantization not in formats:
            continue
        if quantization == "int8":
            flatbuffer = _convert_int8(
                model, saved_model_dir, input_dtype, signature,
                representative_data, num_samples,
            )
        else:
            flatbuffer = convert_to_tflite(saved_model_dir, quantization)
        path = os.path.join(output_dir, f"model_{quantization}.tflite")
        with open(path, "wb") as file:
            file.write(flatbuffer)
        paths[quantization] = path
    return paths


def _convert_int8(
    model, saved_model_dir, input_dtype, signature, representative_data,
    num_samples,
):
    """The int8 flatbuffer, from a float32 twin of a uint8 signature."""
    if input_dtype == "float32":
        return convert_to_tflite(
            saved_model_dir, "int8", representative_data, num_samples
        )
    with tempfile.TemporaryDirectory() as float_dir:
        export_saved_model(model, float_dir, input_dtype="float32", **signature)
        flatbuffer = convert_to_tflite(
            float_dir, "int8", representative_data, num_samples,
            int8_input="uint8",
        )
    scale, zero_point = _input_quantization(flatbuffer)
    if (scale, zero_point) != (1.0, 0):
        warnings.warn(
            f"The int8 model's uint8 input has scale {scale} and zero point "
            f"{zero_point}, not (1, 0): the calibration images do not span "
            "the pixel values 0 to 255. Feed it round(x / scale + zero_point) "
            "for pixel values x (the interpreter's input quantization).",
            stacklevel=3,
        )
    return flatbuffer


def _input_quantization(flatbuffer):
    """(scale, zero point) of the first input of a TFLite flatbuffer."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    subgraph = model.subgraphs[0]
    quantization = subgraph.tensors[subgraph.inputs[0]].quantization
    return float(quantization.scale[0]), int(quantization.zeroPoint[0])


def _int_list(text, length, name):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != length or min(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"{name} must be {length} positive integers separated by commas, "
            f"got {text!r}"
        )
    return tuple(values)


def _float_list(text):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m psconv_tf.export",
        description=(
            "Export a model to a SavedModel (serving signature 'images' -> "
            "outputs) and TFLite flatbuffers with builtin operators only."
        ),
    )
    parser.add_argument(
        "source",
        help="zoo model name (e.g. ps_resnet50), .keras file, or training run "
        "directory (its best.keras is exported)",
    )
    parser.add_argument("output_dir", help="where to write the exports")
    parser.add_argument(
        "--formats", default="saved_model,float32",
        help=f"comma-separated, of: {','.join(FORMATS)} (default: %(default)s)",
    )
    zoo = parser.add_argument_group("zoo models")
    zoo.add_argument("--num-classes", type=int, help="classifier outputs")
    zoo.add_argument(
        "--input-shape", type=lambda t: _int_list(t, 3, "--input-shape"),
        help="model input H,W,C (default: the architecture's)",
    )
    zoo.add_argument("--weights", help="a .weights.h5 file to load")
    serving = parser.add_argument_group("serving signature")
    serving.add_argument(
        "--input-dtype", choices=INPUT_DTYPES, default="float32",
        help="dtype of the served images (default: %(default)s)",
    )
    serving.add_argument(
        "--normalize", action="store_true",
        help="build in the normalization: images are pixel values in "
        "[0, 255], mapped to (x / 255 - mean) / std",
    )
    serving.add_argument(
        "--mean", type=_float_list,
        help="per-channel mean in [0, 1] for --normalize (default: the "
        "training run's for a run directory, else ImageNet's)",
    )
    serving.add_argument(
        "--std", type=_float_list,
        help="per-channel std in [0, 1] for --normalize (default: as --mean)",
    )
    serving.add_argument(
        "--input-size", type=lambda t: _int_list(t, 2, "--input-size"),
        help="H,W of the served images, resized to the model's input",
    )
    calibration = parser.add_argument_group("int8 calibration")
    calibration.add_argument(
        "--representative-data",
        help="directory of images, or .npy/.npz file of images as the "
        "signature takes them",
    )
    calibration.add_argument(
        "--num-samples", type=int, default=100,
        help="calibration images (default: %(default)s)",
    )
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.mean is None) != (args.std is None):
        parser.error("--mean and --std go together")
    if args.mean and not args.normalize:
        parser.error("--mean and --std apply with --normalize")
    normalization = None
    if args.normalize:
        normalization = (args.mean, args.std) if args.mean else "auto"
    model_kwargs = {
        key: value
        for key, value in (
            ("num_classes", args.num_classes),
            ("input_shape", args.input_shape),
            ("weights", args.weights),
        )
        if value is not None
    }
    try:
        paths = export(
            args.source, args.output_dir,
            formats=[f for f in args.formats.split(",") if f],
            representative_data=args.representative_data,
            num_samples=args.num_samples,
            input_dtype=args.input_dtype,
            normalization=normalization,
            input_size=args.input_size,
            **model_kwargs,
        )
    except (ValueError, FileNotFoundError, ExportError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for export_format, path in paths.items():
        print(f"{export_format}: {path}")


if __name__ == "__main__":
    main()
