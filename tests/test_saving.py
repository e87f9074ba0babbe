"""`import psconv_tf` is all that loading what the package saves needs, on
every backend; `psconv_tf.load_model` says in one line what is missing."""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import psconv_tf
from psconv_tf import hub
from psconv_tf import models
from psconv_tf import saving
from psconv_tf.training.schedules import WarmupPiecewise
from psconv_tf.training import CoupledWeightDecaySGD

SIZE = 16
TINY = dict(stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_filters=[8, 8, 16, 16],
            stem_filters=8, conv="psconv", image_shape=(SIZE, SIZE, 3))
IMAGES = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")

# Run in a fresh interpreter: loads each saved file with `import psconv_tf`
# only (keras-hub imported last, for the presets), and checks the outputs.
LOADER = """
import json, sys
import numpy as np
import keras
import psconv_tf
folder = sys.argv[1]
report = {"tensorflow": "tensorflow" in sys.modules, "keras_hub": "keras_hub" in sys.modules,
          "deferred": sorted(name for name, value in keras.saving.get_custom_objects().items()
                             if isinstance(value, psconv_tf.saving.Deferred)),
          "own": sorted(name for name in keras.saving.get_custom_objects()
                        if name.split(">")[0] in psconv_tf.saving.OWN_PACKAGES)}
images = np.load(f"{folder}/images.npy")
def same(model, name, predict=False):
    outputs = model.predict(images, verbose=0) if predict else model(images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs),
                               np.load(f"{folder}/{name}.npy"), rtol=1e-5, atol=1e-5)
compiled = psconv_tf.load_model(f"{folder}/compiled.keras")
same(compiled, "compiled")
report["optimizer"] = [type(compiled.optimizer).__name__,
                       type(compiled.optimizer._learning_rate).__name__]
if sys.argv[2] == "all":
    same(keras.saving.load_model(f"{folder}/task.keras"), "task", predict=True)
    import keras_hub
    same(keras_hub.models.Backbone.from_preset(f"{folder}/preset"), "backbone")
    task = keras_hub.models.ImageClassifier.from_preset(f"{folder}/preset", num_classes=2)
    report["task"] = type(task).__name__
print("REPORT" + json.dumps(report))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    np.save(folder / "images.npy", IMAGES)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = psconv_tf.PSConv2D(8, 3, padding="same")(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    model.compile(optimizer=CoupledWeightDecaySGD(WarmupPiecewise(0.1, [10], 5, 0.1),
                                                  momentum=0.9, coupled_weight_decay=1e-4),
                  loss="mse")
    model.train_on_batch(IMAGES, np.zeros((2, 3)))
    model.save(folder / "compiled.keras")
    np.save(folder / "compiled.npy", model(IMAGES))
    backbone = hub.PSResNetBackbone(**TINY)
    backbone.save_to_preset(folder / "preset")
    np.save(folder / "backbone.npy", backbone(IMAGES))
    task = hub.PSResNetImageClassifier(
        backbone=backbone, num_classes=3,
        preprocessor=hub.PSResNetImageClassifierPreprocessor(
            image_converter=hub.PSResNetImageConverter.imagenet()))
    task.save(folder / "task.keras")
    np.save(folder / "task.npy", task.predict(IMAGES, verbose=0))
    return folder


def _load_fresh(saved, backend, what):
    environment = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run([sys.executable, "-c", LOADER, str(saved), what],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    return json.loads(line[len("REPORT"):])


def _own_classes():
    return sorted(name for name in keras.saving.get_custom_objects()
                  if name.split(">")[0] in saving.OWN_PACKAGES)


def test_import_psconv_tf_loads_every_saved_kind(saved):
    report = _load_fresh(saved, "tensorflow", "all")
    assert report["optimizer"] == ["CoupledWeightDecaySGD", "WarmupPiecewise"]
    assert report["task"] == "PSResNetImageClassifier"
    # Every class the package registers is known after `import psconv_tf`:
    # the core's, and the optional parts' as placeholders.
    assert report["own"] == _own_classes()
    assert set(report["deferred"]) == set(saving.DEFERRED_CLASSES)


def test_import_psconv_tf_stays_free_of_tensorflow_on_jax(saved):
    report = _load_fresh(saved, "jax", "compiled")
    assert not report["tensorflow"] and not report["keras_hub"]  # before loading
    assert report["optimizer"] == ["CoupledWeightDecaySGD", "WarmupPiecewise"]


def test_every_deferred_class_is_registered_by_its_module():
    for name, module in saving.DEFERRED_CLASSES.items():
        assert sys.modules[module]  # imported above
        cls = keras.saving.get_custom_objects()[name]
        assert isinstance(cls, type) and keras.saving.get_registered_name(cls) == name
        assert module == cls.__module__ or cls.__module__.startswith(module + ".")


def _rewritten(source, target, change):
    """A copy of the .keras archive `source` with its config changed."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as copy:
        for item in archive.infolist():
            data = archive.read(item)
            if item.filename == "config.json":
                data = change(json.loads(data))
            copy.writestr(item, data if isinstance(data, (bytes, str)) else json.dumps(data))
    return target


def _renamed_layer(registered_name, module):
    def change(config):
        layer = next(layer for layer in config["config"]["layers"]
                     if layer["class_name"] == "PSConv2D")
        layer["registered_name"], layer["module"] = registered_name, module
        layer["class_name"] = registered_name.split(">")[1]
        return config
    return change


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.keras"
    models.get("ps_cifar_resnet20", input_shape=(SIZE, SIZE, 3), num_classes=3).save(path)
    return path


@pytest.mark.parametrize("change, error, message", [
    (_renamed_layer("psconv_tf>PSConv3D", "psconv_tf.ps_conv3d"), ValueError,
     r"psconv_tf>PSConv3D is not a class of this version of psconv_tf"),
    (_renamed_layer("mypackage>MyConv", "mypackage.layers"), ValueError,
     r"class MyConv \(registered as 'mypackage>MyConv', module mypackage.layers\) is not "
     r"registered here: import the module that defines it"),
    (lambda config: "[" * 100_000 + "]" * 100_000, ValueError,
     r"its config.json is not usable JSON \(RecursionError\)"),
], ids=["other-version", "user-class", "deep-config"])
def test_load_model_names_what_is_missing(small_file, tmp_path, change, error, message):
    path = _rewritten(small_file, tmp_path / "changed.keras", change)
    with pytest.raises(error, match=message) as raised:
        psconv_tf.load_model(path)
    assert str(raised.value).startswith(str(path)) and "\n" not in str(raised.value)


def test_load_model_names_the_extra_a_missing_dependency_needs(small_file, tmp_path, monkeypatch):
    monkeypatch.setitem(saving.REQUIREMENTS, "psconv_tf.fake", (("no_such_dependency",), "fake"))
    monkeypatch.setitem(keras.saving.get_custom_objects(), "psconv_tf>Fake",
                        saving.Deferred("psconv_tf>Fake", "psconv_tf.fake"))
    path = _rewritten(small_file, tmp_path / "fake.keras",
                      _renamed_layer("psconv_tf>Fake", "psconv_tf.fake"))
    message = (r"psconv_tf>Fake is defined in psconv_tf.fake, which needs "
               r"no_such_dependency: pip install \"psconv-tf\[fake\]\"")
    with pytest.raises(ImportError, match=message):
        psconv_tf.load_model(path)
    # Keras's own loader meets the placeholder, which says the same.
    with pytest.raises(ImportError, match=message) as raised:
        keras.saving.load_model(path)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(b""), "not a zip archive"),
    (lambda path: path.write_bytes(path.read_bytes()[:3000]), "not a zip archive"),
    (lambda path: (path.unlink(), path.mkdir()), "a directory, not a .keras file"),
    (lambda path: (path.unlink(), os.mkfifo(path)), "not a regular file"),
    (lambda path: path.unlink(), "no such file"),
], ids=["empty", "truncated", "folder", "fifo", "missing"])
def test_load_model_names_a_damaged_file(small_file, tmp_path, damage, message):
    path = tmp_path / "damaged.keras"
    path.write_bytes(small_file.read_bytes())
    damage(path)
    with pytest.raises(ValueError, match=message) as raised:
        psconv_tf.load_model(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_crafted_rates_in_a_keras_file_are_one_line(small_file, tmp_path):
    def change(config):
        layer = next(layer for layer in config["config"]["layers"]
                     if layer["class_name"] == "PSConv2D")
        layer["config"]["pattern"] = [2147483648]
        return config

    path = _rewritten(small_file, tmp_path / "crafted.keras", change)
    with pytest.raises(ValueError, match=r"cannot be loaded \(ValueError: .*pattern") as raised:
        psconv_tf.load_model(path)
    assert "\n" not in str(raised.value)
