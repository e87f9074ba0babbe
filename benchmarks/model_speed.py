"""Training-step throughput of PS models against their standard twins.

Each pair is timed in one process, in interleaved rounds (this machine is
shared and noisy), under tf.function: forward, loss, backward and an SGD
update on a fixed batch. Reports images/s (medians) and the PS/standard ratio.

    python benchmarks/model_speed.py [--batch 8] [--size 224] [--rounds 7]
        [--pairs resnet50 resnext50_32x4d]
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from psconv_tf import models


def train_step_function(model, batch, size, num_classes=1000):
    images = tf.random.normal((batch, size, size, 3))
    labels = tf.random.uniform((batch,), maxval=num_classes, dtype=tf.int32)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return step


def measure(names, batch, size, rounds):
    steps = {}
    for name in names:
        model = models.get(name, input_shape=(size, size, 3))
        steps[name] = train_step_function(model, batch, size)
        steps[name]()  # trace and warm up
        steps[name]()
    times = {name: [] for name in names}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step().numpy()
            times[name].append(time.perf_counter() - start)
    return {name: batch / float(np.median(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pairs", nargs="+", default=["resnet50"],
                        help="standard model names; each runs against ps_<name>")
    args = parser.parse_args()
    print(f"batch {args.batch} at {args.size}x{args.size}, medians of "
          f"{args.rounds} interleaved rounds")
    print("| model | standard images/s | PS images/s | PS / standard |")
    print("|---|---|---|---|")
    for name in args.pairs:
        result = measure([name, "ps_" + name], args.batch, args.size, args.rounds)
        standard, ps = result[name], result["ps_" + name]
        print(f"| {name} | {standard:.2f} | {ps:.2f} | {ps / standard:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
