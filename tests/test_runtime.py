"""The shared runtime: dataset statistics, the one normalisation, image
files, and the packages that must not load the trainer."""

import subprocess
import sys

import numpy as np
import pytest

from psconv_tf.runtime import images
from psconv_tf.runtime import statistics


def test_normalize_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 3, 4, 3)).astype(np.float32)
    mean, std = (120.5, 110.25, 100.0), (60.0, 55.5, 70.125)
    expected = (pixels.astype(np.float64) - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(statistics.normalize(pixels, mean, std), expected, rtol=1e-6)


def test_scale_and_offset_is_the_same_normalisation():
    pixels = np.arange(0, 256, dtype=np.float64)[:, None].repeat(3, axis=1)
    scale, offset = statistics.scale_and_offset(statistics.IMAGENET_MEAN, statistics.IMAGENET_STD,
                                                pixel_range=255.0)
    expected = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pixels * scale + offset, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        statistics.normalize(pixels, statistics.IMAGENET_MEAN_RGB, statistics.IMAGENET_STDDEV_RGB),
        expected, rtol=1e-12, atol=1e-12)


def test_pixel_and_unit_statistics_convert_both_ways():
    assert statistics.to_unit(statistics.to_pixels((0.5, 0.25))) == (0.5, 0.25)
    np.testing.assert_allclose(statistics.IMAGENET_MEAN_RGB, [123.675, 116.28, 103.53])


def test_channel_statistics_in_float64():
    # Two channels; a float32 sum of 2**25 values would lose the odd ones.
    data = np.zeros((3, 2, 2), np.uint8)
    data[..., 0] = [[0, 255], [255, 0], [0, 255]]
    data[..., 1] = 7
    mean, std = statistics.channel_statistics(data)
    np.testing.assert_allclose(mean, [127.5, 7.0])
    np.testing.assert_allclose(std, [127.5, 0.0])


@pytest.mark.parametrize("name, expected", [
    ("a.jpg", True), ("b.JPEG", True), ("c.png", True), ("d.bmp", True), ("e.GIF", True),
    ("notes.txt", False), ("archive.png.zip", False), ("jpg", False),
])
def test_image_files_by_extension(name, expected):
    assert images.is_image_file(name) is expected


def _loaded_modules(statement):
    """The psconv_tf modules a fresh interpreter holds after `statement`."""
    code = (f"import sys; {statement}; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('psconv_tf'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1].split()


@pytest.mark.tensorflow
def test_export_hub_and_runtime_do_not_load_training():
    packages = ["psconv_tf.export", "psconv_tf.runtime.run_config", "psconv_tf.runtime.strategy"]
    try:
        import keras_hub  # noqa: F401
        packages.append("psconv_tf.hub")
    except ImportError:
        pass
    loaded = _loaded_modules(f"import {', '.join(packages)}")
    assert set(packages) <= set(loaded), loaded
    above = [module for module in loaded if module.startswith(
        ("psconv_tf.training", "psconv_tf.classification", "psconv_tf.detection"))]
    assert above == []
