"""`export`: a model to a SavedModel and TFLite files in one call."""

import os
import tempfile
import warnings

from psconv_tf.export.errors import ExportError
from psconv_tf.freeze import freeze
from psconv_tf.export.calibration import representative_dataset
from psconv_tf.export.serving import export_saved_model
from psconv_tf.export.serving import serving_model
from psconv_tf.export.sources import load_model
from psconv_tf.export.sources import read_run_config
from psconv_tf.export.tflite import QUANTIZATIONS
from psconv_tf.export.tflite import convert_to_tflite
from psconv_tf.export.tflite import io_quantization
from psconv_tf.runtime import files

FORMATS = ("saved_model",) + QUANTIZATIONS


def export(
    source, output_dir, formats=("saved_model", "float32"),
    representative_data=None, num_samples=100, input_dtype="float32",
    normalization=None, input_size=None, **model_kwargs,
):
    """Exports `source` to `output_dir` in every format of `formats`.

    Args:
        source: see `load_model`. Its `DynamicPSConv2D` layers are frozen
            to the static `PSConv2D` they compute in inference.
        output_dir: directory for `saved_model/` and `model_<format>.tflite`,
            each written under a temporary name and renamed when complete.
        formats: some of "saved_model", "float32", "float16",
            "dynamic_int8", "int8". TFLite files are converted from the
            SavedModel, which is written in any case.
        representative_data, num_samples: calibration for "int8", see
            `representative_dataset`.
        input_dtype, normalization, input_size: the serving signature, see
            `serving_model`; normalization="auto" is the training run's
            (config.json) for a run directory, else ImageNet's. The int8
            file takes int8 images, or uint8 ones with input_dtype="uint8"
            (see `convert_to_tflite`'s `int8_input`), and returns int8.
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
    # A dynamic PSConv model exports as its static (frozen) twin.
    model = freeze(load_model(source, **model_kwargs))
    run = {"image_size": None, "normalization": None}
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        run = read_run_config(os.fspath(source))
    if normalization == "auto":
        normalization = run["normalization"] or "imagenet"
    signature = dict(
        normalization=normalization, input_size=input_size,
        image_size=run["image_size"],
    )
    if "int8" in formats:  # Bad calibration data fails before anything is written.
        images = serving_model(model, **signature).inputs[0]
        next(representative_dataset(representative_data, images.shape[1:], num_samples)())
    _check_output_dir(output_dir)
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
        files.write_bytes(path, flatbuffer)
        paths[quantization] = path
    return paths


def _check_output_dir(output_dir):
    """Creates `output_dir`; an `ExportError` says why it cannot be written."""
    output_dir = os.fspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ExportError(f"Output directory {output_dir!r} is a file.")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise ExportError(
            f"Cannot write to output directory {output_dir!r} "
            f"({error.strerror or type(error).__name__})."
        ) from None


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
    scale, zero_point = io_quantization(flatbuffer)["input"]
    if (scale, zero_point) != (1.0, 0):
        warnings.warn(
            f"The int8 model's uint8 input has scale {scale} and zero point "
            f"{zero_point}, not (1, 0): the calibration images do not span "
            "the pixel values 0 to 255. Feed it round(x / scale + zero_point) "
            "for pixel values x (the interpreter's input quantization).",
            stacklevel=3,
        )
    return flatbuffer

