"""Dynamic PSConv on real data: ResNet-20 three ways on Fashion-MNIST.

Trains, one after the other and from the same seed, `cifar_resnet20` (standard
convs), `ps_cifar_resnet20` with the quick run's static lattice (1, 2, 1, 4),
`ps_cifar_resnet20` with the lattice (1, 2, 1, 2) the dynamic model starts
from, and `dps_cifar_resnet20` (DynamicPSConv2D, rates 1 and 2) with the
mask learning-rate multiplier mu at its default 1 and at 100, with the
quick run's budget: a seeded subset of 24,000 training images, 1 epoch at
batch 32, SGD with momentum 0.9, coupled weight decay 5e-4, learning rate
0.1 x 32 / 128 with a linear warm-up over the first quarter and a half-cosine
decay, CIFAR augmentation (4-pixel zero padding, random 28 x 28 crop, random
flip), pixels standardized with the training set's mean and deviation. All
models see the same batches in the same order.

It prints the test accuracy (10,000 images) of each model and of the frozen
dynamic model, the share of kernels at the large rate per dynamic layer
before and after training, the training time of each model and its ratio to
the standard model (wall time and median step time; the machine may be
shared, so times are noisy), and saves a plot of one learned lattice beside
the static lattice it started from.

    python benchmarks/dynamic_fashion_mnist.py [--train-examples 24000]
        [--data-dir /usr/share/datasets/fashion-mnist] [--plot docs/dynamic_lattice.png]
"""

import argparse
import gzip
import os
import time

import keras
import numpy as np
import tensorflow as tf

import psconv_tf
from psconv_tf import models
from psconv_tf.rate_share import dynamic_layers

DATA_DIR = "/usr/share/datasets/fashion-mnist"
RUNS = (
    ("standard", "cifar_resnet20", {}),
    ("static PS (1,2,1,4)", "ps_cifar_resnet20", {"pattern": (1, 2, 1, 4)}),
    ("static PS (1,2,1,2)", "ps_cifar_resnet20", {"pattern": (1, 2, 1, 2)}),
    ("dynamic PS {1,2}, mu=1", "dps_cifar_resnet20", {}),
    ("dynamic PS {1,2}, mu=100", "dps_cifar_resnet20",
     {"dynamic_options": {"mask_learning_rate_multiplier": 100.0}}),
)
BATCH, EPOCHS, PEAK_LR, MOMENTUM, WEIGHT_DECAY, WARMUP = 32, 1, 0.1 * 32 / 128, 0.9, 5e-4, 0.25


def read_idx(path):
    """An IDX array of unsigned bytes (gzipped), checked against its header."""
    with gzip.open(path) as file:
        data = file.read()
    if len(data) < 4 or data[:3] != b"\0\0\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank))
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * rank)
    if array.size != np.prod(shape):
        raise ValueError(f"{path} is truncated: {array.size} bytes for shape {shape}.")
    return array.reshape(shape)


def load(data_dir, train_examples, seed):
    def split(prefix):
        images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        return images[..., None].astype(np.float32), labels.astype(np.int32)

    (train_x, train_y), (test_x, test_y) = split("train"), split("t10k")
    mean, std = train_x.mean(), train_x.std()  # the whole training set
    subset = np.random.default_rng(seed).permutation(len(train_x))[:train_examples]
    return ((train_x[subset] - mean) / std, train_y[subset]), ((test_x - mean) / std, test_y)


def augmented_batches(images, labels, seed, pad=4):
    """The epoch's batches: shuffled, padded, randomly cropped and flipped."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    size = images.shape[1]
    for start in range(0, len(order) - BATCH + 1, BATCH):
        index = order[start:start + BATCH]
        padded = np.pad(images[index], ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        dy, dx = rng.integers(0, 2 * pad + 1, (2, BATCH))
        batch = np.stack([p[y:y + size, x:x + size] for p, y, x in zip(padded, dy, dx)])
        flip = rng.random(BATCH) < 0.5
        batch[flip] = batch[flip, :, ::-1]
        yield batch, labels[index]


def train(model, train_data, steps, seed):
    """Coupled weight decay SGD (as torch.optim.SGD) with warm-up and cosine."""
    warmup = round(WARMUP * steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - warmup, warmup_target=PEAK_LR, warmup_steps=warmup
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=MOMENTUM)
    variables = model.trainable_variables

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        gradients = tape.gradient(loss, variables)
        gradients = [g + WEIGHT_DECAY * v for g, v in zip(gradients, variables)]
        optimizer.apply(gradients, variables)
        return loss

    step_seconds, shares = [], []
    started = time.perf_counter()
    for epoch in range(EPOCHS):
        for number, (images, labels) in enumerate(augmented_batches(*train_data, seed + epoch)):
            tick = time.perf_counter()
            step(images, labels).numpy()
            step_seconds.append(time.perf_counter() - tick)
            if number % 150 == 0 and dynamic_layers(model):
                shares.append(_mean_large_share(model))
    return time.perf_counter() - started, float(np.median(step_seconds[5:])), shares


def _mean_large_share(model):
    layers = dynamic_layers(model)
    return float(np.mean([layer.rate_shares()[layer.large_rate] for layer in layers]))


def accuracy(model, test_data):
    images, labels = test_data
    predict = tf.function(lambda x: model(x, training=False))
    logits = np.concatenate([predict(images[i:i + 500]).numpy() for i in range(0, len(images), 500)])
    return float(np.mean(logits.argmax(-1) == labels))


def plot(before, after, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    psconv_tf.plot_lattice(before, ax=axes[0], title=f"{after.name}: static start (1,2,1,2)")
    psconv_tf.plot_lattice(after, ax=axes[1], title=f"{after.name}: learned")
    axes[0].get_legend().remove()
    figure.tight_layout()
    figure.savefig(path + ".tmp.png", dpi=70)
    os.replace(path + ".tmp.png", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--train-examples", type=int, default=24000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="docs/dynamic_lattice.png")
    args = parser.parse_args(argv)
    train_data, test_data = load(args.data_dir, args.train_examples, args.seed)
    steps = EPOCHS * (len(train_data[0]) // BATCH)
    results, dynamic = {}, {}
    for label, name, kwargs in RUNS:
        keras.utils.set_random_seed(args.seed)
        model = models.get(name, num_classes=10, input_shape=(28, 28, 1), **kwargs)
        initial = {l.name: l.dilation_matrix() for l in dynamic_layers(model)}
        seconds, step_time, shares = train(model, train_data, steps, args.seed)
        results[label] = dict(top1=accuracy(model, test_data), seconds=seconds,
                              step=step_time, shares=shares)
        print(f"{label}: test top-1 {results[label]['top1']:.4f}, {seconds:.0f} s", flush=True)
        if initial:
            dynamic[label] = model
            results[label + ", frozen"] = dict(top1=accuracy(psconv_tf.freeze(model), test_data))
    _print_tables(results, dynamic, initial, len(train_data[0]), len(test_data[0]), args.seed)
    last = dynamic[label]
    changed = {l.name: np.mean(initial[l.name] != l.dilation_matrix()) for l in dynamic_layers(last)}
    shown = max(changed, key=changed.get)
    if args.plot:
        plot(initial[shown], last.get_layer(shown), args.plot)
        print(f"Lattice of {shown} ({label}, the most changed layer) saved to {args.plot}")


def _print_tables(results, dynamic, initial, train_count, test_count, seed):
    base = results["standard"]
    print(f"\nFashion-MNIST, {train_count} training images, {EPOCHS} epoch, "
          f"batch {BATCH}, seed {seed}; test set of {test_count}:")
    print("| model | test top-1 | training time | vs standard (wall) | vs standard (median step) |")
    print("|---|---|---|---|---|")
    for label, result in results.items():
        if "seconds" not in result:
            print(f"| {label} | {100 * result['top1']:.2f} % | - | - | - |")
            continue
        print(f"| {label} | {100 * result['top1']:.2f} % | {result['seconds']:.0f} s | "
              f"{result['seconds'] / base['seconds']:.2f}x | {result['step'] / base['step']:.2f}x |")
    print("\nShare of kernels at the large rate 2 per dynamic layer: at the start, and "
          "learned (kernels whose rate changed):")
    print("| layer | start | " + " | ".join(f"learned, {label.split(', ')[-1]}" for label in dynamic) + " |")
    print("|---|---|" + "---|" * len(dynamic))
    for name, start in initial.items():
        cells = []
        for model in dynamic.values():
            end = model.get_layer(name).dilation_matrix()
            changed = np.mean(start[start > 0] != end[end > 0])
            cells.append(f"{np.mean(end[end > 0] == 2):.1%} ({changed:.1%})")
        print(f"| {name} | {np.mean(start[start > 0] == 2):.1%} | " + " | ".join(cells) + " |")
    for label in dynamic:
        trajectory = ", ".join(f"{share:.1%}" for share in results[label]["shares"])
        print(f"{label}: mean large-rate share every 150 steps: {trajectory}")


if __name__ == "__main__":
    main()
