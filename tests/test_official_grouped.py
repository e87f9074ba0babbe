"""`OfficialPSConv2D` and the zoo's `ps_NAME_official`: the authors' released
grouped layer (PSGConv2d, whose mask misses most groups), against the
independent PyTorch model of it in tests/torch_official.py (float64).
Error measure: max|keras - torch| / max|torch|.
"""

import keras
import numpy as np
import pytest
import torch

import torch_official
from export_data import run_tflite
from psconv_tf import PSConv2D
from psconv_tf import convert
from psconv_tf import export
from psconv_tf import load_torch
from psconv_tf import models
from psconv_tf.layers.official_ps_conv2d import OfficialPSConv2D
from psconv_tf.models.resnet import ResNet
from psconv_tf.models.resnet import Stage
from psconv_tf.models.resnet import imagenet_stages

TOLERANCE = 1e-5


def _relative_error(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


def _torch_output(module, nchw):
    with torch.no_grad():
        output = module.double().eval()(torch.from_numpy(nchw)).numpy()
    return output.transpose(0, 2, 3, 1) if output.ndim == 4 else output


def _keras_output(model, nchw):
    nhwc = nchw.transpose(0, 2, 3, 1).astype("float32")
    return keras.ops.convert_to_numpy(model(nhwc, training=False))


def _released_layer_count(module):
    """Weights of the PyTorch `conv` that the released mask leaves where
    the intended one holds zeros, counted from the PyTorch model's masks."""
    intended = torch_official.OfficialPSConv.masked_positions(
        module.conv.out_channels, module.conv.in_channels, module.groups, 4
    )
    return int((intended & ~module.mask).sum()) * 9


@pytest.mark.parametrize("stride", [1, 2])
def test_layer_matches_released_grouped_layer(stride):
    official = torch_official.randomize_(
        torch_official.OfficialPSConv(32, 32, stride, groups=8, mask_slip=True), seed=1
    )
    inputs = keras.Input((None, None, 32))
    layer = OfficialPSConv2D(
        32, 3, strides=stride, padding="symmetric", groups=8, use_bias=False,
        name="conv2",
    )
    model = keras.Model(inputs, layer(inputs))
    state = {"conv2." + key: value for key, value in official.state_dict().items()}
    assert load_torch(model, state) is model  # in place, no masked= needed
    rate1 = keras.ops.convert_to_numpy(layer.rate1_kernel)
    assert np.count_nonzero(rate1) == _released_layer_count(official) == 288
    images = np.random.default_rng(2).normal(size=(2, 32, 17, 16))
    error = _relative_error(_keras_output(model, images), _torch_output(official, images))
    print(f"OfficialPSConv2D stride {stride} against PSGConv2d: {error:.2e}")
    assert error < TOLERANCE


def test_paper_layer_refuses_released_weights_and_names_the_variant():
    official = torch_official.randomize_(
        torch_official.OfficialPSConv(32, 32, groups=8, mask_slip=True), seed=3
    )
    inputs = keras.Input((None, None, 32))
    outputs = PSConv2D(32, 3, padding="symmetric", groups=8, use_bias=False,
                       name="conv2")(inputs)
    state = {"conv2." + key: value for key, value in official.state_dict().items()}
    with pytest.raises(ValueError, match="'ps_NAME_official'"):
        load_torch(keras.Model(inputs, outputs), state)


def test_rate1_kernels_train_only_beside_dilated_ones():
    layer = OfficialPSConv2D(32, 3, groups=8, padding="same")
    x = keras.random.normal((2, 9, 9, 32), seed=4)
    layer.build(x.shape)
    positions = layer.rate1_positions().T[None, None]  # Keras kernel layout
    rate1 = keras.ops.convert_to_numpy(layer.rate1_kernel)
    assert np.all(rate1[~np.broadcast_to(positions, rate1.shape)] == 0)
    assert np.all(rate1[np.broadcast_to(positions, rate1.shape)] != 0)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    gradient = tape.gradient(loss, layer.rate1_kernel).numpy()
    np.testing.assert_array_equal(gradient != 0, np.broadcast_to(positions, gradient.shape))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(cyclic="input"), "`cyclic`"),
        (dict(layout="interleaved"), "`layout`"),
        (dict(dilation_rate=2), "`dilation_rate`"),
        (dict(pattern=(1, 2, 4)), "even length"),
        (dict(dilation_matrix=[[1, 2]] * 8), "`dilation_matrix`"),
    ],
)
def test_other_lattices_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        OfficialPSConv2D(8, 3, **arguments)


def test_groups_whose_released_mask_removes_rate1_kernels_are_refused():
    # 3 groups of 4 parts: the released mask masks kernels at rate 1.
    with pytest.raises(ValueError, match="groups=3"):
        OfficialPSConv2D(24, 3, groups=3).build((None, 9, 9, 24))


def test_resnext50_count_of_extra_weights():
    """+618,912 effective 3x3 weights, 43.75 % of the grouped 3x3 weights:
    the layers' positions against the PyTorch model's masks."""
    extra = grouped = 0
    for blocks, width in zip((3, 4, 6, 3), (128, 256, 512, 1024)):
        layer = OfficialPSConv2D(width, 3, groups=32, padding="symmetric")
        layer.build((None, 8, 8, width))
        extra += blocks * int(layer.rate1_positions().sum()) * 9
        grouped += blocks * width * (width // 32) * 9
        module = torch_official.OfficialPSConv(width, width, groups=32, mask_slip=True)
        assert int(layer.rate1_positions().sum()) * 9 == _released_layer_count(module)
    assert (extra, grouped) == (618_912, 1_414_656)
    assert round(100 * extra / grouped, 2) == 43.75


def _tiny_torch_resnext(seed):
    net = torch_official.ResNet((1, 1, 1, 1), groups=8, width_per_group=4,
                                mask_slip=True, num_classes=10)
    return torch_official.randomize_(net, seed)


def _tiny_resnext(**kwargs):
    return ResNet(imagenet_stages((1, 1, 1, 1)), groups=8, width_per_group=4,
                  conv="psconv_official", num_classes=10, **kwargs)


def test_tiny_grouped_zoo_model_matches_and_reloads(tmp_path):
    official = _tiny_torch_resnext(seed=5)
    model = _tiny_resnext(input_shape=(64, 64, 3))
    assert load_torch(model, official.state_dict()) is model
    images = np.random.default_rng(6).normal(size=(2, 3, 64, 64))
    outputs = _keras_output(model, images)
    error = _relative_error(outputs, _torch_output(official, images))
    print(f"tiny PS-ResNeXt (official) against PyTorch: {error:.2e}")
    assert error < TOLERANCE

    model.save(tmp_path / "official.keras")
    loaded = keras.saving.load_model(tmp_path / "official.keras")
    assert isinstance(loaded.get_layer("layer1_0_conv2"), OfficialPSConv2D)
    np.testing.assert_array_equal(_keras_output(loaded, images), outputs)


def test_profile_counts_the_rate1_weights_that_compute():
    from psconv_tf import profile

    official = profile(_tiny_resnext(input_shape=(64, 64, 3)))
    paper = profile(ResNet(imagenet_stages((1, 1, 1, 1)), groups=8, width_per_group=4,
                           conv="psconv", num_classes=10, input_shape=(64, 64, 3)))
    extra = macs = 0
    for width, size in zip((32, 64, 128, 256), (16, 8, 4, 2)):  # conv2 of each stage
        count = _released_layer_count(
            torch_official.OfficialPSConv(width, width, groups=8, mask_slip=True))
        extra, macs = extra + count, macs + count * size * size
    assert official["params"] - paper["params"] == extra
    assert official["macs"] - paper["macs"] == macs


def test_zoo_names_and_conv_type():
    names = models.list_models("*_official")
    assert names == [
        "ps_resnext101_32x4d_official", "ps_resnext101_32x8d_official",
        "ps_resnext29_16x64d_official", "ps_resnext29_8x64d_official",
        "ps_resnext50_32x4d_official",
    ]
    assert models.architecture("ps_resnext50_32x4d_official")["conv"] == "psconv_official"
    tiny = models.resnext50_32x4d(conv="psconv_official", include_top=False,
                                  stages=imagenet_stages((1, 1, 1, 1)))
    assert tiny.name == "ps_resnext50_32x4d_official"


def test_preset_round_trip(tmp_path):
    import keras_hub

    from psconv_tf.hub import PSResNetBackbone

    backbone = PSResNetBackbone.from_zoo(
        "ps_resnext29_8x64d_official", stackwise_num_blocks=[1, 1, 1],
        stackwise_num_filters=[32, 64, 128], width_per_group=8,
    )
    assert isinstance(backbone.get_layer("layer2_0_conv2"), OfficialPSConv2D)
    pixels = np.random.default_rng(7).normal(size=(1, 16, 16, 3)).astype("float32")
    backbone.save_to_preset(str(tmp_path / "preset"))
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path / "preset"))
    assert loaded.conv == "psconv_official"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(pixels)), keras.ops.convert_to_numpy(backbone(pixels))
    )


def test_convert_builds_official_layers_for_grouped_convs():
    standard = ResNet((Stage(1, 32, 1), Stage(1, 64, 2)), stem="cifar", groups=8,
                      width_per_group=8, num_classes=10, input_shape=(16, 16, 3))
    converted = convert(standard, official=True, transfer_kernels=True)
    layer = converted.get_layer("layer1_0_conv2")  # the strided one pads apart
    assert isinstance(layer, OfficialPSConv2D)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer.kernel),
        keras.ops.convert_to_numpy(standard.get_layer("layer1_0_conv2").kernel),
    )
    assert converted(np.zeros((1, 16, 16, 3), "float32")).shape == (1, 10)
    with pytest.raises(ValueError, match="`cyclic`"):
        convert(standard, official=True, cyclic="input")


def test_float_tflite_agrees(tmp_path):
    inputs = keras.Input((16, 16, 32))
    x = OfficialPSConv2D(32, 3, strides=2, padding="symmetric", groups=8)(inputs)
    x = OfficialPSConv2D(32, 3, padding="symmetric", groups=8)(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="features")(x))
    saved_model = export.export_saved_model(model, str(tmp_path / "saved_model"))
    flatbuffer = export.convert_to_tflite(saved_model, "float32")
    images = np.random.default_rng(8).normal(size=(4, 16, 16, 32)).astype("float32")
    reference = keras.ops.convert_to_numpy(model(images, training=False))
    error = _relative_error(run_tflite(flatbuffer, images, "features"), reference)
    print(f"OfficialPSConv2D float32 TFLite relative error: {error:.2e}")
    assert error <= 1e-5


def test_compat_corrects_only_what_the_released_mask_covers():
    """mmdet-style weights: nonzero also where the released mask holds zeros."""
    official = torch_official.randomize_(
        torch_official.ResNet((1, 1, 1, 1), groups=8, width_per_group=4,
                              mask_slip=True, num_classes=10), 9, zero_masked=False,
    )
    model = _tiny_resnext(input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="layer1_0_conv2: 288 nonzero"):
        load_torch(model, official.state_dict())  # the released mask's own positions
    compat = load_torch(model, official.state_dict(), masked="compat")
    images = np.random.default_rng(10).normal(size=(2, 3, 32, 32))
    error = _relative_error(_keras_output(compat, images), _torch_output(official, images))
    assert error < TOLERANCE


def test_detection_backbone_takes_the_authors_checkpoint(tmp_path):
    """coco.py's `--model ps_resnext..._official --backbone-weights x.pth` path."""
    from psconv_tf.detection.retinanet import load_backbone_weights
    from psconv_tf.hub import PSResNetBackbone

    official = _tiny_torch_resnext(seed=11)
    torch.save(official.state_dict(), tmp_path / "official.pth")
    backbone = PSResNetBackbone.from_zoo(
        "ps_resnext50_32x4d_official", stackwise_num_blocks=[1, 1, 1, 1], groups=8,
        width_per_group=4,
    )
    load_backbone_weights(backbone, tmp_path / "official.pth")
    images = np.random.default_rng(12).normal(size=(1, 3, 64, 64))
    with torch.no_grad():
        x = torch.from_numpy(images)
        net = official.double().eval()
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        expected = net.layer4(net.layer3(net.layer2(net.layer1(x)))).numpy()
    error = _relative_error(_keras_output(backbone, images), expected.transpose(0, 2, 3, 1))
    assert error < TOLERANCE
