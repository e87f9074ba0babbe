"""keras-hub presets: every zoo name is a named preset (a configuration,
no weights), a converted backbone's preset becomes an image classifier, and
a damaged preset is one line naming the preset and the file."""

import json
import os
import shutil
import threading

import keras_hub
import numpy as np
import pytest

from psconv_tf import hub
from psconv_tf import models
from psconv_tf.hub import preset_files
from psconv_tf.hub import zoo_configs

SIZE = 32
TINY = dict(stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_filters=[8, 8, 16, 16],
            stem_filters=8, conv="psconv", image_shape=(SIZE, SIZE, 3))


def test_every_zoo_name_is_a_named_preset_with_current_files():
    assert set(models.list_models()) <= set(keras_hub.models.Backbone.presets)
    for name in models.list_models():
        folder = os.path.join(zoo_configs.NAMED_PRESETS_DIR, name)
        for file, text in preset_files.named_preset_files(name).items():
            with open(os.path.join(folder, file), encoding="utf-8") as handle:
                assert handle.read() == text, (
                    f"{name}/{file} is stale: run psconv_tf.hub.preset_files.write_named_presets()")


def test_a_named_preset_is_the_zoo_architecture_without_weights():
    backbone = keras_hub.models.Backbone.from_preset("ps_resnet18", load_weights=False)
    assert type(backbone) is hub.PSResNetBackbone
    zoo = models.get("ps_resnet18", include_top=False, input_shape=(None, None, 3))
    assert backbone.count_params() == zoo.count_params()
    assert backbone.get_config() == hub.PSResNetBackbone.from_zoo("ps_resnet18").get_config()
    # With the default load_weights=True: no weights anywhere, said once.
    with pytest.warns(UserWarning, match=r"'resnet18' is a configuration without weights"):
        hub.PSResNetBackbone.from_preset("resnet18", image_shape=(SIZE, SIZE, 3))
    classifier = keras_hub.models.ImageClassifier.from_preset(
        "resnet18", num_classes=3, load_weights=False)
    assert type(classifier) is hub.PSResNetImageClassifier
    assert classifier(np.zeros((1, SIZE, SIZE, 3), "float32")).shape == (1, 3)


def test_a_converted_backbone_preset_becomes_an_image_classifier(tmp_path):
    original = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64, 64, 64], stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        image_shape=(SIZE, SIZE, 3),
    )
    converted = hub.convert_backbone(original)
    converted.save_to_preset(tmp_path)
    classifier = keras_hub.models.ImageClassifier.from_preset(str(tmp_path), num_classes=4)
    assert type(classifier) is hub.ConvertedImageClassifier
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    assert classifier(x).shape == (2, 4)
    # The preset's converter passes images unchanged: the convention of the
    # backbone converted from is not known.
    np.testing.assert_array_equal(classifier.preprocessor.image_converter(x), x)


def _tiny_preset(folder):
    hub.PSResNetBackbone(**TINY).save_to_preset(folder)
    return folder


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    return _tiny_preset(tmp_path_factory.mktemp("preset") / "tiny")


def _unblock(fifo):
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.parametrize("file", ["config.json", "image_converter.json", "metadata.json"])
@pytest.mark.parametrize("damage, message", [
    ("{not json", r"is not valid JSON \(Expecting property name .* at line 1, column 2\)"),
    ("[" * 100_000 + "]" * 100_000, r"is not usable JSON \(nested too deeply\)"),
    ("[1, 2]", r"holds a JSON list, not an object"),
    (b"\xff\xfe", r"is not UTF-8 text"),
    ("folder", r"is not a regular file"),
    ("fifo", r"is not a regular file"),
], ids=["not-json", "deep", "list", "binary", "folder", "fifo"])
def test_a_damaged_preset_file_is_one_line(preset, tmp_path, file, damage, message):
    damaged = tmp_path / "damaged"
    shutil.copytree(preset, damaged)
    path = damaged / file
    path.unlink()
    if damage == "folder":
        path.mkdir()
    elif damage == "fifo":
        os.mkfifo(path)
        threading.Timer(5, _unblock, [path]).start()  # fail, not hang, if it is opened
    elif isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        path.write_text(damage)
    for load in (hub.PSResNetBackbone.from_preset,
                 lambda p: hub.PSResNetImageClassifier.from_preset(p, num_classes=2)):
        with pytest.raises(hub.PresetError, match=f"preset '{damaged}': {file} {message}") as raised:
            load(str(damaged))
        assert "\n" not in str(raised.value)


def test_a_truncated_weights_file_is_one_line(preset, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(preset, damaged)
    weights = damaged / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(hub.PresetError, match=f"preset '{damaged}': cannot be loaded") as raised:
        hub.PSResNetBackbone.from_preset(str(damaged))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("change", [dict(pattern=[2147483648]),
                                   dict(dilation_rate=[1000000000, 1000000000])])
def test_crafted_rates_in_a_preset_are_one_line(preset, tmp_path, change):
    crafted = tmp_path / "crafted"
    shutil.copytree(preset, crafted)
    config = json.loads((crafted / "config.json").read_text())
    config["config"].update(change)
    (crafted / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"preset '{crafted}': cannot be loaded "
                                         rf"\(ValueError: .*{next(iter(change))}") as raised:
        hub.PSResNetBackbone.from_preset(str(crafted), load_weights=False)
    assert "\n" not in str(raised.value)
