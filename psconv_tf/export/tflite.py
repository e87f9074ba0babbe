"""TFLite conversion from a SavedModel, builtin operators only, and its checks."""

import os

from psconv_tf.export.calibration import representative_dataset
from psconv_tf.export.errors import ExportError
from psconv_tf.export.serving import SIGNATURE_KEY
from psconv_tf.export.serving import describe_op

QUANTIZATIONS = ("float32", "float16", "dynamic_int8", "int8")


def convert_to_tflite(
    saved_model_dir, quantization="float32", representative_data=None,
    num_samples=100, int8_input=None,
):
    """Converts a SavedModel's serving signature to a TFLite flatbuffer.

    Args:
        saved_model_dir: a SavedModel, e.g. from `export_saved_model`.
        quantization: "float32", "float16" (float16 weights),
            "dynamic_int8" (int8 weights, dynamic-range activations) or
            "int8" (integer-only: integer input, computation and output;
            needs `representative_data` and a float32 signature).
        representative_data: calibration data for "int8", see
            `representative_dataset`.
        num_samples: number of calibration images.
        int8_input: for "int8", the dtype of the input tensor: "int8"
            (default) or "uint8". Its scale and zero point come from
            calibration: (1, 0) for "uint8" when the calibration images
            span the pixel values 0 to 255. The output tensor is int8, with
            its own scale and zero point (float = scale * (q - zero point));
            see `io_quantization`.

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
        converter.inference_input_type = tf.as_dtype(int8_input or "int8")
        converter.inference_output_type = tf.int8
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
    # (though not a uint8 -> float cast, hence the float32 signature; the
    # converter's inference_input_type gives the file its uint8 input).
    converter.experimental_new_quantizer = False


def _conversion_error(error, saved_model_dir):
    """An ExportError naming the TensorFlow ops that TFLite lacks."""
    unsupported = sorted({
        describe_op(data.operator.name, data.location.call[0].name)
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
    """Operators that compute in float, and float inputs and outputs.

    An operator counts when one of its inputs is a float tensor; the
    model's inputs and outputs count when they are float tensors.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    types = flatbuffer_utils.TensorType
    float_types = (types.FLOAT32, types.FLOAT16)
    found = []
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            name = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
            inputs = [subgraph.tensors[i] for i in operator.inputs if i >= 0]
            if any(t.type in float_types for t in inputs):
                found.append(f"{name}({inputs[0].name.decode()})")
        for kind, indices in (("input", subgraph.inputs), ("output", subgraph.outputs)):
            found += [f"{kind} {subgraph.tensors[i].name.decode()}" for i in indices
                      if subgraph.tensors[i].type in float_types]
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



def io_quantization(flatbuffer):
    """{"input": (scale, zero point), "output": (scale, zero point)} of the
    first input and output of a quantized TFLite flatbuffer: an integer q
    stands for scale * (q - zero point). The interpreter's
    `get_input_details()` / `get_output_details()` give the same."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    subgraph = model.subgraphs[0]
    quantization = {}
    for kind, indices in (("input", subgraph.inputs), ("output", subgraph.outputs)):
        parameters = subgraph.tensors[indices[0]].quantization
        quantization[kind] = (float(parameters.scale[0]), int(parameters.zeroPoint[0]))
    return quantization
