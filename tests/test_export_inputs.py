"""Export's inputs, as a careless user or an attacker gives them: every bad
model, weights file, calibration data, argument or output folder gets one
line naming what is wrong, and no half-written file."""

import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from export_data import tiny_ps_resnet
from psconv_tf import export
from psconv_tf import models


def test_run_directory_without_best_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="best.keras"):
        export.load_model(str(tmp_path))


class NumpyLayer(keras.layers.Layer):
    def call(self, inputs):
        return inputs - np.asarray(inputs).mean()

    def compute_output_shape(self, input_shape):
        return input_shape


class PythonLayer(keras.layers.Layer):
    def call(self, inputs):
        outputs = tf.py_function(lambda x: 2 * x, [inputs], tf.float32)
        outputs.set_shape(inputs.shape)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape


class SvdLayer(keras.layers.Layer):
    def call(self, inputs):
        return inputs * tf.reduce_sum(tf.linalg.svd(inputs, compute_uv=False))


@pytest.mark.parametrize(
    "layer_class, message",
    [
        (NumpyLayer, "NumpyLayer.call"),
        (PythonLayer, "EagerPyFunc .*layer 'odd'"),
        (SvdLayer, "tf.Svd .*layer 'odd'"),
    ],
)
def test_unexportable_layer_is_named(layer_class, message, tmp_path):
    inputs = keras.Input((8, 8, 4))
    outputs = layer_class(name="odd")(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, outputs)
    with pytest.raises(export.ExportError, match=message):
        export.export(model, str(tmp_path), formats=["float32"])


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda d: export.export("ps_cifar_resnet20", d, formats=["onnx"]),
         ValueError, "formats"),
        (lambda d: export.export("ps_cifar_resnet20", d, formats=["int8"]),
         ValueError, "representative_data"),
        (lambda d: export.load_model(os.path.join(d, "missing.keras")),
         FileNotFoundError, "missing.keras"),
        (lambda d: export.load_model("ps_resnet_1000"), ValueError, "ps_resnet_1000"),
        (lambda d: export.convert_to_tflite(d, "int4"), ValueError, "int4"),
        (lambda d: export.serving_model(models.get("cifar_resnet20"),
                                        input_dtype="int16"),
         ValueError, "input_dtype"),
        (lambda d: export.serving_model(models.get("cifar_resnet20"),
                                        normalization="coco"),
         ValueError, "normalization"),
        (lambda d: export.representative_dataset(os.path.join(d, "x.txt"), (4, 4, 1)),
         FileNotFoundError, "x.txt"),
    ],
    ids=["format", "int8-data", "missing-file", "unknown-model", "quantization",
         "input-dtype", "normalization", "missing-data"],
)
def test_bad_arguments_are_named(call, error, message, tmp_path):
    with pytest.raises(error, match=message):
        call(str(tmp_path))


def test_unsupported_model_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="model.onnx"):
        export.load_model(str(path))


def test_int8_needs_float_signature(tmp_path):
    saved_model = export.export_saved_model(
        models.get("cifar_resnet20"), str(tmp_path), input_dtype="uint8"
    )
    with pytest.raises(ValueError, match="float32 signature"):
        export.convert_to_tflite(
            saved_model, "int8", np.zeros((1, 32, 32, 3), np.uint8)
        )


def _corrupt_keras_file(tmp_path, kind):
    path = tmp_path / "model.keras"
    if kind == "empty":
        path.write_bytes(b"")
    else:
        tiny_ps_resnet().save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_damaged_keras_file_is_named(tmp_path, capsys, kind):
    path = _corrupt_keras_file(tmp_path, kind)
    with pytest.raises(export.ExportError, match="model.keras' is not a readable .keras file"):
        export.load_model(str(path))
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(path), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "is not a readable .keras file" in error and "Traceback" not in error


def test_damaged_run_config_is_named(tmp_path):
    tiny_ps_resnet().save(tmp_path / "best.keras")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(export.ExportError, match="config.json is not valid JSON"):
        export.export(str(tmp_path), str(tmp_path / "out"), formats=["saved_model"])


@pytest.mark.parametrize("setup, message", [
    (lambda out: out.write_text("a file"), "is a file"),
    (lambda out: out.parent.chmod(0o500), "Cannot write to output directory"),
], ids=["file", "read-only"])
def test_unwritable_output_dir_is_an_error(tmp_path, capsys, setup, message):
    if message.startswith("Cannot") and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    parent = tmp_path / "parent"
    parent.mkdir()
    setup(parent / "out")
    try:
        with pytest.raises(SystemExit) as exit_info:
            export.main(["ps_cifar_resnet20", str(parent / "out")])
    finally:
        parent.chmod(0o700)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_output_dir_permission_error_is_an_error(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "makedirs", refuse)
    with pytest.raises(SystemExit):
        export.main(["ps_cifar_resnet20", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert "Cannot write to output directory" in error and "Permission denied" in error


@pytest.mark.parametrize("flag, value", [("--mean", "nan"), ("--std", "0.2,inf,0.2")])
def test_non_finite_statistics_are_refused(tmp_path, capsys, flag, value):
    other = "--std" if flag == "--mean" else "--mean"
    with pytest.raises(SystemExit) as exit_info:
        export.main(["ps_cifar_resnet20", str(tmp_path / "out"), "--normalize",
                     f"{flag}={value}", f"{other}=0.5,0.5,0.5"])
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected finite numbers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="finite"):
        export.serving_model(models.get("cifar_resnet20"),
                             normalization=((float("nan"),) * 3, (0.5,) * 3))


def test_undecodable_calibration_images_are_skipped_and_named(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (3, 8, 8, 3), np.uint8)
    for index, image in enumerate(images):
        (tmp_path / f"{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    dataset = export.representative_dataset(str(tmp_path), (8, 8, 3), num_samples=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = [sample[0] for sample in dataset()]
    assert len(samples) == 3
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2, messages
    assert re.match("Skipped calibration image .*broken.jpg: cannot decode it", messages[0])
    assert messages[1] == f"Skipped 1 undecodable calibration image(s) in {tmp_path}."


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """Weights files export is given by mistake, for ps_cifar_resnet20."""
    directory = tmp_path_factory.mktemp("weights")
    models.get("ps_cifar_resnet20", num_classes=100).save_weights(
        directory / "classes100.weights.h5")
    models.get("cifar_resnet20").save_weights(directory / "standard.weights.h5")
    data = (directory / "classes100.weights.h5").read_bytes()
    (directory / "truncated.weights.h5").write_bytes(data[: len(data) // 2])
    (directory / "text.weights.h5").write_text("not HDF5")
    (directory / "official.pth").write_bytes(b"PK\x03\x04")
    return directory


@pytest.mark.parametrize("name, message", [
    ("classes100.weights.h5", r"variable 'fc/kernel' has shape \(64, 10\) in the model "
                              r"and \(64, 100\) in the file \(1 layer\(s\) differ"),
    ("standard.weights.h5", r"layer 'layer1_0_conv1' has 1 variable\(s\), the file 0"),
    ("truncated.weights.h5", r"is not a readable weights file .*truncated"),
    ("text.weights.h5", "is not a readable weights file"),
    ("official.pth", "psconv_tf.load_torch"),
    ("missing.weights.h5", "No weights file at"),
])
def test_weights_that_do_not_fit_are_one_line(weights_files, tmp_path, capsys, name,
                                              message):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["ps_cifar_resnet20", str(tmp_path / "out"), "--formats",
                     "saved_model", "--weights", str(weights_files / name)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and re.search(message, error), error
    assert not os.path.exists(tmp_path / "out" / "saved_model")


def test_fitting_weights_are_exported(weights_files, tmp_path):
    model = export.load_model("ps_cifar_resnet20", num_classes=100,
                              weights=str(weights_files / "classes100.weights.h5"))
    reference = models.get("ps_cifar_resnet20", num_classes=100)
    reference.load_weights(weights_files / "classes100.weights.h5")
    for ours, theirs in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def _calibration_files(directory):
    """Calibration files, each holding something other than images (28, 28, 1)."""
    np.save(directory / "cifar.npy", np.zeros((5, 32, 32, 3), np.uint8))
    np.save(directory / "nan.npy", np.full((2, 28, 28, 1), np.nan, np.float32))
    np.save(directory / "objects.npy", np.array([{"a": 1}], dtype=object))
    data = (directory / "cifar.npy").read_bytes()
    (directory / "truncated.npy").write_bytes(data[: len(data) // 2])
    (directory / "text.npz").write_text("not a zip archive")
    np.savez(directory / "two.npz", a=np.zeros((1, 28, 28, 1)), b=np.zeros((1, 28, 28, 1)))


@pytest.mark.parametrize("data, message", [
    ("cifar.npy", r"array in '.*cifar.npy' has shape \(5, 32, 32, 3\); the signature "
                  r"takes images of shape \(28, 28, 1\): expected \(N, 28, 28, 1\)"),
    ("nan.npy", "NaN or infinite"),
    ("objects.npy", "no plain array"),
    ("truncated.npy", "not a readable .npy file .*not fully written"),
    ("text.npz", "not a readable .npz file"),
    ("two.npz", r"must hold one array of images; it holds \['a', 'b'\]"),
    (np.zeros((5, 32, 32, 3)), r"array has shape \(5, 32, 32, 3\);"),
    (np.zeros((28, 28)), r"array has shape \(28, 28\);"),
    (np.array([["a"]]), r"array has shape \(1, 1\);"),
    (np.full((28, 28, 1), "a"), "holds <U1 values"),
    (lambda: [np.zeros((2, 28, 28, 3))], r"an item the callable yielded\) has shape "
                                         r"\(2, 28, 28, 3\)"),
], ids=["shape", "nan", "objects", "truncated", "not-zip", "two-arrays", "array",
        "one-channel-less", "strings-shape", "strings", "callable"])
def test_calibration_data_that_does_not_fit_is_named(tmp_path, data, message):
    _calibration_files(tmp_path)
    if isinstance(data, str):
        data = str(tmp_path / data)
    with pytest.raises(ValueError, match=message):
        next(export.representative_dataset(data, (28, 28, 1))())


def test_calibration_of_the_wrong_shape_on_the_command_line(tmp_path, capsys):
    np.save(tmp_path / "cifar.npy", np.zeros((5, 32, 32, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(_tiny_model_file(tmp_path)), str(tmp_path / "out"),
                     "--formats", "int8", "--representative-data",
                     str(tmp_path / "cifar.npy")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "has shape (5, 32, 32, 3)" in error and "expected (N, 28, 28, 1)" in error
    assert error.count("\n") == 1
    with pytest.raises(SystemExit):
        export.main([str(_tiny_model_file(tmp_path)), str(tmp_path / "out"),
                     "--representative-data", str(tmp_path / "cifar.npy")])
    assert "add int8 to --formats" in capsys.readouterr().err


def _tiny_model_file(directory):
    path = directory / "tiny.keras"
    if not path.exists():
        tiny_ps_resnet().save(path)
    return path
