"""The command line: `python -m psconv_tf.export SOURCE OUTPUT_DIR ...`."""

import argparse
import math

from psconv_tf.export.errors import ExportError
from psconv_tf.export.exporter import FORMATS
from psconv_tf.export.exporter import export
from psconv_tf.export.serving import INPUT_DTYPES


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
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m psconv_tf.export",
        description=(
            "Export a model to a SavedModel (serving signature 'images' -> "
            "'logits' for the zoo's classifiers, else the model's output "
            "names) and TFLite flatbuffers with builtin operators only; the "
            "int8 file takes and returns integers (int8, or uint8 images with "
            "--input-dtype uint8) with their scale and zero point."
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
    zoo.add_argument("--weights", help="a .weights.h5 file (or a .keras file's "
                     "weights) to load into the zoo model")
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
    formats = [f for f in args.formats.split(",") if f]
    if args.representative_data is not None and "int8" not in formats:
        parser.error("--representative-data calibrates the int8 format: add int8 "
                     "to --formats")
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
            formats=formats,
            representative_data=args.representative_data,
            num_samples=args.num_samples,
            input_dtype=args.input_dtype,
            normalization=normalization,
            input_size=args.input_size,
            **model_kwargs,
        )
    except (ValueError, OSError, ExportError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for export_format, path in paths.items():
        print(f"{export_format}: {path}")
