"""Data, models and TFLite readers for the export tests."""

import collections
import contextlib
import gzip
import io
import os
import re

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated
from ai_edge_litert.interpreter import Interpreter

from psconv_tf.models.resnet import ResNet
from psconv_tf.models.resnet import Stage

# Debian's dataset-fashion-mnist package.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
BUILTIN_OPERATORS = {
    name for name in vars(schema_py_generated.BuiltinOperator)
    if name.isupper() and name != "CUSTOM"
}

ImageSet = collections.namedtuple(
    "ImageSet", "name train_images train_labels test_images test_labels"
)


def image_set(train_count, test_count):
    """Fashion-MNIST when installed, else generated gratings: uint8 images
    (N, 28, 28, 1) and int labels of 10 classes."""
    if os.path.isdir(FASHION_MNIST_DIR):
        arrays = {
            key: _read_idx(os.path.join(FASHION_MNIST_DIR, name))
            for key, name in FASHION_MNIST_FILES.items()
        }
        return ImageSet(
            "fashion-mnist",
            arrays["train_images"][:train_count, ..., None],
            arrays["train_labels"][:train_count],
            arrays["test_images"][:test_count, ..., None],
            arrays["test_labels"][:test_count],
        )
    train_images, train_labels = gratings(train_count, seed=0)
    test_images, test_labels = gratings(test_count, seed=1)
    return ImageSet("generated", train_images, train_labels, test_images, test_labels)


def _read_idx(path):
    """An IDX array (the MNIST format): magic (dtype, ndim), sizes, data."""
    with gzip.open(path) as file:
        data = file.read()
    if data[:3] != b"\x00\x00\x08":  # 0x08: unsigned bytes
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def gratings(count, seed):
    """Noisy sinusoidal gratings whose orientation (10 steps) is the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    rows, columns = np.mgrid[0:28, 0:28] / 28.0
    angle = labels[:, None, None] * np.pi / 10
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1))
    wave = np.sin(
        6 * np.pi * (columns * np.cos(angle) + rows * np.sin(angle)) + phase
    )
    images = 127.5 + 100 * wave + rng.normal(0, 20, wave.shape)
    return np.clip(np.round(images), 0, 255).astype(np.uint8)[..., None], labels


def tiny_ps_resnet(input_shape=(28, 28, 1), width=16, num_classes=10):
    """A 2-stage PS-ResNet: PSConv2D at strides 1 and 2, as in the zoo."""
    return ResNet(
        stages=(Stage(1, width, 2), Stage(1, 2 * width, 2)), block="basic",
        stem="cifar", stem_filters=width, conv="psconv",
        input_shape=input_shape, num_classes=num_classes, name="tiny_ps_resnet",
    )


def run_tflite(flatbuffer, images, output="logits"):
    """An output of a TFLite flatbuffer's serving signature (LiteRT runtime).

    Float images for an integer input are quantized, and an integer output
    is dequantized, with the tensors' scale and zero point.
    """
    runner = Interpreter(model_content=flatbuffer).get_signature_runner()
    image_details = runner.get_input_details()["images"]
    if np.issubdtype(image_details["dtype"], np.integer) and images.dtype.kind == "f":
        scale, zero_point = image_details["quantization"]
        limits = np.iinfo(image_details["dtype"])
        images = np.clip(np.round(images / scale + zero_point), limits.min, limits.max)
        images = images.astype(image_details["dtype"])
    outputs = runner(images=images)[output]
    if np.issubdtype(outputs.dtype, np.integer):
        scale, zero_point = runner.get_output_details()[output]["quantization"]
        outputs = scale * (outputs.astype("float32") - zero_point)
    return outputs


def analyzed_operators(flatbuffer):
    """[(operator name, [its input tensor types])] from the TFLite analyzer."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        tf.lite.experimental.Analyzer.analyze(model_content=flatbuffer)
    report = printed.getvalue()
    types = dict(re.findall(r"^\s+T#(\d+)\(.*?type:(\w+)", report, re.MULTILINE))
    operators = []
    operator_lines = re.findall(r"^\s+Op#\d+ (\w+)\((.*?)\) ->", report, re.MULTILINE)
    for name, inputs in operator_lines:
        tensors = re.findall(r"T#(\d+)", inputs)
        operators.append((name, [types[t] for t in tensors]))
    return operators
