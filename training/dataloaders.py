"""tf.data input pipelines: ImageNet-style images and small (CIFAR-size) images.

Every pipeline is built as a `dataset_fn(input_context)` for
`tf.distribute.Strategy.distribute_datasets_from_function`, the standard way
for multi-worker input: each worker reads its own shard right at the source
(TFDS files through `tfds.ReadConfig(input_context=...)`, the file list of a
class-folder tree, or the elements of an in-memory array), so no worker
decodes images another one trains on, and each batches by the per-replica
batch size.

ImageNet preprocessing follows the paper (§4.1) and TF Model Garden:
training takes a random crop of 8%-100% of the area with an aspect ratio in
[3/4, 4/3] (decoding only that window of a JPEG), resizes it to the image size
and flips it at random; evaluation resizes the shorter side to 256 and takes
the central 224 x 224 (other sizes keep the 224 / 256 ratio).
"""

import dataclasses
import gzip
import os
import pickle
import struct
import zlib
from typing import Callable
from typing import Optional

import numpy as np
import tensorflow as tf

from configs import InputError
from configs import describe_error

AUTOTUNE = tf.data.AUTOTUNE
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CROP_FRACTION = 224 / 256
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Leading bytes of the formats `tf.io.decode_image` reads.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


# ImageNet-style preprocessing ------------------------------------------------


def random_crop_window(image_shape):
    """Samples a random-resized-crop window of an image.

    The crop covers 8% to 100% of the image area with an aspect ratio in
    [3/4, 4/3], as torchvision's `RandomResizedCrop`; after 10 failed draws
    the whole image is used.

    Args:
        image_shape: int tensor [height, width, channels].

    Returns:
        int32 tensor [offset_y, offset_x, crop_height, crop_width].
    """
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
        area_range=CROP_AREA_RANGE,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_image(image_bytes):
    """Decodes a JPEG, PNG, GIF or BMP image to uint8 [height, width, 3]."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_and_random_crop(image_bytes):
    """Decodes a random crop (`random_crop_window`) of an encoded image.

    JPEGs decode only the crop window (`tf.image.decode_and_crop_jpeg`); other
    formats decode in full, then crop.
    """

    def crop_jpeg():
        window = random_crop_window(tf.image.extract_jpeg_shape(image_bytes))
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def crop_other():
        image = decode_image(image_bytes)
        offset_y, offset_x, height, width = tf.unstack(
            random_crop_window(tf.shape(image))
        )
        return tf.image.crop_to_bounding_box(image, offset_y, offset_x, height, width)

    return tf.cond(tf.io.is_jpeg(image_bytes), crop_jpeg, crop_other)


def resize_and_center_crop(image, size, crop_fraction=CROP_FRACTION):
    """Resizes the shorter side to `round(size / crop_fraction)`, crops the centre.

    The longer side is scaled by the same factor and truncated, as
    torchvision's `Resize(256)`; the resize is bilinear with antialiasing, as
    PIL's.

    Args:
        image: [height, width, channels] tensor.
        size: side of the square output.
        crop_fraction: output side over resized shorter side (224 / 256).

    Returns:
        float32 tensor [size, size, channels].
    """
    resized_short_side = round(size / crop_fraction)
    shape = tf.shape(image)[:2]
    resized_shape = shape * resized_short_side // tf.reduce_min(shape)
    image = tf.image.resize(image, resized_shape, method="bilinear", antialias=True)
    offset = (resized_shape - size) // 2
    return tf.image.crop_to_bounding_box(image, offset[0], offset[1], size, size)


def normalize(image, mean=IMAGENET_MEAN_RGB, stddev=IMAGENET_STDDEV_RGB):
    """(image - mean) / stddev per channel, in float32."""
    return (tf.cast(image, tf.float32) - mean) / stddev


def preprocess_for_train(image_bytes, size):
    """Random-resized crop, bilinear resize to `size`, random flip, normalize.

    The crop is resized without antialiasing, as in Model Garden: it is
    cheaper, and the random scale dwarfs the difference.
    """
    image = decode_and_random_crop(image_bytes)
    image = tf.image.resize(image, [size, size], method="bilinear")
    return normalize(tf.image.random_flip_left_right(image))


def preprocess_for_eval(image_bytes, size):
    """Shorter side to size / 0.875, central size x size crop, normalize."""
    return normalize(resize_and_center_crop(decode_image(image_bytes), size))


# ImageNet-style sources ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """Encoded images and integer labels of one split.

    Attributes:
        read: `read(input_context, shuffle)` returns this worker's shard as a
            dataset of (encoded image, int32 label); `shuffle` shuffles the
            file order.
        num_examples: examples in the split, or None where unknown.
        num_classes: number of classes.
        class_names: class names by label, where known.
    """

    read: Callable
    num_examples: Optional[int]
    num_classes: int
    class_names: Optional[tuple] = None


def list_image_folder(split_dir, class_names=None):
    """Lists a class-folder tree: `split_dir/<class>/<image>`.

    Args:
        split_dir: local or `gs://` folder with one sub-folder per class.
        class_names: the classes in label order (the training split's, for
            the validation split); by default the sorted sub-folder names.

    Returns:
        (paths, labels, class_names).
    """
    if not tf.io.gfile.isdir(split_dir):
        raise InputError(f"--data-dir: no folder {split_dir}.")
    folders = sorted(
        name.rstrip("/")
        for name in tf.io.gfile.listdir(split_dir)
        if tf.io.gfile.isdir(os.path.join(split_dir, name))
    )
    if not folders:
        raise InputError(f"--data-dir: {split_dir} has no class sub-folders.")
    class_names = tuple(folders) if class_names is None else tuple(class_names)
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise InputError(
            f"--data-dir: classes of {split_dir} missing from the training "
            f"split: {', '.join(unknown[:5])}."
        )
    paths, labels = [], []
    for name in folders:
        files = sorted(
            path
            for path in tf.io.gfile.glob(os.path.join(split_dir, name, "*"))
            if path.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise InputError(
                f"--data-dir: class folder {os.path.join(split_dir, name)} has no "
                f"images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        paths += files
        labels += [class_names.index(name)] * len(files)
    return paths, labels, class_names


def _read_checked_image(path):
    """Reads an image file; fails naming it unless it starts like an image."""
    image_bytes = tf.io.read_file(path)
    looks_like_image = tf.reduce_any([
        tf.equal(tf.strings.substr(image_bytes, 0, len(signature)), signature)
        for signature in _IMAGE_SIGNATURES
    ])
    check = tf.debugging.Assert(
        looks_like_image, ["Corrupt image file (not JPEG, PNG, GIF or BMP):", path]
    )
    with tf.control_dependencies([check]):
        return tf.identity(image_bytes)


def image_folder_source(split_dir, class_names=None):
    """An `ImageSource` over a class-folder tree (see `list_image_folder`)."""
    paths, labels, class_names = list_image_folder(split_dir, class_names)

    def read(input_context, shuffle):
        records = tf.data.Dataset.from_tensor_slices(
            (paths, tf.constant(labels, tf.int32))
        )
        records = records.shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        )
        if shuffle:
            records = records.shuffle(len(paths), reshuffle_each_iteration=True)
        return records.map(
            lambda path, label: (_read_checked_image(path), label),
            num_parallel_calls=AUTOTUNE,
        )

    return ImageSource(read, len(paths), len(class_names), class_names)


def tfds_source(name, split, data_dir=None, shuffle_buffer=10_000):
    """An `ImageSource` over a TFDS image-classification split.

    The data set is prepared in `data_dir` (or TFDS's default folder) first
    if needed: downloaded where TFDS can, and for ImageNet (`imagenet2012`)
    built from the tarballs of image-net.org placed in
    `<data_dir>/downloads/manual/`, as TFDS documents.

    Args:
        name: TFDS name, e.g. "imagenet2012".
        split: e.g. "train" or "validation".
        data_dir: TFDS data folder, local or gs://.
        shuffle_buffer: encoded images shuffled after the files (training).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise InputError(f"--dataset: TFDS has no data set named {name!r}.") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise InputError(
            f"--dataset: {name!r} has no 'image' and 'label' features, "
            f"it has {', '.join(features)}."
        )
    try:
        builder.download_and_prepare()  # returns at once when prepared
    except Exception as error:
        raise InputError(
            f"TFDS could not prepare {name!r} in {data_dir or 'its default folder'} "
            f"({describe_error(error)}).\n"
            f"Prepare it with `tfds build {name}"
            f"{' --data_dir ' + data_dir if data_dir else ''}` (online; for "
            "imagenet2012 first put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/), or pass "
            "a class-folder tree as --data-dir."
        ) from error
    try:
        num_examples = builder.info.splits[split].num_examples
    except KeyError:  # a mocked builder has no split sizes
        num_examples = None

    def read(input_context, shuffle):
        records = builder.as_dataset(
            split=split,
            shuffle_files=shuffle,
            read_config=tfds.ReadConfig(input_context=input_context),
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        if shuffle:
            records = records.shuffle(shuffle_buffer)
        return records.map(
            lambda example: (example["image"], tf.cast(example["label"], tf.int32))
        )

    return ImageSource(read, num_examples, features["label"].num_classes)


def imagenet_input(source, training, image_size, global_batch_size):
    """A `dataset_fn(input_context)` of preprocessed ImageNet-style batches.

    Args:
        source: an `ImageSource`.
        training: random crops, flips, shuffling and repetition when True;
            centre crops in file order, one pass, when False.
        image_size: side of the square images.
        global_batch_size: batch of all replicas together; every replica
            gets `global_batch_size / num_replicas` images.
    """
    preprocess = preprocess_for_train if training else preprocess_for_eval

    def dataset_fn(input_context):
        records = source.read(input_context, shuffle=training)
        if training:
            records = records.repeat()
        images = records.map(
            lambda image_bytes, label: (preprocess(image_bytes, image_size), label),
            num_parallel_calls=AUTOTUNE,
            deterministic=not training,
        )
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        return images.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)

    return dataset_fn


# Small images (CIFAR-10/100, Fashion-MNIST) ----------------------------------


@dataclasses.dataclass(frozen=True)
class SmallDataset:
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
    "cifar10": SmallDataset(
        10, (32, 32, 3), "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "the python version of https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": SmallDataset(
        100, (32, 32, 3), "cifar-100-python", {"train": ("train",), "test": ("test",)},
        "the python version of https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
    "fashion_mnist": SmallDataset(
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


def _read_cifar_batch(path, label_key):
    with tf.io.gfile.GFile(path, "rb") as file:
        batch = pickle.load(file, encoding="bytes")
    images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
    return images.transpose(0, 2, 3, 1), np.asarray(batch[label_key], np.int64)


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
    batches = [_read_cifar_batch(path, label_key) for path in paths]
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
            f"--dataset: unknown data set {name!r}; choose from "
            f"{', '.join(SMALL_DATASETS)}."
        )
    dataset = SMALL_DATASETS[name]
    if data_dir is not None:
        if not tf.io.gfile.isdir(data_dir):
            raise InputError(f"--data-dir: no folder {data_dir}.")
        local = _find_local_files(name, data_dir)
        if local is not None:
            splits = {split: _read_local(name, paths) for split, paths in local.items()}
            return _checked(name, splits)
    try:
        splits = _read_tfds(name, data_dir, download)
    except Exception as error:
        files = ", ".join(n for names in dataset.files.values() for n in names)
        raise InputError(
            f"No {name} data found. Local files ({files}, optionally .gz) were "
            f"not in {data_dir or '(no --data-dir given)'}, and TFDS could not "
            f"{'load' if download else 'find a prepared copy of'} it "
            f"({describe_error(error)}).\n"
            f"Get the files from {dataset.how_to_get} and pass their folder as "
            f"--data-dir, or, online, let TFDS download it: "
            f"python -c \"import tensorflow_datasets as tfds; tfds.load('{name}')\"."
        ) from error
    return _checked(name, splits)


def _checked(name, splits):
    dataset = SMALL_DATASETS[name]
    for split, (images, labels) in splits.items():
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


def channel_stats(images):
    """Per-channel mean and standard deviation of uint8 images [n, h, w, c]."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


def small_image_input(images, labels, mean, stddev, training, global_batch_size, pad=4):
    """A `dataset_fn(input_context)` of standardized small-image batches.

    Training pads every image with `pad` zero pixels on each side, takes a
    random crop of the original size and flips it at random, then
    standardizes it (ResNet and ResNeXt's CIFAR augmentation); evaluation
    only standardizes.

    Args:
        images: uint8 array [n, height, width, channels].
        labels: int array [n].
        mean, stddev: per-channel statistics used to standardize.
        training: augment, shuffle and repeat when True; one pass in order
            when False.
        global_batch_size: batch of all replicas together.
        pad: zero padding of the random crop.
    """
    mean = tf.constant(mean, tf.float32)
    stddev = tf.constant(stddev, tf.float32)
    shape = images.shape[1:]

    def preprocess(image, label):
        image = tf.cast(image, tf.float32)
        if training:
            padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            image = tf.image.random_flip_left_right(tf.image.random_crop(padded, shape))
        return (image - mean) / stddev, label

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
