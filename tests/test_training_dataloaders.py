"""The training input pipelines, checked on images whose result is predictable.

Ramp images (red = row, green = column) make every crop, flip and resize
readable from the output pixels: a bilinear resize maps a linear ramp to a
linear ramp, so the crop window and the flip follow from the output's first
and last rows and columns, and every other pixel is predicted from them.
"""

import os
import pickle

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import training_helpers
from psconv_tf.classification import image_data
from psconv_tf.classification import preprocessing
from psconv_tf.classification import small_data
from psconv_tf.runtime import statistics
from psconv_tf.runtime.errors import InputError

pytestmark = pytest.mark.tensorflow

MEAN = np.array(statistics.IMAGENET_MEAN_RGB)
STDDEV = np.array(statistics.IMAGENET_STDDEV_RGB)


def _ramp(height, width, row_scale=1.0, column_scale=1.0):
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
    blue = np.full((height, width), 7.0)
    return np.stack([row_scale * rows, column_scale * columns, blue], -1).round().astype(np.uint8)


def _png(image):
    return tf.io.encode_png(image).numpy()


def _pixels(normalized):
    return np.asarray(normalized, np.float64) * STDDEV + MEAN


def test_eval_resizes_shorter_side_to_256_and_crops_the_centre():
    height, width = 300, 400
    image = _ramp(height, width, row_scale=0.8, column_scale=0.6)
    output = _pixels(preprocessing.preprocess_for_eval(_png(image), 224))
    assert output.shape == (224, 224, 3)
    # torchvision's Resize(256): 300 x 400 -> 256 x int(400 * 256 / 300) = 256 x 341,
    # then the central 224 x 224 starts at row 16, column (341 - 224) // 2 = 58.
    resized_height, resized_width = 256, int(400 * 256 / 300)
    top, left = (resized_height - 224) // 2, (resized_width - 224) // 2
    source_rows = (np.arange(224) + top + 0.5) * height / resized_height - 0.5
    source_columns = (np.arange(224) + left + 0.5) * width / resized_width - 0.5
    expected_red = np.broadcast_to(0.8 * source_rows[:, None], (224, 224))
    expected_green = np.broadcast_to(0.6 * source_columns[None, :], (224, 224))
    # 0.5: the ramp was rounded to uint8.
    np.testing.assert_allclose(output[..., 0], expected_red, atol=0.55)
    np.testing.assert_allclose(output[..., 1], expected_green, atol=0.55)
    np.testing.assert_allclose(output[..., 2], 7.0, atol=1e-3)


def _crop_from_ramp(output, size):
    """(top, height, left, width, flipped) of the crop a ramp output shows."""
    red, green = output[..., 0], output[..., 1]
    # A bilinear resize of rows [top, top + height) to `size` rows samples
    # row top + (i + 0.5) * height / size - 0.5 at output row i.
    height = (red[-1, 0] - red[0, 0]) * size / (size - 1)
    top = red[0, 0] + 0.5 - 0.5 * height / size
    flipped = green[0, -1] < green[0, 0]
    columns = green[0, ::-1] if flipped else green[0]
    width = (columns[-1] - columns[0]) * size / (size - 1)
    left = columns[0] + 0.5 - 0.5 * width / size
    return top, height, left, width, flipped


def test_train_crops_resizes_and_flips_at_random():
    height, width, size = 200, 180, 32
    image_bytes = _png(_ramp(height, width))
    areas, flips = [], []
    for _ in range(40):
        output = _pixels(preprocessing.preprocess_for_train(image_bytes, size))
        top, crop_height, left, crop_width, flipped = _crop_from_ramp(output, size)
        window = np.array([top, crop_height, left, crop_width])
        np.testing.assert_allclose(window, window.round(), atol=0.02)  # whole pixels
        top, crop_height, left, crop_width = window.round()
        assert top >= 0 and left >= 0
        assert top + crop_height <= height and left + crop_width <= width
        # Every pixel is the bilinear sample of the ramp inside the window.
        steps = (np.arange(size) + 0.5) / size
        rows = top + steps * crop_height - 0.5
        columns = left + steps * crop_width - 0.5
        if flipped:
            columns = columns[::-1]
        np.testing.assert_allclose(output[..., 0], np.broadcast_to(rows[:, None], (size, size)), atol=0.01)
        np.testing.assert_allclose(output[..., 1], np.broadcast_to(columns, (size, size)), atol=0.01)
        areas.append(crop_height * crop_width / (height * width))
        assert 3 / 4 - 0.03 <= crop_width / crop_height <= 4 / 3 + 0.03
        flips.append(flipped)
    assert 0.08 - 0.01 <= min(areas) < 0.5 < max(areas) <= 1.0
    assert 0 < sum(flips) < len(flips)


def test_jpeg_crops_decode_the_window_of_the_image():
    height, width = 160, 200
    jpeg = tf.io.encode_jpeg(_ramp(height, width), quality=100).numpy()
    for _ in range(10):
        crop = preprocessing.decode_and_random_crop(jpeg).numpy().astype(np.float64)
        crop_height, crop_width = crop.shape[:2]
        rows, columns = np.mgrid[0:crop_height, 0:crop_width]
        top = np.median(crop[..., 0] - rows)
        left = np.median(crop[..., 1] - columns)
        np.testing.assert_allclose(crop[..., 0], top + rows, atol=4)  # JPEG's error
        np.testing.assert_allclose(crop[..., 1], left + columns, atol=4)
        assert -1 <= top and top + crop_height <= height + 1
        assert -1 <= left and left + crop_width <= width + 1
        assert 0.08 - 0.01 <= crop_height * crop_width / (height * width) <= 1


# The files of a class folder, in order: JPEGs and PNGs, upper- and lower-case.
CLASS_FILES = (("0.JPEG", tf.io.encode_jpeg), ("1.png", tf.io.encode_png),
               ("2.JPEG", tf.io.encode_jpeg))


def _write_class_tree(folder, colors, images_per_class=3):
    for name, color in colors.items():
        os.makedirs(os.path.join(folder, name))
        image = np.broadcast_to(np.array(color, np.uint8), (40, 50, 3))
        for file_name, encode in CLASS_FILES[:images_per_class]:
            tf.io.write_file(os.path.join(folder, name, file_name), encode(image))
    with open(os.path.join(folder, next(iter(colors)), "notes.txt"), "w") as file:
        file.write("not an image, skipped by its extension")


def _all_batches(dataset_fn):
    batches = list(dataset_fn(tf.distribute.InputContext()))
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return images, labels


def test_class_folders_map_sorted_names_to_labels(tmp_path):
    colors = {"zebra": (200, 0, 0), "ant": (0, 200, 0), "mole": (0, 0, 200)}
    _write_class_tree(str(tmp_path / "train"), colors)
    _write_class_tree(str(tmp_path / "val"), {"zebra": colors["zebra"], "ant": colors["ant"]}, 2)
    train = image_data.image_folder_source(str(tmp_path / "train"))
    val = image_data.image_folder_source(str(tmp_path / "val"), train.class_names)
    assert train.class_names == ("ant", "mole", "zebra")
    assert (train.num_examples, train.num_classes, val.num_examples) == (9, 3, 4)
    label_of_channel = {1: 0, 2: 1, 0: 2}  # green ant, blue mole, red zebra
    for source, count in ((train, 9), (val, 4)):
        images, labels = _all_batches(image_data.imagenet_input(source, False, 32, 4))
        assert len(labels) == count
        channels = _pixels(images).mean(axis=(1, 2)).argmax(axis=1)
        np.testing.assert_array_equal(labels, [label_of_channel[c] for c in channels])
    assert sorted(set(_all_batches(image_data.imagenet_input(val, False, 32, 4))[1])) == [0, 2]


def _bmp(image):
    """A 24-bit BMP file of a uint8 RGB image, written by hand (TensorFlow reads,
    but does not write, BMP)."""
    height, width, _ = image.shape
    row = width * 3 + (-width * 3) % 4
    pixels = b"".join(image[y, :, ::-1].tobytes().ljust(row, b"\0")
                      for y in range(height - 1, -1, -1))
    header = (b"BM" + (54 + len(pixels)).to_bytes(4, "little") + bytes(4)
              + (54).to_bytes(4, "little"))
    info = b"".join(value.to_bytes(size, "little", signed=True) for value, size in (
        (40, 4), (width, 4), (height, 4), (1, 2), (24, 2), (0, 4), (len(pixels), 4),
        (2835, 4), (2835, 4), (0, 4), (0, 4)))
    return header + info + pixels


def test_class_folders_read_every_format_the_decoder_reads(tmp_path):
    # A BMP image in a class folder is training data, as it is calibration
    # data for export (one list of image extensions for both).
    image = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3) * 3
    assert np.array_equal(tf.io.decode_image(_bmp(image)).numpy(), image)
    folder = tmp_path / "train" / "only"
    os.makedirs(folder)
    (folder / "0.bmp").write_bytes(_bmp(image))
    source = image_data.image_folder_source(str(tmp_path / "train"))
    assert source.num_examples == 1
    from psconv_tf.export import calibration
    assert calibration.image_files(str(tmp_path)) == [str(folder / "0.bmp")]


def test_class_folders_bad_input(tmp_path):
    with pytest.raises(InputError, match="no folder"):
        image_data.image_folder_source(str(tmp_path / "missing"))
    _write_class_tree(str(tmp_path / "train"), {"ant": (0, 9, 0)})
    _write_class_tree(str(tmp_path / "val"), {"bee": (9, 0, 0)})
    train = image_data.image_folder_source(str(tmp_path / "train"))
    with pytest.raises(InputError, match="missing from the training split: bee"):
        image_data.image_folder_source(str(tmp_path / "val"), train.class_names)
    os.makedirs(tmp_path / "empty" / "cat")
    with pytest.raises(InputError, match="has no images"):
        image_data.image_folder_source(str(tmp_path / "empty"))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("content", [b"this is not an image", "truncated"],
                         ids=["not-an-image", "truncated-jpeg"])
def test_undecodable_image_is_skipped_and_named(tmp_path, training, content):
    _write_class_tree(str(tmp_path / "train"), {"ant": (0, 9, 0)}, 3)
    if content == "truncated":
        whole = (tmp_path / "train" / "ant" / "0.JPEG").read_bytes()
        content = whole[: len(whole) // 2]
    corrupt = tmp_path / "train" / "ant" / "broken.jpg"
    corrupt.write_bytes(content)
    source = image_data.image_folder_source(str(tmp_path / "train"))
    pipeline = image_data.imagenet_input(source, training, 32, 3 if training else 2)
    dataset = pipeline(tf.distribute.InputContext())
    labels = [batch_labels for _, batch_labels in dataset.take(2 if training else 9)]
    assert sum(len(batch) for batch in labels) == (6 if training else 3)
    assert pipeline.skipped.new_names() == [str(corrupt)]
    assert pipeline.skipped.summary()["count"] == 1


def test_scan_lists_undecodable_images(tmp_path):
    _write_class_tree(str(tmp_path / "train"), {"ant": (0, 9, 0), "bee": (9, 0, 0)}, 2)
    bad = [tmp_path / "train" / "ant" / "empty.png", tmp_path / "train" / "bee" / "text.jpg"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(b"GIF89a but not really")
    source = image_data.image_folder_source(str(tmp_path / "train"))
    found = image_data.scan_images(source)
    assert sorted(found) == sorted(map(str, bad))
    kept = source.without(found)
    images, labels = _all_batches(image_data.imagenet_input(kept, False, 32, 8))
    assert len(labels) == 4


def test_tfds_source_on_mock_imagenet():
    size = 32
    with tfds.testing.mock_data(num_examples=6):
        source = image_data.tfds_source("imagenet2012", "validation")
        images, labels = _all_batches(image_data.imagenet_input(source, False, size, 4))
        encoded = tfds.load("imagenet2012", split="validation",
                            decoders={"image": tfds.decode.SkipDecoding()})
        decoded = [(tf.io.decode_jpeg(example["image"], channels=3), example["label"])
                   for example in encoded]
        train_images, train_labels = next(iter(
            image_data.imagenet_input(source, True, size, 4)(tf.distribute.InputContext())
        ))
    assert source.num_classes == 1000
    np.testing.assert_array_equal(labels, [int(label) for _, label in decoded])
    resized_short_side = round(size / preprocessing.CROP_FRACTION)
    for output, (image, _) in zip(images, decoded):
        height, width = image.shape[:2]
        resized = (np.array([height, width]) * resized_short_side) // min(height, width)
        top, left = (resized - size) // 2
        expected = tf.image.resize(image, resized, antialias=True).numpy()
        expected = expected[top : top + size, left : left + size]
        np.testing.assert_allclose(_pixels(output), expected, atol=1e-3)
    assert train_images.shape == (4, size, size, 3)
    assert np.isfinite(train_images.numpy()).all()
    assert set(train_labels.numpy()) <= {int(label) for _, label in decoded}


def test_tfds_unknown_dataset():
    with pytest.raises(InputError, match="TFDS has no data set named 'no_such_set'"):
        image_data.tfds_source("no_such_set", "train")


def test_small_images_pad_crop_flip_and_standardize():
    count = 6
    rows, columns = np.mgrid[0:32, 0:32]
    images = np.stack(
        [np.stack([rows * 8, columns * 8, np.full((32, 32), 10 * i + 5)], -1)
         for i in range(count)]
    ).astype(np.uint8)
    labels = np.arange(count)
    mean, stddev = (1.0, 2.0, 3.0), (2.0, 4.0, 5.0)
    train_fn = small_data.small_image_input(images, labels, mean, stddev, True, count)
    shifts, flips = set(), set()
    for batch, batch_labels in train_fn(tf.distribute.InputContext()).take(4):
        for output, label in zip(batch.numpy(), batch_labels.numpy()):
            standardized = (images[label] - np.array(mean)) / np.array(stddev)
            padded = np.pad(standardized, [(4, 4), (4, 4), (0, 0)])
            matches = [
                (dy, dx, flip)
                for dy in range(9) for dx in range(9) for flip in (False, True)
                if np.allclose(output, (lambda crop: crop[:, ::-1] if flip else crop)(
                    padded[dy : dy + 32, dx : dx + 32]), atol=1e-4)
            ]
            assert len(matches) == 1, "not a crop of the standardized, zero-padded image"
            shifts.add(matches[0][:2])
            flips.add(matches[0][2])
    assert len(shifts) > 3 and flips == {False, True}
    eval_images, eval_labels = _all_batches(
        small_data.small_image_input(images, labels, mean, stddev, False, 4)
    )
    np.testing.assert_array_equal(eval_labels, labels)
    np.testing.assert_allclose(eval_images, (images - np.array(mean)) / np.array(stddev), rtol=1e-6)


def test_small_images_pad_with_the_mean_colour():
    # ResNeXt's CIFAR code standardizes, then zero-pads: a crop's border is 0 in
    # standardized units (the mean colour), here an 8 x 8 image of value 200 with
    # mean 100 and standard deviation 50 is 2.0 inside and 0.0 on the border
    # (padding before standardizing would give (0 - 100) / 50 = -2.0).
    images = np.full((1, 8, 8, 1), 200, np.uint8)
    train_fn = small_data.small_image_input(images, np.zeros(1), (100.0,), (50.0,), True, 1)
    values = np.concatenate([batch.numpy().ravel() for batch, _ in
                             train_fn(tf.distribute.InputContext()).take(20)])
    assert set(np.unique(values)) == {0.0, 2.0}


def test_local_cifar_and_fashion_mnist_files(tmp_path):
    train, test = training_helpers.write_cifar10(str(tmp_path / "cifar-10-batches-py"), 50, 10)
    splits = small_data.load_small_dataset("cifar10", str(tmp_path), download=False)
    np.testing.assert_array_equal(splits["train"][0], train[0])
    np.testing.assert_array_equal(splits["train"][1], train[1])
    np.testing.assert_array_equal(splits["test"][0], test[0])
    (images, labels), _ = training_helpers.write_fashion_mnist(str(tmp_path / "fm"), 20, 5)
    splits = small_data.load_small_dataset("fashion_mnist", str(tmp_path / "fm"), download=False)
    np.testing.assert_array_equal(splits["train"][0], images[..., None])
    np.testing.assert_array_equal(splits["train"][1], labels)
    mean, stddev = statistics.channel_statistics(splits["train"][0])
    np.testing.assert_allclose(mean, [images.mean()])
    np.testing.assert_allclose(stddev, [images.std()])


def test_small_dataset_bad_input(tmp_path):
    with pytest.raises(InputError, match="no folder"):
        small_data.load_small_dataset("cifar10", str(tmp_path / "missing"))
    with pytest.raises(InputError, match="unknown data set 'svhn'"):
        small_data.load_small_dataset("svhn", str(tmp_path))
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        small_data.load_small_dataset("fashion_mnist", str(tmp_path), download=False)
    training_helpers.write_fashion_mnist(str(tmp_path), 8, 4)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(InputError, match="train-images-idx3-ubyte.gz is not a readable gzip"):
        small_data.load_small_dataset("fashion_mnist", str(tmp_path), download=False)


class _Planted:
    """Unpickles into a call of os.system: what a planted CIFAR batch does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_planted_cifar_batch_runs_nothing(tmp_path):
    training_helpers.write_cifar10(str(tmp_path / "data"), 50, 10)
    marker = tmp_path / "marker"
    planted = pickle.dumps({b"data": _Planted(f"touch {marker}"), b"labels": [0]})
    # By construction: plain pickle runs the command of this file.
    pickle.loads(planted)
    assert marker.exists()
    marker.unlink()
    (tmp_path / "data" / "data_batch_1").write_bytes(planted)
    with pytest.raises(InputError, match="data_batch_1 is not a CIFAR python batch.*system"):
        small_data.load_small_dataset("cifar10", str(tmp_path / "data"), download=False)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage", pickle.dumps([1, 2, 3])],
                         ids=["empty", "garbage", "not-a-dict"])
def test_malformed_cifar_batch_is_named(tmp_path, content):
    training_helpers.write_cifar10(str(tmp_path), 50, 10)
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(InputError, match="test_batch is not a CIFAR python batch"):
        small_data.load_small_dataset("cifar10", str(tmp_path), download=False)
