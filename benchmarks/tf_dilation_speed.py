"""TensorFlow under XLA: dilated gradients as space-to-batch against XLA's own.

Forward+backward of each variant, compiled with `tf.function(jit_compile=True)`
on TensorFlow's default device, timed in interleaved rounds; the loss is
sum(y ** 2) (see `timing.py`) and every figure is a ratio of medians to the
3x3 convolution of the same shape in the same run. Variants (channels last,
padding "same", no bias):
- conv3x3: `NativeConv2D(C, 3)`, the reference;
- dilated / dilated_s2b: `NativeConv2D(C, 3, dilation_rate=2)` with XLA's own
  gradient / with `psconv_tf.engine.tf_dilation`'s (PSCONV_TF_DILATION_GRADIENT set
  to "native" / "space_to_batch" while the step is traced);
- psconv / psconv_s2b: `PSConv2D(C, 3)` (pattern (1, 2, 1, 4), the
  implementation --implementation names) the same two ways.
On a GPU this is the choice that `training/imagenet.py --jit-compile` makes;
on a CPU it measures XLA's CPU convolutions only.

    python -m benchmarks.tf_dilation_speed [--shapes 8x64x56 32x16x28]
        [--rounds 7] [--implementation masked] [--write-docs]
"""

import argparse
import contextlib
import os

import keras
import numpy as np
import tensorflow as tf

from benchmarks import report
from benchmarks import timing
from psconv_tf import NativeConv2D
from psconv_tf import PSConv2D
from psconv_tf.engine import tf_dilation
from psconv_tf.engine.executor import IMPLEMENTATIONS

VARIANTS = ("conv3x3", "dilated", "dilated_s2b", "psconv", "psconv_s2b")


@contextlib.contextmanager
def gradient_route(mode):
    """PSCONV_TF_DILATION_GRADIENT=`mode` inside the block."""
    before = os.environ.get(tf_dilation.ENVIRONMENT)
    os.environ[tf_dilation.ENVIRONMENT] = mode
    try:
        yield
    finally:
        if before is None:
            del os.environ[tf_dilation.ENVIRONMENT]
        else:
            os.environ[tf_dilation.ENVIRONMENT] = before


def compiled_step(layer, x, mode):
    """A blocking fn running the compiled forward+backward, traced and
    compiled with the gradient route `mode`."""
    layer.build(x.shape)

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    with gradient_route(mode):
        step()
    return lambda: step()[0].numpy()


def measure(batch, channels, size, rounds, implementation):
    x = tf.constant(np.random.default_rng(0).normal(size=(batch, size, size, channels)),
                    tf.float32)
    common = dict(padding="same", use_bias=False)
    runs = {
        "conv3x3": compiled_step(NativeConv2D(channels, 3, **common), x, "native"),
    }
    for suffix, mode in (("", "native"), ("_s2b", "space_to_batch")):
        dilated = NativeConv2D(channels, 3, dilation_rate=2, **common)
        runs["dilated" + suffix] = compiled_step(dilated, x, mode)
        psconv = PSConv2D(channels, 3, implementation=implementation, **common)
        runs["psconv" + suffix] = compiled_step(psconv, x, mode)
    return timing.interleaved_medians(runs, rounds)


def _shape(text):
    try:
        batch, channels, size = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxCxS, e.g. 8x64x56; got {text!r}")
    if min(batch, channels, size) < 1 or channels % 4:
        raise argparse.ArgumentTypeError(f"needs positive sizes, C a multiple of 4: {text!r}")
    return batch, channels, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", type=_shape,
                        default=[(8, 64, 56), (32, 16, 28)], help="NxCxS, channels last")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--implementation", default="masked", choices=IMPLEMENTATIONS)
    report.add_argument(parser)
    args = parser.parse_args()
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("tf_dilation_speed needs KERAS_BACKEND=tensorflow")
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    lines = [f"TensorFlow {tf.__version__}, XLA on {devices[0].name}, forward+backward, "
             f"loss sum(y**2), medians of {args.rounds} rounds, PSConv2D "
             f'implementation="{args.implementation}"', "",
             "| shape (N, C, H, W) | conv3x3 ms | dilated | dilated_s2b | psconv | psconv_s2b "
             "| dilated s2b/own | psconv s2b/own |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for batch, channels, size in args.shapes:
        ms = measure(batch, channels, size, args.rounds, args.implementation)
        base = ms["conv3x3"]
        cells = [f"{ms[v] / base:.2f}x" for v in VARIANTS[1:]]
        cells += [f"{ms['dilated_s2b'] / ms['dilated']:.2f}x",
                  f"{ms['psconv_s2b'] / ms['psconv']:.2f}x"]
        lines.append(f"| ({batch}, {channels}, {size}, {size}) | {base * 1e3:.2f} | "
                     + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    if args.write_docs:
        report.write_table("tf_dilation_speed", "benchmarks.tf_dilation_speed", lines)


if __name__ == "__main__":
    main()
