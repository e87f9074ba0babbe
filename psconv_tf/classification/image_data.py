"""ImageNet-style input: encoded images from class folders or TFDS, batched.

Every pipeline is built as a `dataset_fn(input_context)` for
`tf.distribute.Strategy.distribute_datasets_from_function`, the standard way
for multi-worker input: each worker reads its own shard right at the source
(TFDS files through `tfds.ReadConfig(input_context=...)`, the file list of a
class-folder tree), so no worker decodes images another one trains on, and
each batches by the per-replica batch size.

An image that cannot be read or decoded (a truncated JPEG, a text file
named .jpg) never stops a run: it is decoded in a dataset of its own whose
errors are dropped, skipped, and named in the pipeline's `SkippedImages`,
which the trainer logs and counts. `scan_images` lists every such image up
front.
"""

import dataclasses
import os
import threading
from typing import Callable
from typing import Optional

import tensorflow as tf

from psconv_tf.classification import preprocessing
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import describe_error
from psconv_tf.runtime.errors import os_error_text
from psconv_tf.runtime.images import IMAGE_EXTENSIONS
from psconv_tf.runtime.images import is_image_file

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """Encoded images and integer labels of one split.

    Attributes:
        read: `read(input_context, shuffle)` returns this worker's shard as a
            dataset of (name, payload, int32 label); `shuffle` shuffles the
            file order.
        load: `load(name, payload)` returns the encoded image (in graph).
        num_examples: examples in the split, or None where unknown.
        num_classes: number of classes.
        class_names: class names by label, where known.
    """

    read: Callable
    load: Callable
    num_examples: Optional[int]
    num_classes: int
    class_names: Optional[tuple] = None
    excluded: tuple = ()

    def without(self, names):
        """This source without the images named in `names` (e.g. from
        `scan_images`), which a pipeline counts as skipped (`excluded`)."""
        names = tuple(sorted(names))
        constant = tf.constant(names or ("",))
        read = self.read

        def read_kept(input_context, shuffle):
            return read(input_context, shuffle).filter(
                lambda name, payload, label: tf.logical_not(
                    tf.reduce_any(tf.equal(name, constant))))

        return dataclasses.replace(self, read=read_kept, excluded=self.excluded + names)


class SkippedImages:
    """The images a pipeline skipped, by name; safe across pipeline threads.

    >>> skipped = SkippedImages()
    >>> skipped.add("train/cat/1.jpg"); skipped.add("train/cat/1.jpg")
    >>> skipped.new_names(), skipped.new_names(), skipped.summary()
    (['train/cat/1.jpg'], [], {'count': 1, 'files': ['train/cat/1.jpg']})
    """

    MAX_LISTED = 100

    def __init__(self, names=()):
        self._names = []
        self._seen = set()
        self._reported = 0
        self._lock = threading.Lock()
        for name in names:
            self.add(name)

    def add(self, name):
        with self._lock:
            if name not in self._seen:
                self._seen.add(name)
                self._names.append(name)

    def new_names(self):
        """The names added since the last call."""
        with self._lock:
            new = self._names[self._reported:]
            self._reported = len(self._names)
        return new

    def summary(self):
        """{"count": distinct images skipped, "files": the first 100 names}."""
        with self._lock:
            return {"count": len(self._names), "files": self._names[:self.MAX_LISTED]}


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
        raise InputError(f"no folder {split_dir}.", argument="data_dir")
    folders = sorted(
        name.rstrip("/")
        for name in _listing(split_dir)
        if tf.io.gfile.isdir(os.path.join(split_dir, name))
    )
    if not folders:
        raise InputError(f"{split_dir} has no class sub-folders.", argument="data_dir")
    class_names = tuple(folders) if class_names is None else tuple(class_names)
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise InputError(
            f"classes of {split_dir} missing from the training split: "
            f"{', '.join(unknown[:5])}.", argument="data_dir",
        )
    paths, labels = [], []
    for name in folders:
        folder = os.path.join(split_dir, name)
        found = sorted(
            os.path.join(folder, entry)
            for entry in _listing(folder, "class folder ")
            if is_image_file(entry)
        )
        if not found:
            raise InputError(
                f"class folder {os.path.join(split_dir, name)} has no images "
                f"({', '.join(IMAGE_EXTENSIONS)}).", argument="data_dir",
            )
        paths += found
        labels += [class_names.index(name)] * len(found)
    return paths, labels, class_names


def _listing(folder, what="folder "):
    """The names in `folder`; an `InputError` if it cannot be read."""
    try:
        return tf.io.gfile.listdir(folder)
    except tf.errors.OpError as error:
        raise InputError(f"{what}{folder} cannot be read ({os_error_text(error)}).",
                         argument="data_dir") from None


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
        # The file is read where it is decoded, so that an unreadable one is
        # skipped like an undecodable one.
        return records.map(lambda path, label: (path, tf.constant(b""), label))

    return ImageSource(read, lambda name, payload: tf.io.read_file(name), len(paths),
                       len(class_names), class_names)


def tfds_source(name, split, data_dir=None, shuffle_buffer=10_000):
    """An `ImageSource` over a TFDS image-classification split.

    The data set is prepared in `data_dir` (or TFDS's default folder) first
    if needed: downloaded where TFDS can, and for ImageNet (`imagenet2012`)
    built from the tarballs of image-net.org placed in
    `<data_dir>/downloads/manual/`, as TFDS documents. Images are named by
    their `file_name` feature where the data set has one.

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
        raise InputError(f"TFDS has no data set named {name!r}.", argument="dataset") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise InputError(
            f"{name!r} has no 'image' and 'label' features, it has "
            f"{', '.join(features)}.", argument="dataset",
        )
    try:
        builder.download_and_prepare()  # returns at once when prepared
    except Exception as error:
        raise InputError(
            f"TFDS could not prepare {name!r} in {data_dir or 'its default folder'} "
            f"({describe_error(error)}). Prepare it with `tfds build {name}"
            f"{' --data_dir ' + data_dir if data_dir else ''}` (online; for "
            "imagenet2012 first put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/), or use "
            "a class-folder tree.", argument="data_dir",
        ) from error
    try:
        num_examples = builder.info.splits[split].num_examples
    except KeyError:  # a mocked builder has no split sizes
        num_examples = None
    has_file_names = "file_name" in features

    def read(input_context, shuffle):
        records = builder.as_dataset(
            split=split,
            shuffle_files=shuffle,
            read_config=tfds.ReadConfig(input_context=input_context),
            decoders={"image": tfds.decode.SkipDecoding()},
        ).enumerate()
        if shuffle:
            records = records.shuffle(shuffle_buffer)

        def fields(index, example):
            image_name = (example["file_name"] if has_file_names
                          else tf.strings.format(f"{name}/{split}[{{}}]", index))
            return image_name, example["image"], tf.cast(example["label"], tf.int32)

        return records.map(fields)

    return ImageSource(read, lambda name, payload: payload, num_examples,
                       features["label"].num_classes)


def decoded_or_flagged(source, preprocess, image_shape):
    """A function of (name, payload, label) returning a one-element dataset:
    (image, label, True, name), or (zeros, label, False, name) when loading
    or preprocessing the image fails."""

    def attempt(name, payload, label):
        image_shape_ = tf.TensorShape(image_shape)
        decoded = tf.data.Dataset.from_tensors((name, payload)).map(
            lambda name, payload: (tf.ensure_shape(preprocess(source.load(name, payload)),
                                                   image_shape_), True)
        ).ignore_errors()
        fallback = tf.data.Dataset.from_tensors((tf.zeros(image_shape, tf.float32), False))
        return decoded.concatenate(fallback).take(1).map(
            lambda image, ok: (image, label, ok, name))

    return attempt


def _kept(skipped):
    """A filter predicate keeping decoded images and naming the others."""

    def report(name):
        skipped.add(name.numpy().decode("utf-8", "replace"))
        return False

    def predicate(image, label, ok, name):
        return tf.cond(
            ok, lambda: tf.constant(True),
            lambda: tf.reshape(tf.py_function(report, [name], tf.bool), []),
        )

    return predicate


class ImagenetInput:
    """A `dataset_fn(input_context)` of preprocessed ImageNet-style batches.

    Undecodable images are skipped and named in `self.skipped` (with those
    the source excludes). Training repeats the decoded images, not the
    files: a pass in which every image fails ends the dataset instead of
    looping forever, and the trainer reports it.

    Args:
        source: an `ImageSource`.
        training: random crops, flips, shuffling and repetition when True;
            centre crops in file order, one pass, when False.
        image_size: side of the square images.
        global_batch_size: batch of all replicas together; every replica
            gets `global_batch_size / num_replicas` images.
    """

    def __init__(self, source, training, image_size, global_batch_size):
        self.source = source
        self.training = training
        self.image_size = image_size
        self.global_batch_size = global_batch_size
        self.skipped = SkippedImages(source.excluded)

    def __call__(self, input_context):
        training, size = self.training, self.image_size
        preprocess = preprocessing.preprocess_for_train if training else (
            preprocessing.preprocess_for_eval)
        records = self.source.read(input_context, shuffle=training)
        images = records.interleave(
            decoded_or_flagged(self.source, lambda image: preprocess(image, size),
                               (size, size, 3)),
            num_parallel_calls=AUTOTUNE, deterministic=not training,
        ).filter(_kept(self.skipped)).map(lambda image, label, ok, name: (image, label))
        if training:
            # After the filter: tf.data ends a repetition whose first pass is empty.
            images = images.repeat()
        batch_size = input_context.get_per_replica_batch_size(self.global_batch_size)
        return images.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)


def imagenet_input(source, training, image_size, global_batch_size):
    """An `ImagenetInput` (see there)."""
    return ImagenetInput(source, training, image_size, global_batch_size)


def scan_images(source):
    """Names of the images of `source` that cannot be read or decoded.

    Decodes every image once, in parallel; nothing else is kept.
    """
    context = tf.distribute.InputContext()
    flagged = source.read(context, shuffle=False).interleave(
        decoded_or_flagged(source, _decoded_size, (2,)),
        num_parallel_calls=AUTOTUNE, deterministic=True,
    )
    bad = flagged.filter(lambda image, label, ok, name: tf.logical_not(ok))
    return [name.decode("utf-8", "replace")
            for _, _, _, name in bad.as_numpy_iterator()]


def _decoded_size(image_bytes):
    return tf.cast(tf.shape(preprocessing.decode_image(image_bytes))[:2], tf.float32)
