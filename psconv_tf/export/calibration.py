"""Calibration data for full-integer quantization."""

import os
import warnings

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def representative_dataset(data, input_shape, num_samples=100):
    """Calibration inputs for full-integer quantization, one image at a time.

    Args:
        data: a directory of images (searched recursively; jpeg, png, bmp,
            gif), loaded as pixel values in [0, 255] and resized bilinearly
            to `input_shape` (undecodable ones skipped with a warning naming
            them); a `.npy` / `.npz` file or an array of images
            (N, H, W, C); or a callable returning an iterable of images or
            batches. Files, arrays and callables must hold what the serving
            signature takes (e.g. pixel values when normalization is built
            in).
        input_shape: (height, width, channels) of the signature's images;
            height and width may be None (any) for files and arrays.
        num_samples: number of images to calibrate on.

    Returns:
        A callable yielding `[float32 image batch of 1]`, as
        `tf.lite.TFLiteConverter.representative_dataset` takes it.
    """
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(
            "Argument `num_samples` must be a positive integer. "
            f"Received: num_samples={num_samples!r}"
        )
    input_shape = tuple(input_shape)
    if isinstance(data, (str, os.PathLike)):
        load = _image_loader(os.fspath(data), input_shape)
    elif callable(data):
        load = data
    else:
        array = np.asarray(data)
        load = array.__iter__

    def generate():
        count = 0
        for item in load():
            batch = np.asarray(item)
            batch = batch[None] if batch.ndim == 3 else batch
            _check_calibration_batch(batch, input_shape)
            for image in batch:
                yield [image[None].astype("float32")]
                count += 1
                if count == num_samples:
                    return
        if count == 0:
            raise ValueError(f"The representative data {data!r} holds no image.")

    return generate


def _image_loader(path, input_shape):
    """A function that loads the images of `path`, for `input_shape`."""
    if os.path.isdir(path):
        height, width, channels = input_shape
        if None in (height, width) or channels not in (1, 3, 4):
            raise ValueError(
                "Images from a directory need a fixed input size and 1, 3 or "
                f"4 channels; the signature takes {input_shape}."
            )
        return lambda: _directory_images(path, (height, width), channels)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No representative data at {path!r}.")
    if path.endswith(".npy"):
        return lambda: np.load(path)
    if path.endswith(".npz"):
        with np.load(path) as archive:
            if len(archive.files) != 1:
                raise ValueError(
                    f"{path!r} must hold one array of images; it holds "
                    f"{archive.files}."
                )
            key = archive.files[0]
        return lambda: np.load(path)[key]
    raise ValueError(
        f"Unsupported representative data {path!r}: expected a directory of "
        "images, a .npy or a .npz file."
    )


def image_files(directory):
    """The image files under `directory` (recursively), in a seeded random order."""
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    order = np.random.default_rng(0).permutation(len(paths))
    return [paths[index] for index in order]


def _directory_images(directory, size, channels):
    """Yields the images of `directory` as float32 pixels resized to `size`.

    An image that cannot be read or decoded is skipped with a warning that
    names it; a final warning counts them.
    """
    import tensorflow as tf

    skipped = []
    for path in image_files(directory):
        try:
            image = tf.io.decode_image(tf.io.read_file(path), channels=channels,
                                       expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                tf.errors.PermissionDeniedError) as error:
            skipped.append(path)
            reason = error.message.strip().splitlines()[0]
            warnings.warn(f"Skipped calibration image {path}: cannot decode it ({reason}).",
                          stacklevel=2)
            continue
        yield tf.image.resize(tf.cast(image, tf.float32), size).numpy()
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} undecodable calibration image(s) in "
                      f"{directory}.", stacklevel=2)


def _check_calibration_batch(batch, input_shape):
    if batch.ndim != 4 or any(
        size is not None and size != got
        for size, got in zip(input_shape, batch.shape[1:])
    ):
        raise ValueError(
            f"Representative images must have shape {input_shape} (or a batch "
            f"of them); received a batch of shape {batch.shape}."
        )
