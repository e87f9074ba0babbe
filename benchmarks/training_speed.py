"""Training speed: the ImageNet input pipeline, and PS-ResNet-50 against ResNet-50.

1. Input pipeline: images per second of `training/dataloaders.py`'s
   ImageNet pipeline (training: random-resized crop of the JPEG window, resize,
   flip; evaluation: decode, resize to 256, centre crop) over a class-folder
   tree of generated JPEGs the size of ImageNet's (500 x 375 on average).
2. Training step: images per second of `train_lib.Trainer.train_steps`, the
   step the training scripts run (forward, backward, coupled weight decay,
   SGD with momentum, metrics), for ps_resnet50 and resnet50 on the same
   in-memory batch, in interleaved rounds on this machine's default strategy;
   medians and their ratio.

    python benchmarks/training_speed.py [--batch 8] [--image-size 224] [--rounds 7]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training"))

import configs  # noqa: E402
import dataloaders  # noqa: E402
import train_lib  # noqa: E402
from psconv_tf import models  # noqa: E402

MODELS = ("resnet50", "ps_resnet50")


def write_jpegs(folder, count, seed=0):
    """A class-folder tree of smooth random JPEGs of ImageNet-like sizes."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = rng.integers(300, 450), rng.integers(400, 600)
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3)).astype("float32")
        image = tf.image.resize(coarse[None], (height, width))[0]
        image += rng.normal(0, 12, (height, width, 3))
        path = os.path.join(folder, f"class_{index % 4}", f"{index}.jpg")
        tf.io.gfile.makedirs(os.path.dirname(path))
        tf.io.write_file(path, tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)))


def pipeline_speed(folder, training, image_size, batch, batches):
    """Images per second of the ImageNet pipeline, after one warm-up batch."""
    source = dataloaders.image_folder_source(folder)
    dataset = dataloaders.imagenet_input(source, training, image_size, batch)(
        tf.distribute.InputContext()
    ).repeat()
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def trainer_and_iterator(name, image_size, batch):
    strategy = tf.distribute.get_strategy()
    kind = train_lib.device_kind(strategy)
    options = train_lib.RunOptions(
        run_dir=tempfile.mkdtemp(),
        precision=train_lib.resolve_precision("auto", kind),
        jit_compile=train_lib.resolve_jit_compile("auto", kind),
    )
    trainer = train_lib.Trainer(
        strategy,
        lambda: models.get(name, num_classes=1000, input_shape=(image_size, image_size, 3)),
        configs.IMAGENET, steps_per_epoch=5004, options=options,
    )
    images = tf.random.normal((batch, image_size, image_size, 3))
    labels = tf.zeros((batch,), tf.int32)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.from_tensors((images, labels)).repeat()
    )
    return trainer, iter(dataset)


def step_speeds(image_size, batch, rounds):
    """Median images per second of one training step, per model."""
    setups = {name: trainer_and_iterator(name, image_size, batch) for name in MODELS}
    one_step = tf.constant(1)
    for trainer, iterator in setups.values():  # trace and warm up
        trainer.train_steps(iterator, one_step)
        trainer.train_steps(iterator, one_step)
    times = {name: [] for name in MODELS}
    for _ in range(rounds):
        for name, (trainer, iterator) in setups.items():
            start = time.perf_counter()
            trainer.train_steps(iterator, one_step)
            trainer.model.trainable_weights[0].numpy()  # wait for the step
            times[name].append(time.perf_counter() - start)
    return {name: batch / float(np.median(values)) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per step; default 8")
    parser.add_argument("--image-size", type=int, default=224, help="default 224")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds; default 7")
    parser.add_argument("--jpegs", type=int, default=64, help="generated JPEGs; default 64")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(folder, args.jpegs)
        print("| input pipeline | images/s |")
        print("|---|---|")
        for training in (True, False):
            speed = pipeline_speed(folder, training, args.image_size, args.batch, 3 * args.jpegs // args.batch)
            print(f"| {'training' if training else 'evaluation'} ({args.image_size} px) | {speed:.0f} |",
                  flush=True)
    speeds = step_speeds(args.image_size, args.batch, args.rounds)
    print(f"\nTraining step, batch {args.batch} at {args.image_size} x {args.image_size}, "
          f"medians of {args.rounds} interleaved rounds:")
    print("| model | images/s | time vs resnet50 |")
    print("|---|---|---|")
    for name in MODELS:
        print(f"| {name} | {speeds[name]:.1f} | {speeds['resnet50'] / speeds[name]:.2f}x |")


if __name__ == "__main__":
    main()
