"""Shared pieces of the training tests: the scripts' folder, data writers, runs."""

import gzip
import json
import os
import pickle
import socket
import struct
import sys

import numpy as np

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_DIR = os.path.join(REPO_DIR, "training")


def random_images(count, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def write_cifar10(folder, num_train=160, num_test=40, seed=0):
    """Writes CIFAR-10's python-pickle batches; returns the arrays, NHWC."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = random_images(num_train, (32, 32, 3), seed), rng.integers(0, 10, num_train)
    test = random_images(num_test, (32, 32, 3), seed + 1), rng.integers(0, 10, num_test)
    # CIFAR rows are the red, green and blue planes, each row-major.
    planes = lambda images: images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batches = {f"data_batch_{i + 1}": part
               for i, part in enumerate(np.array_split(np.arange(num_train), 5))}
    for name, indices in batches.items():
        _pickle(os.path.join(folder, name),
                {b"data": planes(train[0][indices]), b"labels": train[1][indices].tolist()})
    _pickle(os.path.join(folder, "test_batch"),
            {b"data": planes(test[0]), b"labels": test[1].tolist()})
    return train, test


def _pickle(path, data):
    with open(path, "wb") as file:
        pickle.dump(data, file)


def write_fashion_mnist(folder, num_train=256, num_test=64, seed=0):
    """Writes Fashion-MNIST's four gzipped IDX files; returns the arrays."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {
        "train": (random_images(num_train, (28, 28), seed), rng.integers(0, 10, num_train)),
        "t10k": (random_images(num_test, (28, 28), seed + 1), rng.integers(0, 10, num_test)),
    }
    for prefix, (images, labels) in splits.items():
        _write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
        _write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels.astype(np.uint8))
    return splits["train"], splits["t10k"]


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script_command(script, *args):
    return [sys.executable, os.path.join(TRAINING_DIR, script), *map(str, args)]


def script_env(**variables):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **variables)
    env.pop("TF_CONFIG", None)
    env.update(variables)
    return env


def read_log(run_dir):
    """The JSON records of a run folder's log.jsonl."""
    with open(os.path.join(run_dir, "log.jsonl")) as file:
        return [json.loads(line) for line in file]


def read_json(path):
    with open(path) as file:
        return json.load(file)


def load_script(name):
    """The module of a command-line script of training/ (not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"training_script_{name}", os.path.join(TRAINING_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_run_config(recipe, model="tiny", **fields):
    """A `RunConfig` for a loop test with a hand-built model."""
    from psconv_tf.runtime.run_config import Preprocessing
    from psconv_tf.runtime.run_config import RunConfig

    return RunConfig(model=model, num_classes=6, image_size=8, channels=8, recipe=recipe,
                     dataset="generated", preprocessing=Preprocessing((0.0,), (1.0,)),
                     **fields)


def tiny_classifier(pattern=(1, 2, 1, 4)):
    """One PSConv2D and a Dense head over 8x8x8 inputs, 6 classes."""
    import keras

    from psconv_tf import PSConv2D

    inputs = keras.Input((8, 8, 8))
    x = PSConv2D(8, 3, padding="same", pattern=pattern, name="psconv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(6, name="fc")(x))


def tiny_dataset_fn(training, batch, steps):
    """A `dataset_fn` of batch * steps random examples for `tiny_classifier`:
    repeated for training, once for evaluation."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    images = rng.normal(size=(batch * steps, 8, 8, 8)).astype("float32")
    labels = rng.integers(0, 6, batch * steps).astype("int32")

    def dataset_fn(context):
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        dataset = dataset.repeat() if training else dataset
        return dataset.batch(context.get_per_replica_batch_size(batch), drop_remainder=training)

    return dataset_fn


def write_image_tree(folder, split, classes, count):
    """Writes `count` JPEGs of random sizes per class: folder/split/<class>/<n>.jpg."""
    import tensorflow as tf

    for index, name in enumerate(classes):
        os.makedirs(os.path.join(folder, split, name))
        for number in range(count):
            image = np.random.default_rng(index * 100 + number).integers(
                0, 256, (36 + number, 44, 3), dtype=np.uint8)
            tf.io.write_file(os.path.join(folder, split, name, f"{number}.jpg"),
                             tf.io.encode_jpeg(image))


def imagenet_args(data_dir, run_dir, *extra):
    """imagenet.py's arguments for a tiny run: cifar_resnet20 at 32 x 32, one epoch."""
    return [str(arg) for arg in (
        "--data-dir", data_dir, "--model", "cifar_resnet20", "--image-size", 32,
        "--batch-size", 4, "--epochs", 1, "--run-dir", run_dir, "--strategy", "cpu",
        "--verbose", 0, *extra,
    )]


def one_line_error(main, argv):
    """The message a command line exits with: one line, no traceback."""
    import pytest

    from psconv_tf.training import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main, argv)
    message = str(exit_info.value.code)
    assert "\n" not in message and "Traceback" not in message
    return message
