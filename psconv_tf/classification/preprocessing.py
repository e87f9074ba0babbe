"""ImageNet-style preprocessing (the paper's §4.1, as TF Model Garden).

Training takes a random crop of 8%-100% of the area with an aspect ratio in
[3/4, 4/3] (decoding only that window of a JPEG), resizes it to the image
size and flips it at random; evaluation resizes the shorter side to 256 and
takes the central 224 x 224 (other sizes keep the 224 / 256 ratio). Pixel
statistics are in pixel units, [0, 255].
"""

import tensorflow as tf

from psconv_tf.runtime import statistics

CROP_FRACTION = 224 / 256
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


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


def normalize(image):
    """`statistics.normalize` of the image in float32, with ImageNet's statistics."""
    return statistics.normalize(tf.cast(image, tf.float32), statistics.IMAGENET_MEAN_RGB,
                                statistics.IMAGENET_STDDEV_RGB)


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


