"""PSConv2D against Conv2D of the same shape: forward and forward+backward.

Every variant of a shape is timed in the same process, in interleaved rounds
(this machine is shared and noisy), and reported as the ratio of medians to
Conv2D. Variants:
- conv2d: `keras.layers.Conv2D`, the standard 3x3 convolution;
- psconv2d: `PSConv2D` with the paper's pattern (1, 2, 1, 4);
- naive: the same function as three dense convolutions at rates 1, 2 and 4
  with masked kernels (3x the multiply-accumulates);
- dilated: `Conv2D(dilation_rate=2)`, the paper's reference point.

    python benchmarks/layer_speed.py [--batch 8] [--rounds 15]
"""

import argparse
import time

import keras
import numpy as np
from keras import ops

from psconv_tf import PSConv2D

# (channels, spatial size): the 3x3 convolutions of ResNet-50.
RESNET50_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))


class NaivePSConv(keras.layers.Layer):
    """PSConv as three masked dense convolutions (the textbook formulation)."""

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


def _variants(channels):
    ps = PSConv2D(channels, 3, padding="same", use_bias=False)
    return {
        "conv2d": keras.layers.Conv2D(channels, 3, padding="same", use_bias=False),
        "psconv2d": ps,
        "naive": NaivePSConv(ps),
        "dilated": keras.layers.Conv2D(
            channels, 3, padding="same", dilation_rate=2, use_bias=False
        ),
    }


def _timers(layer, x):
    """Compiled forward and forward+backward of `layer` on `x`."""
    import tensorflow as tf

    layer.build(x.shape)

    @tf.function
    def forward():
        return layer(x)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x))
        return tape.gradient(loss, [x] + layer.trainable_weights)

    return {"forward": forward, "forward+backward": forward_backward}


def measure(channels, size, batch, rounds):
    import tensorflow as tf

    x = tf.random.normal((batch, size, size, channels))
    timers = {
        name: _timers(layer, x) for name, layer in _variants(channels).items()
    }
    times = {(name, mode): [] for name in timers for mode in timers[name]}
    for name in timers:  # warm up: trace and first run
        for run in timers[name].values():
            run()
    for _ in range(rounds):
        for name in timers:
            for mode, run in timers[name].items():
                start = time.perf_counter()
                result = run()
                np.asarray(result[0] if isinstance(result, list) else result)
                times[(name, mode)].append(time.perf_counter() - start)
    return {key: float(np.median(value)) for key, value in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--paper-batch", type=int, default=16,
                        help="N of the paper's (N, 64, 56, 56) setting; 200 there")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    shapes = [(c, s, args.batch) for c, s in RESNET50_SHAPES]
    shapes.append((64, 56, args.paper_batch))
    print(f"backend={keras.backend.backend()}, medians of {args.rounds} rounds")
    print("| shape (N, C, H, W) | mode | Conv2D ms | PSConv2D | naive 3 convs | dilated d=2 |")
    print("|---|---|---|---|---|---|")
    for channels, size, batch in shapes:
        result = measure(channels, size, batch, args.rounds)
        for mode in ("forward", "forward+backward"):
            base = result[("conv2d", mode)]
            ratios = [result[(name, mode)] / base for name in ("psconv2d", "naive", "dilated")]
            print(
                f"| ({batch}, {channels}, {size}, {size}) | {mode} | {base * 1e3:.2f} | "
                + " | ".join(f"{r:.2f}x" for r in ratios) + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
