"""Dynamic zoo models, their profile, inspection and the rate-share logger."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from psconv_tf import DynamicPSConv2D
from psconv_tf import RateShareLogger
from psconv_tf import freeze
from psconv_tf import models
from psconv_tf import profile
from psconv_tf import rate_shares
from psconv_tf import summary
from psconv_tf.models import Stage
from test_models import CIFAR
from test_models import IMAGENET
from test_models import resnet_figures

ARCHITECTURES = sorted(IMAGENET) + sorted(CIFAR)


def test_every_architecture_has_a_dynamic_name():
    names = models.list_models()
    assert {"dps_" + a for a in ARCHITECTURES} == {n for n in names if n.startswith("dps_")}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_dynamic_model_counts(architecture):
    """The static twin's figures by hand, plus the latent factors; training
    runs every dynamic 3x3 conv once per rate."""
    if architecture in IMAGENET:
        size, spec = 64, dict(IMAGENET[architecture])
    else:
        size, spec = 32, dict(CIFAR[architecture], cifar=True)
    model = models.get("dps_" + architecture, input_shape=(size, size, 3))
    assert model.name == "dps_" + architecture
    params, macs = resnet_figures(size=size, **spec)
    dynamic = [l for l in model.layers if isinstance(l, DynamicPSConv2D)]
    latent = conv_macs = 0
    for layer in dynamic:
        kh, kw, n_in, filters = layer.kernel.shape
        groups = layer.groups
        latent += (groups if groups > 1 else 0) + 16 + (filters // groups // 4) * (n_in // 4)
        _, height, width, _ = layer.output.shape
        conv_macs += height * width * kh * kw * n_in * filters
    assert profile(model) == {
        "params": params + latent, "macs": macs,
        "latent_params": latent, "training_macs": macs + conv_macs,
    }


def test_grouped_dynamic_model_runs_and_freezes():
    model = models.get(
        "dps_resnext50_32x4d", stages=(Stage(1, 64, 2),), input_shape=(16, 16, 3),
        num_classes=5, dynamic_options={"mask_initializer": "random"},
    )
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    y = ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(ops.convert_to_numpy(freeze(model)(x)), y,
                               rtol=1e-5, atol=1e-5 * np.abs(y).max())


def test_training_builds_dynamic_models_by_name():
    # As the training scripts call the zoo.
    model = models.get("dps_cifar_resnet20", num_classes=10, input_shape=[28, 28, 1])
    assert len([l for l in model.layers if isinstance(l, DynamicPSConv2D)]) == 18


def test_profile_by_hand():
    inputs = keras.Input((8, 8, 16))
    outputs = DynamicPSConv2D(16, 3, padding="same", use_bias=False)(inputs)
    counts = profile(keras.Model(inputs, outputs))
    macs = 8 * 8 * 9 * 16 * 16
    assert counts == {"params": 9 * 16 * 16 + 32, "macs": macs,
                      "latent_params": 32, "training_macs": 2 * macs}


def _tiny_dynamic_model():
    inputs = keras.Input((8, 8, 4))
    x = DynamicPSConv2D(8, 3, padding="same", name="dyn", surrogate="identity",
                        mask_learning_rate_multiplier=1e4)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def _scalars(log_dir):
    values = {}
    for path in glob.glob(f"{log_dir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values.setdefault(value.tag, {})[event.step] = float(
                    tf.make_ndarray(value.tensor)
                )
    return values


def test_rate_share_logger_writes_tensorboard_scalars(tmp_path):
    keras.utils.set_random_seed(0)
    model = _tiny_dynamic_model()
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8, 8, 4)), rng.integers(0, 3, 64)
    logger = RateShareLogger(str(tmp_path))
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[logger])

    assert [step for step, _ in logger.history] == [0, 1, 2, 3]
    assert logger.history[0][1] == {"dyn": {1: 0.5, 2: 0.5}}
    final = rate_shares(model)
    assert logger.history[-1][1] == final
    layer = model.get_layer("dyn")
    large = float(np.mean(layer.dilation_matrix() == 2))
    assert final["dyn"] == {1: 1 - large, 2: large}
    scalars = _scalars(str(tmp_path))
    assert set(scalars) == {"rate_share/dyn/rate_1", "rate_share/dyn/rate_2"}
    assert sorted(scalars["rate_share/dyn/rate_2"]) == [0, 1, 2, 3]
    assert scalars["rate_share/dyn/rate_2"][3] == pytest.approx(large)
    assert scalars["rate_share/dyn/rate_1"][3] == pytest.approx(1 - large)


def test_rate_share_logger_every_n_batches_and_bad_frequency():
    model = _tiny_dynamic_model()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logger = RateShareLogger(update_freq=2)
    model.fit(np.zeros((64, 8, 8, 4)), np.zeros(64), batch_size=16, epochs=1,
              verbose=0, callbacks=[logger])
    assert [step for step, _ in logger.history] == [0, 2, 4]
    for bad in (0, -1, "batch", 1.5, True):
        with pytest.raises(ValueError, match="update_freq"):
            RateShareLogger(update_freq=bad)


def test_summary_and_plot_show_the_learned_lattice():
    model = _tiny_dynamic_model()
    layer = model.get_layer("dyn")
    layer.mask_factors[0].assign(np.where(np.eye(4) > 0, 0.5, -0.5))  # 25 % large
    lines = []
    (row,) = summary(model, print_fn=lines.append)
    assert row["pattern"] == "learned (1, 2)"
    expected = float(np.mean(layer.dilation_matrix() == 2))
    assert row["rates"][2] == pytest.approx(expected, abs=1e-4)
    assert "learned (1, 2)" in lines[1]

    import matplotlib

    matplotlib.use("Agg")
    from psconv_tf import plot_lattice

    axes = plot_lattice(layer)
    drawn = np.asarray(axes.images[0].get_array())
    np.testing.assert_array_equal(drawn, np.where(layer.dilation_matrix() == 2, 2, 1))


def test_write_rate_shares_in_a_custom_loop(tmp_path):
    from psconv_tf.rate_share import write_rate_shares

    model = _tiny_dynamic_model()
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default(step=5):
        write_rate_shares(model)
        write_rate_shares(models.get("ps_cifar_resnet20"))  # no dynamic layer: nothing
    writer.close()
    assert _scalars(str(tmp_path)) == {
        "rate_share/dyn/rate_1": {5: 0.5}, "rate_share/dyn/rate_2": {5: 0.5}
    }


@pytest.mark.parametrize("module", ["layers.dynamic_ps_conv2d", "rate_share"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"psconv_tf.{module}"),
                             optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("name, base, conv", [
    ("resnet18", "resnet18", "standard"), ("ps_resnet18", "resnet18", "psconv"),
    ("dps_resnet18", "resnet18", "dynamic"),
])
def test_architecture_of_every_prefix(name, base, conv):
    from psconv_tf.models import _ARCHITECTURES

    assert models.architecture(name) == dict(_ARCHITECTURES[base], conv=conv)
