"""Calibration data for full-integer quantization.

Whatever the source (a directory of images, a `.npy` / `.npz` file, an
array, a callable), every image is checked against the serving signature's
image shape before conversion starts, and a mismatch names the shape of the
data as given and the shape expected.
"""

import os
import warnings
import zipfile

import numpy as np

from psconv_tf.runtime.images import is_image_file


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
            in), as finite real numbers.
        input_shape: (height, width, channels) of the signature's images;
            height and width may be None (any) for files and arrays.
        num_samples: number of images to calibrate on.

    Returns:
        A callable yielding `[float32 image batch of 1]`, as
        `tf.lite.TFLiteConverter.representative_dataset` takes it.

    Example:

    >>> images = np.zeros((5, 32, 32, 3), "uint8")
    >>> next(representative_dataset(images, (32, 32, 3))())[0].shape
    (1, 32, 32, 3)
    >>> representative_dataset(images, (28, 28, 1))
    Traceback (most recent call last):
    ...
    ValueError: The representative array has shape (5, 32, 32, 3); the signature takes images of shape (28, 28, 1): expected (N, 28, 28, 1).
    """
    if (not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool)
            or num_samples <= 0):
        raise ValueError(
            "Argument `num_samples` must be a positive integer. "
            f"Received: num_samples={num_samples!r}"
        )
    input_shape = tuple(input_shape)
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        load = _file_loader(path, input_shape)
        what = f"{'image' if os.path.isdir(path) else 'array'} in {path!r}"
    elif callable(data):
        load, what = data, "data (an item the callable yielded)"
    else:
        array = np.asarray(data)
        _check_images(array, input_shape, "array")
        load, what = (lambda: [array]), "array"

    def generate():
        count = 0
        for item in load():
            batch = _check_images(np.asarray(item), input_shape, what)
            for image in batch:
                yield [image[None].astype("float32")]
                count += 1
                if count == num_samples:
                    return
        if count == 0:
            raise ValueError(f"The representative data {data!r} holds no image.")

    return generate


def _check_images(array, input_shape, what):
    """`array` as a batch of images of `input_shape` (None: any size).

    Args:
        array: one image (H, W, C) or a batch (N, H, W, C).
        input_shape: (height, width, channels) the signature takes.
        what: the data, for messages ("array", "array in 'x.npy'", ...).

    Returns:
        The batch, (N, H, W, C).
    """
    expected = ", ".join("H" if size is None else str(size) for size in input_shape)
    fits = array.ndim in (3, 4) and all(
        size is None or size == got for size, got in zip(input_shape, array.shape[-3:])
    )
    if not fits:
        raise ValueError(
            f"The representative {what} has shape {array.shape}; the signature "
            f"takes images of shape {input_shape}: expected (N, {expected})."
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"The representative {what} holds {array.dtype} values; images are "
            "real numbers."
        )
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(
            f"The representative {what} holds NaN or infinite values."
        )
    return array[None] if array.ndim == 3 else array


def _file_loader(path, input_shape):
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
    if not path.endswith((".npy", ".npz")):
        raise ValueError(
            f"Unsupported representative data {path!r}: expected a directory of "
            "images, a .npy or a .npz file."
        )
    array = _read_array(path)
    return lambda: [array]


def _read_array(path):
    """The one array of a `.npy` / `.npz` file, never unpickling anything."""
    try:
        with open(path, "rb") as file:
            if path.endswith(".npy"):
                return np.load(file, allow_pickle=False)
            with np.load(file, allow_pickle=False) as archive:
                arrays = [archive[name] for name in archive.files[:2]]
                names = archive.files
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        reason = str(error).strip().partition("\n")[0]
        if "pickle" in reason or "Object arrays" in reason:
            reason = "it holds no plain array (pickled or object data is not read)"
        raise ValueError(
            f"{path!r} is not a readable {os.path.splitext(path)[1]} file of images: "
            f"{reason}."
        ) from None
    if len(names) != 1:
        raise ValueError(f"{path!r} must hold one array of images; it holds {names}.")
    return arrays[0]


def image_files(directory):
    """The image files under `directory` (recursively), in a seeded random order."""
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if is_image_file(name)
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
