"""TFLite latency of a PS network against its standard twin, on this CPU.

Both models are exported with `psconv_tf.export` (float32 by default), run
with the LiteRT interpreter and its default XNNPACK delegate at batch 1, and
timed in interleaved rounds (this machine is shared and noisy): each round
times one inference of each model (`timing.interleaved_medians`). Reported:
the median over rounds, per model and thread count, and the ratio PS /
standard; --write-docs writes the table into docs/benchmarks.md (section
tflite_latency).

    python -m benchmarks.tflite_latency [--architecture resnet50] \\
        [--threads 1,2] [--rounds 50] [--quantization float32] [--write-docs]
"""

import argparse
import os
import tempfile

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from benchmarks import report
from benchmarks import timing
from psconv_tf import export
from psconv_tf import models


def convert(name, image_size, quantization, directory):
    """A zoo model, random weights, as a TFLite flatbuffer."""
    model = models.get(name, input_shape=(image_size, image_size, 3))
    saved_model = export.export_saved_model(model, os.path.join(directory, name))
    calibration = None
    if quantization == "int8":
        rng = np.random.default_rng(0)
        calibration = rng.normal(size=(8, image_size, image_size, 3)).astype("float32")
    return export.convert_to_tflite(
        saved_model, quantization, calibration, num_samples=8
    )


def time_rounds(flatbuffers, threads, rounds, warmup=3):
    """Median seconds per inference of each flatbuffer, in interleaved rounds."""
    runners = {}
    for name, flatbuffer in flatbuffers.items():
        interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
        interpreter.allocate_tensors()
        details = interpreter.get_input_details()[0]
        image = np.random.default_rng(0).normal(size=details["shape"])
        interpreter.set_tensor(details["index"], image.astype(details["dtype"]))
        runners[name] = interpreter.invoke
    return timing.interleaved_medians(runners, rounds, warmup=warmup)


def table_header(names):
    """The table's header and separator rows, for (standard, PS) model names."""
    return (f"| threads | {names[0]} ms | {names[1]} ms | PS / standard |\n"
            "|---|---|---|---|")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--architecture", default="resnet50",
        help="zoo architecture NAME, compared with ps_NAME (default: %(default)s)",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--threads", default="1,2", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=50,
                        help="timed rounds (default: %(default)s)")
    parser.add_argument(
        "--quantization", choices=export.QUANTIZATIONS, default="float32"
    )
    report.add_argument(parser)
    args = parser.parse_args()
    if (
        args.architecture not in models.list_models()
        or args.architecture.startswith("ps_")
    ):
        parser.error(
            "--architecture must be a standard zoo name (its PS twin is "
            f"ps_<name>), got {args.architecture!r}"
        )
    threads = [int(t) for t in args.threads.split(",")]
    names = (args.architecture, "ps_" + args.architecture)

    with tempfile.TemporaryDirectory() as directory:
        flatbuffers = {
            name: convert(name, args.image_size, args.quantization, directory)
            for name in names
        }
    lines = [f"TFLite {args.quantization}, XNNPACK, batch 1, "
             f"{args.image_size}x{args.image_size}, medians of {args.rounds} "
             "interleaved rounds:", "", table_header(names)]
    print("\n".join(lines), flush=True)
    for thread_count in threads:
        medians = time_rounds(flatbuffers, thread_count, args.rounds)
        standard, ps = (medians[name] * 1e3 for name in names)
        lines.append(f"| {thread_count} | {standard:.1f} | {ps:.1f} | {ps / standard:.2f}x |")
        print(lines[-1], flush=True)
    if args.write_docs:
        report.write_table("tflite_latency", "benchmarks.tflite_latency", lines)


if __name__ == "__main__":
    main()
