"""Dataset statistics and the one normalisation rule, (x - mean) / std.

Statistics come in two units: pixel units, for pixel values in [0, 255]
(what training pipelines and config.json hold), and unit fractions, for
values in [0, 1] (what export and keras-hub take). `to_unit` and
`to_pixels` convert between them; `normalize` applies the rule to arrays
or tensors of any framework; `scale_and_offset` writes the same rule as
x * scale + offset for affine layers such as keras-hub's `ImageConverter`.

>>> [round(v, 3) for v in IMAGENET_MEAN_RGB]
[123.675, 116.28, 103.53]
>>> scale, offset = scale_and_offset((0.5,), (0.25,), pixel_range=255.0)
>>> round(255.0 * scale[0] + offset[0], 6)  # a white pixel: (1 - 0.5) / 0.25
2.0
"""

import numpy as np

# ImageNet's channel statistics (RGB), as fractions of 255 and in pixel units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_RANGE = 255.0


def to_pixels(values):
    """Statistics for values in [0, 1] as pixel units, [0, 255]."""
    return tuple(v * 255 for v in values)


def to_unit(values):
    """Statistics in pixel units as fractions of 255."""
    return tuple(v / PIXEL_RANGE for v in values)


IMAGENET_MEAN_RGB = to_pixels(IMAGENET_MEAN)
IMAGENET_STDDEV_RGB = to_pixels(IMAGENET_STD)


def normalize(x, mean, std):
    """(x - mean) / std per channel (the last axis), in x's float type.

    `x` is a float array or tensor (NumPy, TensorFlow, ...); `mean` and
    `std` are per-channel sequences in x's units.
    """
    return (x - mean) / std


def scale_and_offset(mean, std, pixel_range=1.0):
    """`normalize` as x * scale + offset, per channel.

    Args:
        mean, std: per-channel statistics for values in [0, 1].
        pixel_range: the value of a white pixel in the input (255.0 for
            pixel values in [0, 255]).

    Returns:
        (scale, offset): lists, so that x * scale + offset equals
        (x / pixel_range - mean) / std.
    """
    scale = [1.0 / (pixel_range * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return scale, offset


def channel_statistics(images):
    """Per-channel mean and standard deviation of images [..., channels].

    Returns:
        (mean, std): float64 arrays of one value per channel, computed in
        float64 whatever the images' type.
    """
    images = np.asarray(images)
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


def mean_and_std(values):
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the
    figures of several runs, e.g. the top-1 errors of several seeds."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std
