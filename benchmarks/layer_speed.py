"""PSConv2D against Conv2D of the same shape: forward and forward+backward.

Every variant of a shape is timed in the same process, in interleaved rounds
(this machine is shared and noisy), and reported as the ratio of medians to
Conv2D; backward passes differentiate sum(y ** 2) (see `timing.py`). Runs on
the Keras backend that KERAS_BACKEND names. Variants:
- conv2d: `keras.layers.Conv2D`, the standard 3x3 convolution;
- psconv2d: `PSConv2D` with the paper's pattern (1, 2, 1, 4), "auto" (the
  tuner measures it eagerly first, per mode) or the one --implementation
  names;
- naive: the same function as three dense convolutions at rates 1, 2 and 4
  with masked kernels (3x the multiply-accumulates);
- dilated: `Conv2D(dilation_rate=2)`, the paper's reference point.
Shape sets: resnet50 (the 3x3 convolutions of ResNet-50, N = 8), small
(N = 32: 16@28², 32@14², 64@7², the CIFAR-ResNet sizes), paper ((N, 64, 56,
56), the paper's speed setting with N = --paper-batch), grouped (ResNeXt's
128@56² with groups = 32, N = 8; conv2d is then `psconv_tf.NativeConv2D`
where it exists, and the naive and dilated columns are left empty).

    python -m benchmarks.layer_speed [--sets resnet50 small paper grouped]
        [--rounds 11] [--implementation NAME] [--quick] [--write-docs]

--quick is `--sets small --rounds 3`; --write-docs writes the table into
docs/benchmarks.md (section layer_speed-BACKEND, or
layer_speed-BACKEND-quick).
"""

import argparse

import keras
import numpy as np
from keras import ops

from benchmarks import report
from benchmarks import timing
from psconv_tf import NativeConv2D
from psconv_tf import PSConv2D
from psconv_tf import tune

SETS = {
    "resnet50": [(8, 64, 56, 1), (8, 128, 28, 1), (8, 256, 14, 1), (8, 512, 7, 1)],
    "small": [(32, 16, 28, 1), (32, 32, 14, 1), (32, 64, 7, 1)],
    "paper": [(None, 64, 56, 1)],
    "grouped": [(8, 128, 56, 32)],
}


class NaivePSConv(keras.layers.Layer):
    """PSConv as one masked dense convolution per rate (the textbook form)."""

    def __init__(self, reference, **kwargs):
        super().__init__(**kwargs)
        self.reference = reference

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=self.reference.kernel.shape, initializer="glorot_uniform"
        )
        matrix = self.reference.dilation_matrix()
        self.masks = {
            int(rate): (matrix == rate).T.astype("float32")
            for rate in np.unique(matrix)
        }

    def call(self, x):
        return sum(
            ops.conv(x, self.kernel * mask, padding="same", dilation_rate=rate)
            for rate, mask in self.masks.items()
        )


def _psconv(channels, groups, implementation):
    kwargs = dict(padding="same", use_bias=False, groups=groups)
    if implementation:
        kwargs["implementation"] = implementation
    return PSConv2D(channels, 3, **kwargs)


def _standard(channels, groups):
    conv = NativeConv2D if groups > 1 else keras.layers.Conv2D
    return conv(channels, 3, padding="same", use_bias=False, groups=groups)


def variants(channels, groups, implementation):
    ps = _psconv(channels, groups, implementation)
    result = {"conv2d": _standard(channels, groups), "psconv2d": ps}
    if groups == 1:
        result["naive"] = NaivePSConv(ps)
        result["dilated"] = keras.layers.Conv2D(
            channels, 3, padding="same", dilation_rate=2, use_bias=False
        )
    return result


def measure(batch, channels, size, groups, rounds, implementation=None):
    x = np.random.default_rng(0).normal(size=(batch, size, size, channels))
    x = x.astype("float32")
    layers = variants(channels, groups, implementation)
    layers["psconv2d"].build(x.shape)
    for training in (False, True):  # "auto" measures now, eagerly, per mode
        tune(layers["psconv2d"], x, training=training)
    runs = {}
    for name, layer in layers.items():
        for mode, run in timing.runners(layer, x).items():
            runs[(name, mode)] = run
    return timing.interleaved_medians(runs, rounds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["resnet50", "small", "paper"],
                        choices=sorted(SETS))
    parser.add_argument("--paper-batch", type=int, default=16,
                        help="N of the paper's (N, 64, 56, 56) setting; 200 there")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--implementation", default=None,
                        help="PSConv2D(implementation=...); its default if unset")
    parser.add_argument("--quick", action="store_true",
                        help="the small shapes only, 3 rounds (--sets small --rounds 3)")
    report.add_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.sets, args.rounds = ["small"], 3
    lines = [f"backend={keras.backend.backend()}, medians of {args.rounds} rounds, "
             "loss sum(y**2)", "",
             "| shape (N, C, H, W) | groups | mode | Conv2D ms | PSConv2D | naive | dilated d=2 |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.sets:
        for batch, channels, size, groups in SETS[name]:
            batch = batch or args.paper_batch
            result = measure(batch, channels, size, groups, args.rounds, args.implementation)
            for mode in ("forward", "forward+backward"):
                base = result[("conv2d", mode)]
                cells = [
                    f"{result[(v, mode)] / base:.2f}x" if (v, mode) in result else "-"
                    for v in ("psconv2d", "naive", "dilated")
                ]
                lines.append(f"| ({batch}, {channels}, {size}, {size}) | {groups} | {mode} | "
                             f"{base * 1e3:.2f} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    if args.write_docs:
        section = f"layer_speed-{keras.backend.backend()}" + ("-quick" if args.quick else "")
        report.write_table(section, "benchmarks.layer_speed", lines)


if __name__ == "__main__":
    main()
