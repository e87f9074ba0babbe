"""Where PSConv2D's time goes: its convolutions, or its channel reads.

For each shape and implementation, times (TensorFlow, `tf.function`,
interleaved rounds, loss sum(y ** 2)) the raw convolution of that shape
(`NativeConv2D`), PSConv2D, and PSConv2D with every convolution replaced by a
near-free stand-in of the same output shape: what remains is the cost of the
plan's splits, concatenations, reshapes, masks and sums.

    python -m benchmarks.layer_breakdown [--rounds 5]
        [--cases 8,128,56,32,split 32,16,28,1,masked] [--write-docs]
"""

import argparse

import numpy as np
from keras import ops

from benchmarks import report
from benchmarks import timing
from psconv_tf import NativeConv2D
from psconv_tf import PSConv2D
from psconv_tf.engine import rate_conv

CASES = ("8,128,56,32,split", "8,128,56,32,masked", "32,16,28,1,split",
         "32,16,28,1,masked")


def _stand_in(self, inputs, kernel):
    """A near-free op with the convolution's output shape (stride 1, same)."""
    return ops.mean(inputs, axis=-1, keepdims=True) * ops.mean(kernel, axis=(0, 1, 2))


def measure(batch, channels, size, groups, implementation, rounds):
    x = np.random.default_rng(0).normal(size=(batch, size, size, channels)).astype("float32")
    kwargs = dict(padding="same", use_bias=False, groups=groups)
    layers = {
        "conv": NativeConv2D(channels, 3, **kwargs),
        "psconv": PSConv2D(channels, 3, implementation=implementation, **kwargs),
        "reads only": PSConv2D(channels, 3, implementation=implementation, **kwargs),
    }
    runs, real = {}, rate_conv.RateConv.__call__
    for name, layer in layers.items():
        rate_conv.RateConv.__call__ = _stand_in if name == "reads only" else real
        for mode, run in timing.runners(layer, x).items():
            run()  # traces now, with the stand-in in place where chosen
            runs[(name, mode)] = run
    rate_conv.RateConv.__call__ = real
    return timing.interleaved_medians(runs, rounds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=list(CASES),
                        help="N,C,H,groups,implementation")
    report.add_argument(parser)
    args = parser.parse_args()
    lines = [f"medians of {args.rounds} rounds, loss sum(y**2)", "",
             "| shape (N, C, H, W) | groups | implementation | mode | conv ms | PSConv2D "
             "| reads only |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for case in args.cases:
        batch, channels, size, groups, implementation = case.split(",")
        batch, channels, size, groups = int(batch), int(channels), int(size), int(groups)
        result = measure(batch, channels, size, groups, implementation, args.rounds)
        for mode in ("forward", "forward+backward"):
            base = result[("conv", mode)]
            lines.append(
                f"| ({batch}, {channels}, {size}, {size}) | {groups} | {implementation} | "
                f"{mode} | {base * 1e3:.2f} | {result[('psconv', mode)] / base:.2f}x | "
                f"{result[('reads only', mode)] / base:.2f}x |")
            print(lines[-1], flush=True)
    if args.write_docs:
        report.write_table("layer_breakdown", "benchmarks.layer_breakdown", lines)


if __name__ == "__main__":
    main()
