"""Training speed: PS-ResNet-50 against ResNet-50, and the ImageNet input pipeline.

1. Training step: images per second of `psconv_tf.training.Trainer.train_steps`,
   the step the training scripts run (forward, backward, coupled weight decay,
   SGD with momentum, metrics), for ps_resnet50 and resnet50 on the same
   in-memory batch, in interleaved rounds on this machine's default strategy;
   medians and their ratio.
2. Input pipeline: images per second of `psconv_tf.classification.image_data`'s
   ImageNet pipeline (training: random-resized crop of the JPEG window, resize,
   flip; evaluation: decode, resize to 256, centre crop) over a class-folder
   tree of generated JPEGs the size of ImageNet's (500 x 375 on average),
   against the same preprocessing without the guard that skips undecodable
   images (one plain map, where one bad image stops the run); medians of
   interleaved rounds.

Prints two tables; --write-docs writes them into docs/benchmarks.md
(section training_speed).

    python -m benchmarks.training_speed [--batch 8] [--image-size 224] [--rounds 7]
        [--write-docs]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks import report
from benchmarks import timing
from psconv_tf import models
from psconv_tf.training import configs
from psconv_tf.classification import image_data
from psconv_tf.classification import preprocessing
from psconv_tf.runtime import strategy as strategies
from psconv_tf.training.trainer import RunOptions
from psconv_tf.training.trainer import Trainer

MODELS = ("resnet50", "ps_resnet50")
STEP_TABLE = "| measure | standard | PS | PS / standard |\n|---|---|---|---|"
PIPELINE_TABLE = ("| input pipeline, images/s | skipping undecodable images | without the guard "
                  "| ratio |\n|---|---|---|---|")


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


def guarded_pipeline(source, training, image_size, batch):
    """The training scripts' pipeline: undecodable images skipped and named."""
    return image_data.imagenet_input(source, training, image_size, batch)(
        tf.distribute.InputContext())


def plain_pipeline(source, training, image_size, batch):
    """The same preprocessing in one map, without the guard."""
    preprocess = (preprocessing.preprocess_for_train if training
                  else preprocessing.preprocess_for_eval)
    records = source.read(tf.distribute.InputContext(), shuffle=training)

    def decode(name, payload, label):
        return preprocess(source.load(name, payload), image_size), label

    images = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=not training)
    return images.batch(batch, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def pipeline_speeds(folder, training, image_size, batch, batches, rounds):
    """Median images per second of both pipelines, in interleaved rounds.

    Each round times `batches` batches of a fresh iterator after its first
    one, and drops it before the other pipeline runs: a pipeline left
    running prefetches in the background and would flatter itself.
    """
    source = image_data.image_folder_source(folder)
    builders = {"guarded": guarded_pipeline, "plain": plain_pipeline}
    times = {name: [] for name in builders}
    for _ in range(rounds):
        for name, build in builders.items():
            iterator = iter(build(source, training, image_size, batch).repeat())
            next(iterator)
            start = time.perf_counter()
            for _ in range(batches):
                next(iterator)
            times[name].append(time.perf_counter() - start)
            del iterator
    return {name: batches * batch / float(np.median(values)) for name, values in times.items()}


def trainer_and_iterator(name, image_size, batch):
    strategy = tf.distribute.get_strategy()
    kind = strategies.device_kind(strategy)
    options = RunOptions(
        run_dir=tempfile.mkdtemp(),
        precision=strategies.resolve_precision("auto", kind),
        jit_compile=strategies.resolve_jit_compile("auto", kind),
    )
    trainer = Trainer(
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

    def step(trainer, iterator):
        def run():
            trainer.train_steps(iterator, one_step)
            trainer.model.trainable_weights[0].numpy()  # wait for the step
        return run

    seconds = timing.interleaved_medians(  # traces in its warm-up
        {name: step(*setup) for name, setup in setups.items()}, rounds)
    return {name: batch / value for name, value in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per step; default 8")
    parser.add_argument("--image-size", type=int, default=224, help="default 224")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds; default 7")
    parser.add_argument("--jpegs", type=int, default=64, help="generated JPEGs; default 64")
    report.add_argument(parser)
    args = parser.parse_args()
    lines = [f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, "
             f"GPUs: {len(tf.config.list_physical_devices('GPU'))}"]
    print(lines[-1], flush=True)
    speeds = step_speeds(args.image_size, args.batch, args.rounds)
    lines += ["", f"Batch {args.batch} at {args.image_size}², medians of {args.rounds} "
              "interleaved rounds:", "", STEP_TABLE,
              f"| ResNet-50 train step, images/s | {speeds['resnet50']:.1f} | "
              f"{speeds['ps_resnet50']:.1f} | "
              f"{speeds['ps_resnet50'] / speeds['resnet50']:.2f}x |",
              "", f"Input pipeline, {args.jpegs} generated JPEGs, medians of {args.rounds} "
              "interleaved rounds:", "", PIPELINE_TABLE]
    print("\n".join(lines[1:]), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(folder, args.jpegs)
        for training in (True, False):
            pipelines = pipeline_speeds(folder, training, args.image_size, args.batch,
                                        2 * args.jpegs // args.batch, args.rounds)
            lines.append(f"| {'training' if training else 'evaluation'} | "
                         f"{pipelines['guarded']:.0f} | {pipelines['plain']:.0f} | "
                         f"{pipelines['guarded'] / pipelines['plain']:.2f}x |")
            print(lines[-1], flush=True)
    if args.write_docs:
        report.write_table("training_speed", "benchmarks.training_speed", lines)


if __name__ == "__main__":
    main()
