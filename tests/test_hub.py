"""keras-hub classes of the zoo: presets round trip exactly, dtype reaches
every layer, keras-hub backbones convert, load_torch output saves as a preset."""

import doctest
import os

import keras
import keras_hub
import numpy as np
import pytest

from psconv_tf import PSConv2D
from psconv_tf import hub
from psconv_tf import models
from psconv_tf.checkpoints.loading import load_torch
from torch_layout import state_dict_of

SIZE = 32
# A tiny PS-ResNet: one bottleneck per stage, narrow (PSConv needs 4 | width).
TINY = dict(stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_filters=[8, 8, 16, 16],
            stem_filters=8, conv="psconv", image_shape=(SIZE, SIZE, 3))


def _images(seed=0, batch=2):
    return np.random.default_rng(seed).uniform(0, 1, (batch, SIZE, SIZE, 3)).astype("float32")


def _randomize_statistics(model, seed=1):
    """Moving statistics away from 0/1, so that a lost BN state shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))


def test_backbone_has_the_zoo_pyramid():
    backbone = hub.PSResNetBackbone.from_zoo("ps_resnext50_32x4d", image_shape=(64, 64, 3))
    shapes = {k: tuple(v.shape) for k, v in backbone.pyramid_outputs.items()}
    assert shapes == {"P2": (None, 16, 16, 256), "P3": (None, 8, 8, 512),
                      "P4": (None, 4, 4, 1024), "P5": (None, 2, 2, 2048)}
    # Same architecture as the zoo model: same parameter count without fc.
    zoo = models.get("ps_resnext50_32x4d", include_top=False, input_shape=(64, 64, 3))
    assert backbone.count_params() == zoo.count_params()
    assert sum(isinstance(layer, PSConv2D) for layer in backbone.layers) == 16


def test_backbone_preset_round_trip_is_exact(tmp_path):
    backbone = hub.PSResNetBackbone(**TINY, pattern=(1, 2, 1, 3), cyclic="input")
    _randomize_statistics(backbone)
    backbone.save_to_preset(tmp_path)
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert type(loaded) is hub.PSResNetBackbone
    assert loaded.get_config() == backbone.get_config()
    x = _images()
    np.testing.assert_array_equal(loaded(x), backbone(x))
    assert sorted(loaded.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    assert not any(name.startswith(".staging") for name in os.listdir(tmp_path.parent))


def test_preset_dtype_reaches_every_layer(tmp_path):
    backbone = hub.PSResNetBackbone(**TINY)
    _randomize_statistics(backbone)
    backbone.save_to_preset(tmp_path)
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path), dtype="bfloat16")
    policies = {layer.dtype_policy.name for layer in loaded.layers if layer.weights}
    assert policies == {"bfloat16"}
    assert {v.dtype for v in loaded.weights} == {"bfloat16"}
    x = _images()
    low, high = np.asarray(loaded(x), np.float32), np.asarray(backbone(x))
    assert loaded(x).dtype == "bfloat16"
    # bfloat16 keeps 8 bits of mantissa: a few percent after 14 layers.
    assert np.abs(low - high).max() <= 0.1 * np.abs(high).max()


def test_classifier_preset_round_trip_is_exact(tmp_path):
    backbone = hub.PSResNetBackbone(**TINY)
    backbone.save_to_preset(tmp_path / "backbone")
    classifier = keras_hub.models.ImageClassifier.from_preset(
        str(tmp_path / "backbone"), num_classes=5
    )
    assert type(classifier) is hub.PSResNetImageClassifier
    assert type(classifier.preprocessor) is hub.PSResNetImageClassifierPreprocessor
    _randomize_statistics(classifier.backbone)
    classifier.save_to_preset(tmp_path / "task")
    loaded = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "task"))
    assert type(loaded) is hub.PSResNetImageClassifier
    x = _images()
    np.testing.assert_array_equal(loaded(x), classifier(x))
    low = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "task"), dtype="bfloat16")
    assert {layer.dtype_policy.name for layer in low.backbone.layers if layer.weights} == {"bfloat16"}


def test_imagenet_converter_normalizes_like_the_zoo():
    converter = hub.PSResNetImageConverter.imagenet()
    pixels = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
    mean, std = np.array(hub.image_converter.IMAGENET_MEAN), np.array(hub.image_converter.IMAGENET_STD)
    expected = (np.array([0.0, 0.5, 1.0]) - mean) / std
    np.testing.assert_allclose(np.asarray(converter(pixels))[0, 0, 0], expected, rtol=1e-5)


def test_convert_backbone_keeps_the_pyramid_and_the_function(tmp_path):
    original = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64, 64, 64], stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        image_shape=(SIZE, SIZE, 3),
    )
    # pattern=(1,) is a rate-1 PSConv: with the kernels kept, the function
    # must be the original one, which proves weights and wiring survive.
    same = hub.convert_backbone(original, pattern=(1,), transfer_kernels=True)
    x = _images()
    np.testing.assert_allclose(same(x), original(x), rtol=1e-5, atol=1e-5)
    converted = hub.convert_backbone(original)
    assert isinstance(converted, keras_hub.models.FeaturePyramidBackbone)
    assert sorted(converted.pyramid_outputs) == sorted(original.pyramid_outputs)
    assert any(isinstance(layer, PSConv2D) for layer in converted.layers)
    converted.save_to_preset(tmp_path)
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert type(loaded) is hub.ConvertedBackbone
    np.testing.assert_array_equal(loaded(x), converted(x))


def test_load_torch_into_backbone_then_preset(tmp_path):
    zoo = models.get("resnet18", input_shape=(SIZE, SIZE, 3), num_classes=3)
    _randomize_statistics(zoo)
    features = keras.Model(zoo.inputs, zoo.get_layer("layer4_1_out").output)
    backbone = hub.PSResNetBackbone.from_zoo("resnet18", image_shape=(SIZE, SIZE, 3))
    load_torch(backbone, state_dict_of(zoo), strict=False)  # fc keys ignored
    backbone.save_to_preset(tmp_path)
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path))
    x = _images()
    np.testing.assert_array_equal(loaded(x), features(x))


@pytest.mark.parametrize("name", ["resnet18", "ps_resnet50", "se_resnet50", "ps_resnext101_32x4d"])
def test_zoo_names_build(name):
    backbone = hub.PSResNetBackbone.from_zoo(name)
    zoo = models.get(name, include_top=False)
    assert backbone.count_params() == zoo.count_params()


def test_docstring_examples():
    result = doctest.testmod(hub, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_compat_is_refused_for_a_backbone_it_cannot_fill():
    import torch_official

    official = torch_official.randomize_(
        torch_official.ResNet((1, 1, 1, 1), num_classes=10), 50, zero_masked=False)
    backbone = hub.PSResNetBackbone(stackwise_num_blocks=[1, 1, 1, 1], conv="psconv",
                                    image_shape=(SIZE, SIZE, 3))
    before = [weight.numpy() for weight in backbone.weights]
    with pytest.raises(ValueError, match=r"masked='compat' adds a rate-1 conv beside 4 PSConv "
                                         r"layers .*which a PSResNetBackbone cannot hold.*"
                                         r"Pass masked='zero'"):
        load_torch(backbone, official.state_dict(), strict=False, masked="compat")
    # Nothing was assigned: no backbone half-filled for save_to_preset to write.
    for weight, value in zip(backbone.weights, before):
        np.testing.assert_array_equal(weight.numpy(), value)
    assert load_torch(backbone, official.state_dict(), strict=False, masked="zero") is backbone
