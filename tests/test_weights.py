"""`load_torch` against an independent PyTorch model of the official layers.

The PyTorch references (tests/torch_official.py) run in float64 with random
weights and BatchNorm statistics; the loaded Keras models run in float32.
Error measure: max|keras - torch| / max|torch|.
"""

import warnings

import keras
import numpy as np
import pytest
import torch

import torch_official
from psconv_tf import PSConv2D
from psconv_tf import models
from psconv_tf.models.resnet import ResNet
from psconv_tf.models.resnet import imagenet_stages
from psconv_tf.checkpoints.loading import load_torch
from psconv_tf.checkpoints.loading import official_dense_kernel

TOLERANCE = 1e-5
SMALL_BLOCKS = (1, 1, 1, 1)
IMAGE_SIZE = 64


def _relative_error(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


def _images(seed, channels=3, height=IMAGE_SIZE, width=IMAGE_SIZE):
    """Float64 NCHW images."""
    return np.random.default_rng(seed).normal(size=(2, channels, height, width))


def _torch_output(module, images):
    module = module.double().eval()
    with torch.no_grad():
        output = module(torch.from_numpy(images)).numpy()
    return output.transpose(0, 2, 3, 1) if output.ndim == 4 else output


def _keras_output(model, images):
    nhwc = images.transpose(0, 2, 3, 1).astype("float32")
    return keras.ops.convert_to_numpy(model(nhwc, training=False))


def _torch_net(seed=0, zero_masked=True, **kwargs):
    return torch_official.randomize_(
        torch_official.ResNet(SMALL_BLOCKS, num_classes=10, **kwargs), seed,
        zero_masked=zero_masked,
    )


def _keras_net(conv="psconv", num_classes=10, **kwargs):
    return ResNet(
        imagenet_stages(SMALL_BLOCKS), conv=conv, num_classes=num_classes,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), **kwargs,
    )


def _single_layer(filters, strides, groups, in_channels, padding="symmetric", **kwargs):
    inputs = keras.Input((None, None, in_channels))
    outputs = PSConv2D(
        filters, 3, strides=strides, padding=padding, groups=groups,
        use_bias=False, name="conv2", **kwargs,
    )(inputs)
    return keras.Model(inputs, outputs)


def _prefixed(module, prefix):
    return {prefix + key: value for key, value in module.state_dict().items()}


@pytest.mark.parametrize("groups", [1, 8], ids=["PSConv2d", "PSGConv2d"])
@pytest.mark.parametrize("stride", [1, 2])
def test_official_layer_matches(groups, stride):
    channels = 32 * groups
    official = torch_official.randomize_(
        torch_official.OfficialPSConv(channels, channels, stride, groups=groups), seed=1
    )
    model = _single_layer(channels, stride, groups, channels)
    load_torch(model, _prefixed(official, "conv2."))
    # Odd height and even width: both alignments of PyTorch's stride-2 padding.
    images = _images(2, channels, 17, 16)
    error = _relative_error(_keras_output(model, images), _torch_output(official, images))
    assert error < TOLERANCE


def _probed_rates(official, in_channels, size=15):
    """The rate of every (filter, input) kernel, read off impulse responses.

    With all-ones weights, an impulse in input channel k spreads to filter c
    over the 3x3 taps of that kernel's rate: the footprint's half-width.
    """
    with torch.no_grad():
        for conv in (official.gwconv, official.gwconv_shift, official.conv):
            conv.weight.fill_(1.0)
    official.zero_masked_weights_()
    impulses = torch.zeros(in_channels, in_channels, size, size, dtype=torch.float64)
    impulses[range(in_channels), range(in_channels), size // 2, size // 2] = 1.0
    with torch.no_grad():
        responses = official.double()(impulses)  # (input k, filter c, h, w)
    rows = responses.abs().sum(dim=3).numpy() > 0  # (k, c, h): rows reached
    first = rows.argmax(axis=2)
    last = size - 1 - rows[:, :, ::-1].argmax(axis=2)
    rates = np.where(rows.any(axis=2), (last - first) // 2, 0)
    return rates.T


@pytest.mark.parametrize("groups", [1, 2])
def test_official_rates_are_the_default_blocked_lattice(groups):
    in_channels, filters = 16 * groups, 8 * groups
    official = torch_official.OfficialPSConv(in_channels, filters, groups=groups)
    rates = _probed_rates(official, in_channels)
    layer = PSConv2D(filters, 3, groups=groups, padding="symmetric")
    layer.build((None, 15, 15, in_channels))
    np.testing.assert_array_equal(layer.dilation_matrix(), rates)
    params = {key: value.numpy() for key, value in official.state_dict().items()}
    _, official_rates, _ = official_dense_kernel(params, groups=groups, parts=4, dilation=2)
    np.testing.assert_array_equal(official_rates, rates)


def test_ps_resnet50_matches_official():
    official = torch_official.randomize_(torch_official.ResNet((3, 4, 6, 3)), seed=3)
    model = models.get("ps_resnet50", input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    assert load_torch(model, official.state_dict()) is model
    images = _images(4)
    error = _relative_error(_keras_output(model, images), _torch_output(official, images))
    assert error < TOLERANCE


def test_standard_checkpoint_loads_into_standard_twin():
    official = _torch_net(seed=5, psconv=False)
    model = load_torch(_keras_net(conv="standard"), official.state_dict())
    images = _images(6)
    error = _relative_error(_keras_output(model, images), _torch_output(official, images))
    assert error < TOLERANCE


def test_converted_model_round_trips_keras_file(tmp_path):
    model = load_torch(_keras_net(), _torch_net(seed=7).state_dict())
    path = tmp_path / "ps_resnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = _images(8)
    np.testing.assert_array_equal(
        _keras_output(loaded, images), _keras_output(model, images)
    )


def test_nonzero_masked_weights_are_refused_by_default():
    official = _torch_net(seed=9, zero_masked=False)
    with pytest.raises(ValueError, match="masked='compat'") as raised:
        load_torch(_keras_net(), official.state_dict())
    message = str(raised.value)
    for stage in range(1, 5):
        conv = getattr(official, f"layer{stage}")[0].conv2
        count = int(conv.mask.sum()) * 9
        assert f"layer{stage}_0_conv2: {count} nonzero masked weights" in message


def test_zero_mode_drops_masked_weights():
    official = _torch_net(seed=10, zero_masked=False)
    model = load_torch(_keras_net(), official.state_dict(), masked="zero")
    for module in official.modules():
        if isinstance(module, torch_official.OfficialPSConv):
            module.zero_masked_weights_()
    images = _images(11)
    error = _relative_error(_keras_output(model, images), _torch_output(official, images))
    assert error < TOLERANCE


def test_compat_mode_reproduces_official_grouped_mask(tmp_path):
    """The official PSGConv2d mask covers groups 0, 8, 16, 24 of 32 only."""
    official = _torch_net(seed=12, groups=32, width_per_group=4, mask_slip=True)
    slipped = official.layer4[0].conv2.mask
    intended = torch_official.OfficialPSConv.masked_positions(1024, 1024, 32, 4)
    masked_groups = np.flatnonzero(slipped.reshape(32, -1).any(dim=1).numpy())
    np.testing.assert_array_equal(masked_groups, [0, 8, 16, 24])
    unmasked = int((intended & ~slipped).sum()) * 9
    model = _keras_net(groups=32, width_per_group=4)
    with pytest.raises(ValueError, match=f"layer4_0_conv2: {unmasked} nonzero"):
        load_torch(model, official.state_dict())
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    compat = load_torch(model, official.state_dict(), masked="compat")
    assert compat is not model and type(compat) is type(model)
    assert isinstance(compat.get_layer("layer1_0_conv2_masked"), keras.layers.Conv2D)
    images = _images(13)
    expected = _torch_output(official, images)
    assert _relative_error(_keras_output(compat, images), expected) < TOLERANCE
    # The model passed in is left as it was, not half-filled.
    for weight, value in zip(model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), value)

    path = tmp_path / "compat.keras"
    compat.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        _keras_output(loaded, images), _keras_output(compat, images)
    )


def test_compat_mode_without_masked_weights_returns_the_model():
    model = _keras_net()
    assert load_torch(model, _torch_net(seed=14).state_dict(), masked="compat") is model


def test_reads_pth_files_and_strips_prefixes(tmp_path):
    official = _torch_net(seed=15)
    images = _images(16)
    expected = _torch_output(official, images)
    path = tmp_path / "data_parallel.pth"
    torch.save({"state_dict": _prefixed(official, "module.")}, path)
    model = load_torch(_keras_net(), str(path))
    assert _relative_error(_keras_output(model, images), expected) < TOLERANCE

    # A detector checkpoint: the backbone under `backbone.`, heads beside it.
    detector = _prefixed(official, "backbone.")
    detector = {key: value for key, value in detector.items() if ".fc." not in key}
    detector["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 256, 1, 1)
    backbone = _keras_net(include_top=False, pooling="avg")
    load_torch(backbone, detector)
    for name in ("layer4_0_conv2", "layer4_0_bn3"):
        for loaded, reference in zip(backbone.get_layer(name).weights,
                                     model.get_layer(name).weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded),
                                          keras.ops.convert_to_numpy(reference))


def test_missing_and_unexpected_keys_are_named():
    state_dict = _torch_net(seed=17).state_dict()
    del state_dict["layer2.0.bn1.running_var"]
    state_dict["layer2.0.extra.weight"] = torch.zeros(3)
    state_dict["layer2.0.conv1.bias"] = torch.zeros(128)  # the conv has no bias
    with pytest.raises(ValueError) as raised:
        load_torch(_keras_net(), state_dict)
    message = str(raised.value)
    assert "Missing keys (1): layer2.0.bn1.running_var." in message
    assert "Unexpected keys (2): layer2.0.extra.weight, layer2.0.conv1.bias." in message


def test_fc_keys_missing_suggest_include_top_false():
    state_dict = _torch_net(seed=18).state_dict()
    state_dict = {
        key: value for key, value in state_dict.items() if not key.startswith("fc.")
    }
    with pytest.raises(ValueError, match="include_top=False"):
        load_torch(_keras_net(), state_dict)


def test_non_strict_loads_the_matching_layers():
    official = _torch_net(seed=19)
    state_dict = official.state_dict()
    del state_dict["fc.bias"]
    state_dict["head.weight"] = torch.zeros(3)
    model = _keras_net()
    fc_before = keras.ops.convert_to_numpy(model.get_layer("fc").kernel)
    with pytest.warns(UserWarning, match=r"assigned 85 of the model's 87 weights \(99\.\d % "
                                         r"of the values\); layers that kept their weights "
                                         r"\(1\): fc; checkpoint keys unused \(1\): head.weight"):
        load_torch(model, state_dict, strict=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("fc").kernel),
                                  fc_before)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("bn1").moving_variance),
        official.bn1.running_var.numpy(),
    )


def test_shape_mismatch_names_the_key():
    state_dict = _torch_net(seed=20).state_dict()
    with pytest.raises(ValueError, match=r"'fc.weight'.*\(10, 2048\).*\(7, 2048\)"):
        load_torch(_keras_net(num_classes=7), state_dict)
    key = "layer3.0.conv2.gwconv.weight"
    state_dict[key] = state_dict[key][:, :8]
    with pytest.raises(ValueError, match="'layer3.0.conv2.gwconv.weight'"):
        load_torch(_keras_net(), state_dict)


def test_conv_type_clash_is_explained():
    clash = r"layer1_0_conv2 \(checkpoint: PSConv, model: Conv2D\)"
    with pytest.raises(ValueError, match=clash):
        load_torch(_keras_net(conv="standard"), _torch_net(seed=21).state_dict())
    with pytest.raises(ValueError, match=r"checkpoint: standard conv, model: PSConv2D"):
        load_torch(_keras_net(), _torch_net(seed=21, psconv=False).state_dict())


@pytest.mark.parametrize(
    "psconv_kwargs, message",
    [
        (dict(pattern=(1, 4, 1, 2)), "has other rates than the official"),
        (dict(cyclic="input"), "has other rates than the official"),
        (dict(dilation_rate=2), "has other rates than the official"),
        (dict(strides=2, padding="same"), "has padding='same'"),
        (dict(padding="valid"), "has padding='valid'"),
        (dict(dilation_matrix=np.ones((32, 32), int)), "has an explicit dilation matrix"),
    ],
)
def test_layers_unlike_the_official_layer_are_refused(psconv_kwargs, message):
    official = torch_official.OfficialPSConv(32, 32)
    arguments = dict(filters=32, strides=1, groups=1, in_channels=32)
    model = _single_layer(**{**arguments, **psconv_kwargs})
    with pytest.raises(ValueError, match=f"Layer 'conv2' {message}"):
        load_torch(model, _prefixed(official, "conv2."))


def test_official_dilation_is_an_argument():
    official = torch_official.randomize_(
        torch_official.OfficialPSConv(32, 32, dilation=1), seed=22
    )
    model = _single_layer(32, 1, 1, 32, pattern=(1, 1, 1, 2))
    load_torch(model, _prefixed(official, "conv2."), dilation=1)
    images = _images(23, 32, 12, 12)
    error = _relative_error(_keras_output(model, images), _torch_output(official, images))
    assert error < TOLERANCE


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(masked="drop"), "masked"),
        (dict(strict="yes"), "strict"),
        (dict(dilation=0), "dilation"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_torch(_single_layer(32, 1, 1, 32), {}, **kwargs)


def test_bad_source_is_named():
    with pytest.raises(ValueError, match="path_or_state_dict"):
        load_torch(_single_layer(32, 1, 1, 32), [1, 2, 3])


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
    official = _torch_net(seed=30)
    path = tmp_path / "bf16.pth"
    torch.save({key: value.to(torch.bfloat16) if value.is_floating_point() else value
                for key, value in official.state_dict().items()}, path)
    model = load_torch(_keras_net(), str(path))
    # The reference: the same bfloat16 values, widened by PyTorch itself.
    expected = official.state_dict()["layer4.0.conv3.weight"].to(torch.bfloat16).double()
    loaded = keras.ops.convert_to_numpy(model.get_layer("layer4_0_conv3").kernel)
    np.testing.assert_array_equal(loaded, expected.numpy().transpose(2, 3, 1, 0))


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    ("truncated", "cannot be read as a PyTorch checkpoint"),
], ids=["zero-bytes", "truncated"])
def test_damaged_pth_file_is_named(tmp_path, content, message):
    path = tmp_path / "damaged.pth"
    if content == "truncated":
        torch.save(_torch_net(seed=31).state_dict(), path)
        content = path.read_bytes()[:1000]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"damaged.pth.*{message}"):
        load_torch(_keras_net(), str(path))


def _weights_of(model):
    return [weight.numpy() for weight in model.weights]


def _same_weights(model, weights):
    return all(np.array_equal(w.numpy(), v) for w, v in zip(model.weights, weights))


@pytest.mark.parametrize("wrap", [
    lambda key: "model." + key,  # a Lightning module
    lambda key: "_orig_mod." + key,  # torch.compile
    lambda key: "module.model." + key,
    lambda key: "module.backbone." + key,  # a detector trained with DataParallel
], ids=["model", "orig_mod", "module-model", "module-backbone"])
@pytest.mark.parametrize("strict", [True, False])
def test_wrapped_keys_are_unwrapped(wrap, strict):
    official = _torch_net(seed=40)
    state_dict = {wrap(key): value for key, value in official.state_dict().items()}
    if "backbone" in wrap("x"):
        state_dict = {key: value for key, value in state_dict.items() if ".fc." not in key}
        state_dict["module.neck.lateral_convs.0.conv.weight"] = torch.zeros(8, 8, 1, 1)
        model = _keras_net(include_top=False, pooling="avg")
        reference = load_torch(_keras_net(), official.state_dict())
    else:
        model = reference = None
    model = load_torch(model or _keras_net(), state_dict, strict=strict)
    if reference is None:
        images = _images(41)
        error = _relative_error(_keras_output(model, images), _torch_output(official, images))
        assert error < TOLERANCE
    else:
        for loaded, expected in zip(model.weights, reference.weights):
            np.testing.assert_array_equal(loaded.numpy(), expected.numpy())


@pytest.mark.parametrize("first, second", [
    ("conv1.weight", "module.conv1.weight"),
    ("module.conv1.weight", "conv1.weight"),
    ("layer1.0.bn1.weight", "backbone.layer1.0.bn1.weight"),
    ("layer1.0.conv1.weight", "layer1_0_conv1.weight"),
])
def test_two_keys_for_one_weight_are_refused(first, second):
    state_dict = _torch_net(seed=42).state_dict()
    target = first if first in state_dict else second
    state_dict = {**state_dict}
    value = state_dict.pop(target)
    state_dict[first], state_dict[second] = value, torch.zeros_like(value)
    model = _keras_net()
    before = _weights_of(model)
    for strict in (True, False):
        with pytest.raises(ValueError, match="holds both") as raised:
            load_torch(model, state_dict, strict=strict)
        assert first in str(raised.value) and second in str(raised.value)
    assert _same_weights(model, before)


def test_non_strict_refuses_to_fill_nothing_or_far_too_little():
    state_dict = _torch_net(seed=43).state_dict()
    model = _keras_net()
    before = _weights_of(model)
    unknown = {"net" + key: value for key, value in state_dict.items()}  # netconv1.weight
    with pytest.raises(ValueError, match=r"would assign none of the model's 87 weights.*"
                                         r"e.g. 'conv1' for 'conv1.weight'"):
        load_torch(model, unknown, strict=False)
    stem = {key: value for key, value in state_dict.items() if key.startswith(("conv1", "bn1"))}
    with pytest.raises(ValueError, match=r"would assign only 5 of the model's 87 weights "
                                         r"\(0\.\d % of the values, less than 50 %\)"):
        load_torch(model, stem, strict=False)
    assert _same_weights(model, before)


def test_a_stray_key_does_not_hide_the_others():
    # One unrelated `backbone.` key took every other key out of the load.
    official = _torch_net(seed=44)
    state_dict = {**official.state_dict(), "backbone.extra": torch.zeros(1)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every weight arrives: nothing to say
        model = load_torch(_keras_net(), state_dict, strict=False)
    images = _images(45)
    assert _relative_error(_keras_output(model, images), _torch_output(official, images)) < TOLERANCE


def test_conv_type_clash_is_refused_without_strict_too():
    model = _keras_net()
    before = _weights_of(model)
    with pytest.raises(ValueError, match=r"checkpoint: standard conv, model: PSConv2D"):
        load_torch(model, _torch_net(seed=46, psconv=False).state_dict(), strict=False)
    assert _same_weights(model, before)


@pytest.mark.parametrize("source, message", [
    ({}, "holds no tensors"),
    ({"state_dict": {}}, "holds no tensors"),
    ({"state_dict": {"conv1.weight": torch.zeros(1)}, "conv1.weight": torch.zeros(1)},
     "holds a 'state_dict' and tensors beside it"),
], ids=["empty", "empty-state-dict", "state-dict-and-tensors"])
def test_empty_or_ambiguous_checkpoints_are_refused(source, message):
    with pytest.raises(ValueError, match=message):
        load_torch(_single_layer(32, 1, 1, 32), source, strict=False)
