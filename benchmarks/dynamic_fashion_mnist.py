"""Dynamic PSConv on real data: ResNet-20 three ways on Fashion-MNIST.

Trains, one after the other and from the same seed, `cifar_resnet20` (standard
convs), `ps_cifar_resnet20` with the quick run's static lattice (1, 2, 1, 4),
`ps_cifar_resnet20` with the lattice (1, 2, 1, 2) the dynamic model starts
from, and `dps_cifar_resnet20` (DynamicPSConv2D, rates 1 and 2) with the
mask learning-rate multiplier mu at its default 1 and at 100, exactly as
the quick run trains (`psconv_tf.classification.runs.train_small_images`
with `configs.QUICK`, each model in its run folder under --run-dir): a
seeded subset of 24,000 training images, 1 epoch at batch 32, SGD with
momentum 0.9, coupled weight decay 5e-4, learning rate 0.1 x 32 / 128 with
a linear warm-up over the first quarter and a half-cosine decay, CIFAR
augmentation (4-pixel zero padding, random 28 x 28 crop, random flip),
pixels standardized with the training set's mean and deviation.

It prints the test accuracy (10,000 images) of each model and of the frozen
dynamic model, the share of kernels at the large rate per dynamic layer
before and after training, the time of each model's run (training and
evaluation) and its ratio to the standard model's (wall time and median
step time; the machine may be shared, so times are noisy), and saves a plot of one learned lattice beside
the static lattice it started from.

    python benchmarks/dynamic_fashion_mnist.py [--train-examples 24000]
        [--data-dir /usr/share/datasets/fashion-mnist] [--plot docs/dynamic_lattice.png]
        [--run-dir runs/dynamic_fashion_mnist]
"""

import argparse
import os
import time

import keras
import numpy as np
import tensorflow as tf

import psconv_tf
from psconv_tf.rate_share import dynamic_layers
from psconv_tf.runtime import strategy as strategies
from psconv_tf.classification import runs
from psconv_tf.training import configs
from psconv_tf.classification import small_data
from psconv_tf.training.run_options import RunOptions

DATA_DIR = "/usr/share/datasets/fashion-mnist"
SCRIPT = "dynamic_fashion_mnist"
RUNS = (
    ("standard", "cifar_resnet20", {}),
    ("static PS (1,2,1,4)", "ps_cifar_resnet20", {"pattern": [1, 2, 1, 4]}),
    ("static PS (1,2,1,2)", "ps_cifar_resnet20", {"pattern": [1, 2, 1, 2]}),
    ("dynamic PS {1,2}, mu=1", "dps_cifar_resnet20", {}),
    ("dynamic PS {1,2}, mu=100", "dps_cifar_resnet20",
     {"dynamic_options": {"mask_learning_rate_multiplier": 100.0}}),
)
SHARE_EVERY = 150  # steps between samples of the large-rate share


class _Observer(keras.callbacks.Callback):
    """The lattices at the start, the large-rate share every `SHARE_EVERY`
    steps, and the time of every step."""

    def __init__(self):
        super().__init__()
        self.initial, self.shares, self.step_seconds = {}, [], []

    def on_train_begin(self, logs=None):
        self.initial = {layer.name: layer.dilation_matrix()
                        for layer in dynamic_layers(self.model)}

    def on_train_batch_begin(self, batch, logs=None):
        self._tick = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.step_seconds.append(time.perf_counter() - self._tick)
        if batch % SHARE_EVERY == 0 and self.initial:
            self.shares.append(_mean_large_share(self.model))


def _mean_large_share(model):
    layers = dynamic_layers(model)
    return float(np.mean([layer.rate_shares()[layer.large_rate] for layer in layers]))


def accuracy(model, data):
    """Test top-1 of `model` on a `small_data.SmallData`'s test split."""
    images, labels = data.test
    images = (images.astype(np.float32) - np.float32(data.mean)) / np.float32(data.stddev)
    predict = tf.function(lambda x: model(x, training=False))
    logits = np.concatenate([predict(images[i:i + 500]).numpy()
                             for i in range(0, len(images), 500)])
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
    parser.add_argument("--run-dir", default=os.path.join("runs", SCRIPT),
                        help="folder of the models' run folders")
    args = parser.parse_args(argv)
    data = small_data.load_data("fashion_mnist", args.data_dir, args.train_examples,
                                args.seed, download=False)
    strategy = strategies.create_strategy("cpu" if not tf.config.list_physical_devices("GPU")
                                          else "gpu")
    results, dynamic, initial = {}, {}, {}
    for number, (label, name, kwargs) in enumerate(RUNS):
        options = RunOptions(os.path.join(args.run_dir, f"{number}_{name}"), verbose=0)
        config = runs.small_image_config(
            name, kwargs, data, configs.QUICK, args.seed, strategy, options, SCRIPT, {})
        observer = _Observer()
        metrics = runs.train_small_images(config, data, strategy, options,
                                                    callbacks=[observer])
        model = observer.model
        results[label] = dict(top1=metrics["final"]["top1"], seconds=metrics["seconds"],
                              step=float(np.median(observer.step_seconds[5:])),
                              shares=observer.shares)
        print(f"{label}: test top-1 {results[label]['top1']:.4f}, "
              f"{results[label]['seconds']:.0f} s", flush=True)
        if observer.initial:
            initial = observer.initial
            dynamic[label] = model
            results[label + ", frozen"] = dict(top1=accuracy(psconv_tf.freeze(model), data))
    _print_tables(results, dynamic, initial, len(data.train[0]), len(data.test[0]), args.seed)
    last = dynamic[label]
    changed = {l.name: np.mean(initial[l.name] != l.dilation_matrix()) for l in dynamic_layers(last)}
    shown = max(changed, key=changed.get)
    if args.plot:
        plot(initial[shown], last.get_layer(shown), args.plot)
        print(f"Lattice of {shown} ({label}, the most changed layer) saved to {args.plot}")


def _print_tables(results, dynamic, initial, train_count, test_count, seed):
    base = results["standard"]
    recipe = configs.QUICK
    print(f"\nFashion-MNIST, {train_count} training images, {recipe.epochs} epoch, "
          f"batch {recipe.batch_size}, seed {seed}; test set of {test_count}:")
    print("| model | test top-1 | training + evaluation | vs standard (wall) | vs standard (median step) |")
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
        print(f"{label}: mean large-rate share every {SHARE_EVERY} steps: {trajectory}")


if __name__ == "__main__":
    main()
