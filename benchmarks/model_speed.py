"""Training-step throughput of PS models against their standard twins.

Each pair is timed in one process, in interleaved rounds (this machine is
shared and noisy), with Keras' own compiled train step (`train_on_batch`:
forward, cross-entropy, backward and an SGD update on a fixed batch) on the
backend that KERAS_BACKEND names: `tf.function` without XLA on TensorFlow,
`jax.jit` on JAX, eager PyTorch. Reports images/s (medians) and PS/standard.

    python -m benchmarks.model_speed [--batch 8] [--rounds 7]
        [--pairs resnet50 resnext50_32x4d cifar_resnet20] [--quick] [--write-docs]

--quick is `--pairs cifar_resnet20 --batch 32 --rounds 3`; --write-docs
writes the table into docs/benchmarks.md (section model_speed-BACKEND, or
model_speed-BACKEND-quick).
"""

import argparse

import keras
import numpy as np

from benchmarks import report
from benchmarks import timing
from psconv_tf import models

# Input size per model family: ImageNet models at 224, CIFAR models at 32.
SIZES = {"cifar": 32}


def _size(name):
    return next((size for key, size in SIZES.items() if key in name), 224)


def train_step(name, batch):
    size = _size(name)
    model = models.get(name, input_shape=(size, size, 3))
    classes = model.output_shape[-1]
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, classes, size=(batch,))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=keras.backend.backend() == "jax",
    )
    return lambda: model.train_on_batch(images, labels)


def measure(names, batch, rounds):
    """Images per second of each model's train step (medians)."""
    steps = {name: train_step(name, batch) for name in names}
    seconds = timing.interleaved_medians(steps, rounds)  # traces in its warm-up
    return {name: batch / value for name, value in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pairs", nargs="+", default=["resnet50"],
                        help="standard model names; each runs against ps_<name>")
    parser.add_argument("--quick", action="store_true",
                        help="cifar_resnet20 only, batch 32, 3 rounds")
    report.add_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.batch, args.rounds = ["cifar_resnet20"], 32, 3
    lines = [f"backend={keras.backend.backend()}, batch {args.batch}, medians of "
             f"{args.rounds} interleaved rounds", "",
             "| model | input | standard images/s | PS images/s | PS / standard |",
             "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.pairs:
        result = measure([name, "ps_" + name], args.batch, args.rounds)
        standard, ps = result[name], result["ps_" + name]
        size = _size(name)
        lines.append(f"| {name} | {size}x{size} | {standard:.2f} | {ps:.2f} | "
                     f"{ps / standard:.2f}x |")
        print(lines[-1], flush=True)
    if args.write_docs:
        section = f"model_speed-{keras.backend.backend()}" + ("-quick" if args.quick else "")
        report.write_table(section, "benchmarks.model_speed", lines)


if __name__ == "__main__":
    main()
