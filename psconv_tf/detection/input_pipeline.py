"""tf.data input for detection: COCO-format files or TFDS `coco/2017`.

Every example becomes (image, target): the image resized as the detection
recipe does (shorter side to `min_size`, longer side at most `max_size`,
aspect kept: mmdet's `Resize(img_scale=(1333, 800), keep_ratio=True)`),
randomly flipped for training, normalized with ImageNet's statistics and
zero-padded at the bottom and right, per batch, to the batch's largest
height and width rounded up to a multiple of `size_divisor` (mmdet's
`Pad(size_divisor=32)`; the detector's anchors follow any such shape,
`anchors.StrideAnchorGenerator`); `target` holds
"boxes" (xyxy pixels of the resized image, padded with -1), "labels"
(0..C-1, padded with -1), "image_id" and "scale" (resized / original).

An image file need not have the size its COCO record declares: the boxes are
in the declared size's pixels, and a uniformly resized copy (the two sides'
ratios agree within one declared pixel, as rounding leaves them) gets its
boxes scaled with it, "scale" then mapping back to the declared pixels that
evaluation compares with. Any other disagreement (sides swapped, cropped, a
different image) skips the image with a logged warning naming its file, as
files that fail to decode are.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from psconv_tf.detection import coco_data
from psconv_tf.runtime.statistics import IMAGENET_MEAN_RGB
from psconv_tf.runtime.statistics import IMAGENET_STDDEV_RGB

PAD = -1


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """min_size/max_size: the resize range; size_divisor: a batch's images
    are padded to its largest height and width rounded up to a multiple of
    it (32, mmdet's: the stride of C5, so that the FPN's top-down path meets
    sizes that halve exactly, which RetinaNet needs; a larger multiple of 32
    makes fewer distinct shapes, which matters under XLA, compiled once per
    shape); flip: random horizontal flips."""

    min_size: int = 800
    max_size: int = 1333
    size_divisor: int = 32
    flip: bool = False

    def __post_init__(self):
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(
                "The resize range needs 0 < min_size <= max_size. Received: "
                f"min_size={self.min_size}, max_size={self.max_size}"
            )
        if self.size_divisor <= 0:
            raise ValueError(f"size_divisor must be positive. Received: {self.size_divisor}")

    @property
    def largest_side(self):
        """The largest padded side a batch can have: max_size rounded up to
        a multiple of size_divisor (the run's recorded image size)."""
        return -(-self.max_size // self.size_divisor) * self.size_divisor


def coco_examples(data, labels_of=None):
    """A dataset of raw examples {image (uint8), boxes, labels, image_id,
    annotation_scale} of a `CocoData`; crowd boxes are left out of training
    targets. Files that fail to decode, or whose size disagrees with their
    record (see above), are dropped with a logged warning naming them; if
    no image with objects remains, `coco_data.AnnotationError` says so."""
    if not data.records:
        raise ValueError(f"{data.source}: no images to read")
    labels_of = labels_of or data.label_of()
    records = [r for r in data.records]
    paths = [r.path for r in records]
    ids = np.array([r.id for r in records], np.int64)
    declared = np.array([[r.height, r.width] for r in records], np.int64)
    boxes = tf.ragged.constant([r.boxes[~r.iscrowd].tolist() for r in records],
                               ragged_rank=1, inner_shape=(4,), dtype=tf.float32)
    labels = tf.ragged.constant(
        [[labels_of[c] for c in r.category_ids[~r.iscrowd]] for r in records], dtype=tf.int32
    )
    dataset = tf.data.Dataset.from_tensor_slices((paths, boxes, labels, ids, declared))

    def decode(path, box, label, image_id, declared):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        decoded = tf.shape(image, out_type=tf.int64)[:2]
        # |H/h - W/w| * h * w <= max(h, w): the sides' ratios agree within one
        # declared pixel (products stay below 2**62 for int32 sides).
        skew = tf.abs(decoded[0] * declared[1] - decoded[1] * declared[0])
        check = tf.debugging.Assert(
            skew <= tf.reduce_max(declared),
            ["image", path, "has height, width", decoded, "but its record declares",
             declared, "- image skipped"],
        )
        with tf.control_dependencies([check]):
            scale = tf.cast(tf.reduce_sum(decoded), tf.float32) / tf.cast(
                tf.reduce_sum(declared), tf.float32
            )
        return dict(image=image, boxes=box, labels=label, image_id=image_id,
                    annotation_scale=scale)

    examples = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    examples = examples.ignore_errors(log_warning=True)
    # One image with objects must get through, or training would stop at
    # once with a bare StopIteration: a read of the first such image, or of
    # all of them when none decodes.
    if not any(True for _ in examples.filter(lambda e: tf.size(e["labels"]) > 0).take(1)):
        with_objects = sum(bool((~r.iscrowd).any()) for r in records)
        raise coco_data.AnnotationError(
            f"{data.source}: none of its {with_objects} images with objects could be read "
            "as the image its record declares (the warnings above name each)"
        )
    return examples


def tfds_examples(split, data_dir=None):
    """Raw examples of TFDS `coco/2017` (`split`: "train", "validation"),
    crowd boxes left out, and the label names. Needs tensorflow-datasets
    and the prepared data set in `data_dir`; nothing is downloaded."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("coco/2017", data_dir=data_dir)
    dataset = builder.as_dataset(split=split, shuffle_files=split == "train")
    names = builder.info.features["objects"]["label"].names

    def convert(example):
        image = example["image"]
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        keep = tf.logical_not(example["objects"]["is_crowd"])
        yxyx = tf.boolean_mask(example["objects"]["bbox"], keep)
        boxes = tf.stack(
            [yxyx[:, 1] * size[1], yxyx[:, 0] * size[0], yxyx[:, 3] * size[1], yxyx[:, 2] * size[0]],
            axis=-1,
        )
        return dict(
            image=image,
            boxes=boxes,
            labels=tf.cast(tf.boolean_mask(example["objects"]["label"], keep), tf.int32),
            image_id=example["image/id"],
        )

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE), names


def tfds_ground_truth(split, data_dir=None):
    """A COCO ground-truth dict of a TFDS `coco/2017` split (crowd boxes and
    areas included, category id = label + 1) and its `Category`s."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("coco/2017", data_dir=data_dir)
    names = builder.info.features["objects"]["label"].names
    categories = tuple(coco_data.Category(k + 1, name) for k, name in enumerate(names))
    records = []
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
        height, width = example["image"].shape[:2]
        yxyx = example["objects"]["bbox"].reshape(-1, 4)
        records.append(
            coco_data.ImageRecord(
                id=int(example["image/id"]), path="", height=height, width=width,
                boxes=(yxyx[:, [1, 0, 3, 2]] * [width, height, width, height]).astype(np.float32),
                category_ids=example["objects"]["label"].astype(np.int64) + 1,
                iscrowd=example["objects"]["is_crowd"].astype(bool),
                areas=example["objects"]["area"].astype(np.float32),
            )
        )
    return records, categories


def resize_and_flip(example, config, training, seed=None):
    """The recipe's resize (and, training, random flip) of one raw example.

    Boxes are scaled by `annotation_scale` (the decoded size over the size
    they were drawn on; 1 without it) and the resize; the target's "scale"
    is their product, so that boxes / scale are annotation pixels again."""
    image = tf.cast(example["image"], tf.float32)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    resize = tf.minimum(config.min_size / tf.reduce_min(size), config.max_size / tf.reduce_max(size))
    new_size = tf.cast(tf.round(size * resize), tf.int32)
    image = tf.image.resize(image, new_size, method="bilinear", antialias=True)
    scale = resize * example.get("annotation_scale", 1.0)
    boxes = example["boxes"] * scale
    if training and config.flip:
        flip = tf.random.uniform([], seed=seed) < 0.5
        width = tf.cast(new_size[1], tf.float32)
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        boxes = tf.cond(
            flip,
            lambda: tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], -1),
            lambda: boxes,
        )
    image = (image - IMAGENET_MEAN_RGB) / IMAGENET_STDDEV_RGB
    target = dict(boxes=boxes, labels=example["labels"], image_id=example["image_id"], scale=scale)
    return image, target


def batched(examples, config, batch_size, training, shuffle_buffer=1000, seed=None):
    """Resized, (shuffled,) padded batches: images zero-padded to the
    batch's largest height and width rounded up to `config.size_divisor`,
    boxes and labels with -1 to the batch's largest count; for training,
    images without objects are left out."""
    if training:
        # Images without objects teach nothing and, batched together, leave
        # the label encoder no boxes at all (mmdet's filter_empty_gt).
        examples = examples.filter(lambda example: tf.size(example["labels"]) > 0)
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = examples.map(
        lambda example: resize_and_flip(example, config, training, seed),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.padded_batch(
        batch_size,
        padded_shapes=(
            [None, None, 3],
            dict(boxes=[None, 4], labels=[None], image_id=[], scale=[]),
        ),
        padding_values=(
            0.0,
            dict(
                boxes=tf.constant(PAD, tf.float32),
                labels=tf.constant(PAD, tf.int32),
                image_id=tf.constant(0, tf.int64),
                scale=tf.constant(0, tf.float32),
            ),
        ),
        drop_remainder=training,
    )
    return dataset.map(
        lambda images, target: (pad_to_multiple(images, config.size_divisor), target)
    ).prefetch(tf.data.AUTOTUNE)


def pad_to_multiple(images, divisor):
    """`images` [batch, H, W, C] zero-padded at the bottom and right to H and
    W rounded up to multiples of `divisor`; pixel coordinates are unchanged."""
    size = tf.shape(images)[1:3]
    extra = (-size) % divisor
    return tf.pad(images, [[0, 0], [0, extra[0]], [0, extra[1]], [0, 0]])
