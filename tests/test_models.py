"""The model zoo: every model builds and runs; exact figures; round trips."""

import keras
import numpy as np
import pytest
from keras import ops

from psconv_tf import PSConv2D
from psconv_tf import models
from psconv_tf import profile


def _out_size(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def resnet_figures(blocks, bottleneck=True, groups=1, width_per_group=64,
                   se=None, cifar=False, stem=64, planes=(64, 128, 256, 512),
                   strides=(1, 2, 2, 2), classes=1000, size=224):
    """Trainable parameters and MACs of a ResNet, counted by hand.

    Convs and the classifier count K*K*Cin/groups*Cout per output pixel;
    batch norms add 2 parameters per channel; SE adds two biased Dense layers.
    """
    params = macs = 0

    def conv(cin, cout, k, stride, pad, size, g=1):
        nonlocal params, macs
        out = _out_size(size, k, stride, pad)
        params += k * k * cin // g * cout
        macs += out * out * k * k * cin // g * cout
        return out

    def bn(c):
        nonlocal params
        params += 2 * c

    if cifar:
        size = conv(3, stem, 3, 1, 1, size)
    else:
        size = conv(3, stem, 7, 2, 3, size)
        size = _out_size(size, 3, 2, 1)  # max pool
    bn(stem)
    cin = stem
    for n, p, s in zip(blocks, planes, strides):
        for b in range(n):
            stride = s if b == 0 else 1
            cout = p * 4 if bottleneck else p
            if stride != 1 or cin != cout:
                conv(cin, cout, 1, stride, 0, size)
                bn(cout)
            if bottleneck:
                width = int(p * width_per_group / 64) * groups
                conv(cin, width, 1, 1, 0, size)
                bn(width)
                new = conv(width, width, 3, stride, 1, size, groups)
                bn(width)
                conv(width, cout, 1, 1, 0, new)
                bn(cout)
            else:
                new = conv(cin, p, 3, stride, 1, size)
                bn(p)
                conv(p, p, 3, 1, 1, new)
                bn(p)
            if se:
                params += cout * (cout // se) + cout // se + (cout // se) * cout + cout
                macs += 2 * cout * (cout // se)
            size, cin = new, cout
    params += cin * classes + classes
    macs += cin * classes
    return params, macs


IMAGENET = dict(
    resnet18=dict(blocks=(2, 2, 2, 2), bottleneck=False),
    resnet34=dict(blocks=(3, 4, 6, 3), bottleneck=False),
    resnet50=dict(blocks=(3, 4, 6, 3)),
    resnet101=dict(blocks=(3, 4, 23, 3)),
    resnet152=dict(blocks=(3, 8, 36, 3)),
    resnext50_32x4d=dict(blocks=(3, 4, 6, 3), groups=32, width_per_group=4),
    resnext101_32x4d=dict(blocks=(3, 4, 23, 3), groups=32, width_per_group=4),
    resnext101_32x8d=dict(blocks=(3, 4, 23, 3), groups=32, width_per_group=8),
    se_resnet50=dict(blocks=(3, 4, 6, 3), se=16),
    se_resnet101=dict(blocks=(3, 4, 23, 3), se=16),
)
CIFAR = dict(
    resnext29_8x64d=dict(blocks=(3, 3, 3), groups=8, planes=(64, 128, 256),
                         strides=(1, 2, 2), classes=100),
    resnext29_16x64d=dict(blocks=(3, 3, 3), groups=16, planes=(64, 128, 256),
                          strides=(1, 2, 2), classes=100),
    cifar_resnet20=dict(blocks=(3, 3, 3), bottleneck=False, stem=16,
                        planes=(16, 32, 64), strides=(1, 2, 2), classes=10),
    cifar_resnet56=dict(blocks=(9, 9, 9), bottleneck=False, stem=16,
                        planes=(16, 32, 64), strides=(1, 2, 2), classes=10),
)


def test_resnet50_matches_the_paper_table_2():
    params, macs = resnet_figures(**IMAGENET["resnet50"])
    assert round(params / 1e6, 3) == 25.557
    assert round(macs / 1e9, 3) == 4.089
    for name in ("resnet50", "ps_resnet50"):
        assert profile(models.get(name)) == {"params": params, "macs": macs}


@pytest.mark.parametrize(
    "name", models.list_models(exclude_filters=["dps_*", "*_official"])
)  # dynamic models: test_dynamic_zoo.py; official ones: test_official_grouped.py
def test_every_model_runs_with_the_figures_of_its_family(name):
    """Builds, runs, and counts every model; twins count the same by hand."""
    family = name.removeprefix("ps_")
    if family in IMAGENET:
        size, spec = 64, dict(IMAGENET[family])
    else:
        size, spec = 32, dict(CIFAR[family], cifar=True)
    model = models.get(name, input_shape=(size, size, 3))
    figures = profile(model)
    assert (figures["params"], figures["macs"]) == resnet_figures(size=size, **spec)
    ps_layers = [l for l in model.layers if isinstance(l, PSConv2D)]
    assert bool(ps_layers) == name.startswith("ps_")
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    y = ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (2, spec.get("classes", 1000))
    assert np.isfinite(y).all()


def test_psconv_replaces_only_the_middle_3x3_convs():
    model = models.get("ps_resnet50", input_shape=(64, 64, 3))
    ps = {l.name for l in model.layers if isinstance(l, PSConv2D)}
    assert len(ps) == 16
    assert all(name.endswith("_conv2") for name in ps)
    assert isinstance(model.get_layer("conv1"), keras.layers.Conv2D)
    assert isinstance(model.get_layer("layer2_0_downsample_0"), keras.layers.Conv2D)
    strided = model.get_layer("layer2_0_conv2")
    assert strided.strides == (2, 2) and strided.padding == "symmetric"


def test_psconv_options_pass_through():
    model = models.get(
        "ps_resnext50_32x4d", input_shape=(64, 64, 3), pattern=(1, 2),
        cyclic="input", dilation_rate=2,
    )
    layer = model.get_layer("layer3_0_conv2")
    assert (layer.pattern, layer.cyclic, layer.dilation_rate, layer.groups) == (
        (1, 2), "input", (2, 2), 32
    )
    assert set(np.unique(layer.dilation_matrix())) == {0, 2, 4}


@pytest.mark.parametrize("name, levels", [("ps_resnet50", (2, 3, 4, 5)),
                                          ("ps_cifar_resnet20", (0, 1, 2))])
def test_feature_maps_for_detection_necks(name, levels):
    model = models.get(name, include_top=False, feature_maps=True,
                       input_shape=(None, None, 3))
    size = 64
    x = np.zeros((1, size, size, 3), "float32")
    features = model(x)
    # keras-hub's names, as PSResNetBackbone.pyramid_outputs has them.
    assert sorted(features) == [f"P{level}" for level in levels]
    for level in levels:
        assert features[f"P{level}"].shape[1] == size // 2**level


@pytest.mark.parametrize("pooling, rank", [(None, 4), ("avg", 2), ("max", 2)])
def test_headless_pooling(pooling, rank):
    model = models.get("ps_cifar_resnet20", include_top=False, pooling=pooling)
    assert len(model.output.shape) == rank
    assert model.output.shape[-1] == 64


def test_keras_file_round_trip(tmp_path):
    model = models.get("ps_resnext29_8x64d", input_shape=(16, 16, 3), num_classes=5)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x))
    )


def test_weights_file_argument(tmp_path):
    model = models.get("ps_cifar_resnet20")
    path = str(tmp_path / "ps.weights.h5")
    model.save_weights(path)
    clone = models.get("ps_cifar_resnet20", weights=path)
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match="Valid names: .*ps_resnet50"):
        models.get("ps_resnet51")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(conv="psconv"), "conv type comes from the model name"),
        (dict(pooling="mean", include_top=False), "pooling"),
        (dict(feature_maps=True), "include_top=False"),
        (dict(num_classes=0), "num_classes"),
        (dict(pattern=(1, 2, 3)), "input channels"),
        (dict(classifier_activation="softmaxx"), "classifier_activation"),
        (dict(classifier_activation=3), "classifier_activation"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.get("ps_cifar_resnet20", **kwargs)


def test_builders_validate_conv_type():
    with pytest.raises(ValueError, match="conv"):
        models.resnet50(conv="dilated")


def test_every_conv_starts_from_its_own_kernel():
    # An unseeded initializer shared by all layers fixes one seed: every conv
    # of a shape, in every model, would start from the same kernel.
    model = models.get("ps_resnet18", input_shape=(32, 32, 3))
    twin = models.get("ps_resnet18", input_shape=(32, 32, 3))
    names = ("layer1_0_conv1", "layer1_0_conv2", "layer1_1_conv1")  # all 64 -> 64, 3x3
    kernels = [model.get_layer(name).kernel.numpy() for name in names]
    kernels.append(twin.get_layer(names[0]).kernel.numpy())
    for i in range(len(kernels)):
        for j in range(i):
            assert not np.array_equal(kernels[i], kernels[j]), (i, j)
    # Still He-normal with fan_out: std sqrt(2 / (9 * 64)).
    assert np.std(kernels[0]) == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)


@pytest.mark.parametrize("weights, error, message", [
    ("imagenet", ValueError, r"No pretrained weights are hosted.*psconv_tf.load_torch"),
    ("ps_resnet50.pth", ValueError, r"is a PyTorch checkpoint; load it with psconv_tf.load_torch"),
    ("missing.weights.h5", FileNotFoundError, r"no weights file at 'missing.weights.h5'"),
    (True, ValueError, r"must be None or the path of a Keras weights file"),
])
def test_weights_that_are_not_a_keras_file_are_explained(weights, error, message):
    with pytest.raises(error, match=message):
        models.get("ps_cifar_resnet20", weights=weights)


def test_weights_of_another_model_are_one_line(tmp_path):
    path = str(tmp_path / "r.weights.h5")
    models.get("cifar_resnet20", num_classes=3).save_weights(path)
    with pytest.raises(ValueError, match=r"r.weights.h5' does not fit ps_cifar_resnet20: .*"
                                         r"Layer 'layer1_0_conv1' expected 1 variables") as raised:
        models.get("ps_cifar_resnet20", num_classes=3, weights=path)
    assert "\n" not in str(raised.value)


def test_classifier_activation_as_in_keras_applications():
    logits = models.get("ps_cifar_resnet20", input_shape=(16, 16, 3), num_classes=5)
    softmax = models.get("ps_cifar_resnet20", input_shape=(16, 16, 3), num_classes=5,
                         classifier_activation="softmax")
    softmax.set_weights(logits.get_weights())
    x = np.random.default_rng(2).normal(size=(3, 16, 16, 3)).astype("float32")
    z = ops.convert_to_numpy(logits(x)).astype("float64")
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ops.convert_to_numpy(softmax(x)), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(z.sum(axis=1), 1.0)  # the default stays logits
    # Without the top it is ignored, as in keras.applications.
    headless = models.get("ps_cifar_resnet20", include_top=False, classifier_activation="softmax")
    assert headless.output.shape[-1] == 64


def test_list_models_filters_as_timm():
    assert models.list_models("ps_*") == [n for n in models.list_models() if n.startswith("ps_")]
    assert models.list_models(["*resnext29*", "se_*"]) == [
        "dps_resnext29_16x64d", "dps_resnext29_8x64d", "ps_resnext29_16x64d",
        "ps_resnext29_16x64d_official", "ps_resnext29_8x64d",
        "ps_resnext29_8x64d_official", "resnext29_16x64d", "resnext29_8x64d",
        "se_resnet101", "se_resnet50"]
    assert models.list_models("*resnet50", exclude_filters=["dps_*", "*se_*"]) == [
        "ps_resnet50", "resnet50"]
    assert models.list_models("nothing*") == []
    with pytest.raises(ValueError, match="`filter`"):
        models.list_models(3)
