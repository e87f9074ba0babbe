"""Small-image data sets (CIFAR-10/100, Fashion-MNIST): local files, TFDS, tf.data.

Local files come first: CIFAR's python batches (read by an unpickler that
accepts plain data only, so a planted file runs no code) or Fashion-MNIST's
IDX files; else TFDS. The pipeline standardizes, then zero-pads, crops and
flips, as the ResNeXt CIFAR reference code does (its ColorNormalize comes
before its RandomCrop's zero padding): the padded border is 0 after
standardization, the training set's mean colour, not black.
"""

import dataclasses
import gzip
import io
import os
import pickle
import struct
import zlib

import numpy as np
import tensorflow as tf

from psconv_tf.runtime import statistics
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import describe_error

AUTOTUNE = tf.data.AUTOTUNE
# Where Debian's package dataset-fashion-mnist puts the IDX files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

@dataclasses.dataclass(frozen=True)
class SmallDatasetSpec:
    """A small-image data set and the local files it can be read from.

    Attributes:
        num_classes: number of classes.
        image_shape: (height, width, channels).
        subfolder: the folder its archive unpacks to, also searched.
        files: {split: file names} of the local copy.
        how_to_get: how to obtain the local files.
    """

    num_classes: int
    image_shape: tuple
    subfolder: str
    files: dict
    how_to_get: str


SMALL_DATASETS = {
    "cifar10": SmallDatasetSpec(
        10, (32, 32, 3), "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "the python version of https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": SmallDatasetSpec(
        100, (32, 32, 3), "cifar-100-python", {"train": ("train",), "test": ("test",)},
        "the python version of https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
    "fashion_mnist": SmallDatasetSpec(
        10, (28, 28, 1), "fashion-mnist",
        {
            "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        },
        "Debian's package dataset-fashion-mnist (`apt-get install "
        "dataset-fashion-mnist`, files in /usr/share/datasets/fashion-mnist) or "
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
}


def read_idx(path):
    """Reads an IDX file (the MNIST format, gzipped or not) of unsigned bytes."""
    with tf.io.gfile.GFile(path, "rb") as file:
        data = file.read()
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise InputError(f"{path} is not a readable gzip file ({error}).") from None
    if len(data) < 4 or data[:3] != b"\0\0\x08":
        raise InputError(f"{path} is not an IDX file of unsigned bytes.")
    rank = data[3]
    shape = struct.unpack(f">{rank}I", data[4 : 4 + 4 * rank])
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * rank)
    if array.size != np.prod(shape):
        raise InputError(f"{path} is truncated: {array.size} bytes for shape {shape}.")
    return array.reshape(shape)


class _RefusedConstruct(pickle.UnpicklingError):
    """A pickle names a function or class the CIFAR reader does not run."""

    def __init__(self, module, name):
        super().__init__(f"{module}.{name}")
        self.construct = f"{module}.{name}"


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain data only: containers, numbers, strings and NumPy
    arrays, which is all CIFAR's batches hold. Any other global (a function
    such as os.system, a class) is refused before anything runs. Pickles of
    protocols 0 to 2 written by Python 3 (bytes through `_codecs.encode`)
    and of protocol 5 (arrays through `numpy._core.numeric._frombuffer`)
    are refused too: their constructs are functions, not plain data."""

    def find_class(self, module, name):
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")):
            return _reconstruct
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        raise _RefusedConstruct(module, name)


def _reconstruct(subtype, shape, dtype):
    """numpy's array reconstructor, for ndarray itself only."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("it reconstructs an array subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def read_cifar_batch(path, label_key):
    """Reads one of CIFAR's python batches without running any code it holds.

    Returns:
        (uint8 images [n, 32, 32, 3], int64 labels [n]).
    """
    with tf.io.gfile.GFile(path, "rb") as file:
        data = file.read()
    try:
        batch = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
        images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], np.int64)
    except _RefusedConstruct as error:
        protocol = data[1] if data[:1] == b"\x80" else "0 or 1"
        raise InputError(
            f"{path} is not a CIFAR python batch this reader accepts: it is a pickle of "
            f"protocol {protocol} that calls {error.construct}, a construct not allowed "
            "here (the reader runs no function a file names; CIFAR's published batches "
            "and pickles of protocol 3 or 4 call none). Re-save it with pickle protocol "
            "4, or use the published files.", argument="data_dir") from None
    except Exception as error:  # whatever a malformed file makes pickle raise
        raise InputError(f"{path} is not a CIFAR python batch ({describe_error(error)}).",
                         argument="data_dir") from None
    if len(images) != len(labels):
        raise InputError(f"{path} has {len(images)} images and {len(labels)} labels.",
                         argument="data_dir")
    return images.transpose(0, 2, 3, 1), labels


def _find_local_files(name, data_dir):
    """{split: paths} of a local copy in data_dir (or its archive's folder)."""
    dataset = SMALL_DATASETS[name]
    for folder in (data_dir, os.path.join(data_dir, dataset.subfolder)):
        found = {}
        for split, names in dataset.files.items():
            paths = []
            for file_name in names:
                candidates = [os.path.join(folder, file_name + ext) for ext in ("", ".gz")]
                paths += [path for path in candidates if tf.io.gfile.exists(path)][:1]
            if len(paths) == len(names):
                found[split] = paths
        if len(found) == len(dataset.files):
            return found
    return None


def _read_local(name, paths):
    if name == "fashion_mnist":
        images, labels = (read_idx(path) for path in paths)
        return images[..., np.newaxis], labels.astype(np.int64)
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    batches = [read_cifar_batch(path, label_key) for path in paths]
    return (np.concatenate([images for images, _ in batches]),
            np.concatenate([labels for _, labels in batches]))


def _read_tfds(name, data_dir, download):
    import tensorflow_datasets as tfds

    arrays = tfds.as_numpy(
        tfds.load(name, split=["train", "test"], data_dir=data_dir, batch_size=-1,
                  as_supervised=True, download=download)
    )
    return {split: (images, labels.astype(np.int64))
            for split, (images, labels) in zip(("train", "test"), arrays)}


def load_small_dataset(name, data_dir=None, download=True):
    """Loads a small-image data set into memory.

    Local files come first: CIFAR's python-pickle batches or Fashion-MNIST's
    IDX files (gzipped or not) in `data_dir` or in the folder their archive
    unpacks to. Otherwise TFDS reads it from `data_dir` (its data folder),
    downloading it when `download` is True and the network allows.

    Args:
        name: a key of `SMALL_DATASETS`.
        data_dir: folder of the local files or of TFDS data, or None.
        download: whether TFDS may download and prepare the data set.

    Returns:
        {"train": (images, labels), "test": (images, labels)}: uint8 images
        [n, height, width, channels] and int64 labels.
    """
    if name not in SMALL_DATASETS:
        raise InputError(
            f"unknown data set {name!r}; choose from {', '.join(SMALL_DATASETS)}.",
            argument="dataset",
        )
    dataset = SMALL_DATASETS[name]
    if data_dir is not None:
        if not tf.io.gfile.isdir(data_dir):
            raise InputError(f"no folder {data_dir}.", argument="data_dir")
        local = _find_local_files(name, data_dir)
        if local is not None:
            splits = {split: _read_local(name, paths) for split, paths in local.items()}
            return _checked(name, splits, data_dir)
    try:
        splits = _read_tfds(name, data_dir, download)
    except Exception as error:
        files = ", ".join(n for names in dataset.files.values() for n in names)
        raise InputError(
            f"No {name} data found. Local files ({files}, optionally .gz) were "
            f"not in {data_dir or '(no data folder given)'}, and TFDS could not "
            f"{'load' if download else 'find a prepared copy of'} it "
            f"({describe_error(error)}). "
            f"Get the files from {dataset.how_to_get} and name their folder "
            f"as the data folder, or, online, let TFDS download it: "
            f"python -c \"import tensorflow_datasets as tfds; tfds.load('{name}')\"."
            , argument="data_dir",
        ) from error
    return _checked(name, splits)


def _checked(name, splits, data_dir=None):
    dataset = SMALL_DATASETS[name]
    for split, (images, labels) in splits.items():
        if not len(images):
            raise InputError(f"the {split} split of {name} in {data_dir or 'TFDS'} has no "
                             "images.", argument="data_dir")
        if images.shape[1:] != dataset.image_shape or len(images) != len(labels):
            raise InputError(
                f"{name} {split}: expected images of shape {dataset.image_shape} "
                f"with one label each, got {images.shape} and {labels.shape}."
            )
        if labels.min() < 0 or labels.max() >= dataset.num_classes:
            raise InputError(
                f"{name} {split}: labels must be in [0, {dataset.num_classes})."
            )
    return splits


def small_image_input(images, labels, mean, stddev, training, global_batch_size, pad=4):
    """A `dataset_fn(input_context)` of standardized small-image batches.

    Every image is standardized first. Training then pads it with `pad`
    zeros on each side, takes a random crop of the original size and flips
    it at random (ResNeXt's CIFAR reference: normalize, then pad and crop),
    so the border a crop shows is the mean colour (0 once standardized);
    evaluation only standardizes.

    Args:
        images: uint8 array [n, height, width, channels].
        labels: int array [n].
        mean, stddev: per-channel statistics used to standardize.
        training: augment, shuffle and repeat when True; one pass in order
            when False.
        global_batch_size: batch of all replicas together.
        pad: zero padding (in standardized units) of the random crop.
    """
    mean = tf.constant(mean, tf.float32)
    stddev = tf.constant(stddev, tf.float32)
    shape = images.shape[1:]

    def preprocess(image, label):
        image = statistics.normalize(tf.cast(image, tf.float32), mean, stddev)
        if training:
            padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            image = tf.image.random_flip_left_right(tf.image.random_crop(padded, shape))
        return image, label

    def dataset_fn(input_context):
        examples = tf.data.Dataset.from_tensor_slices(
            (images, np.asarray(labels, np.int32))
        ).shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if training:
            examples = examples.shuffle(len(images)).repeat()
        examples = examples.map(preprocess, num_parallel_calls=AUTOTUNE,
                                deterministic=not training)
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        return examples.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)

    return dataset_fn


@dataclasses.dataclass(frozen=True)
class LoadedSmallDataset:
    """A small-image data set in memory, with its standardization statistics.

    Attributes:
        name: key of `SMALL_DATASETS`.
        train, test: (uint8 images [n, h, w, c], int labels [n]).
        mean, stddev: per-channel statistics of the whole training set,
            in pixel units.
    """

    name: str
    train: tuple
    test: tuple
    mean: tuple
    stddev: tuple

    @property
    def num_classes(self):
        return SMALL_DATASETS[self.name].num_classes

    @property
    def image_shape(self):
        return SMALL_DATASETS[self.name].image_shape


def load_data(name, data_dir=None, train_examples=None, seed=0, download=True,
              test_examples=None):
    """Loads a small-image data set, optionally a seeded training subset.

    Args:
        name: "cifar10", "cifar100" or "fashion_mnist".
        data_dir: local files or TFDS data folder (see `load_small_dataset`).
        train_examples: train on this many images, drawn at random with
            `seed`; all when None. The statistics use the whole set.
        seed: seed of the subset.
        download: whether TFDS may download.
        test_examples: evaluate on this many test images, drawn at random
            with `seed`; all when None.

    Returns:
        `LoadedSmallDataset`.
    """
    splits = load_small_dataset(name, data_dir, download)
    images, labels = splits["train"]
    source = data_dir or "TFDS"
    mean, stddev = statistics.channel_statistics(images)
    flat = [channel for channel, value in enumerate(stddev) if not value > 0]
    if flat:
        raise InputError(
            f"every training image of {name} in {source} has the same value "
            f"({mean[flat[0]]:g}) in channel {flat[0]} (standard deviation 0): they cannot "
            "be standardized. Check the files.", argument="data_dir")
    train = _subset((images, labels), train_examples, seed, "train_examples")
    test = _subset(splits["test"], test_examples, seed, "test_examples")
    return LoadedSmallDataset(name, train, test,
                     tuple(mean.tolist()), tuple(stddev.tolist()))


def _subset(split, count, seed, argument):
    """A seeded random subset of `count` examples of (images, labels)."""
    images, labels = split
    if count is None:
        return split
    if not 0 < count <= len(images):
        raise InputError(f"must be in [1, {len(images)}]; got {count}.", argument=argument)
    subset = np.random.default_rng(seed).permutation(len(images))[:count]
    return images[subset], labels[subset]
