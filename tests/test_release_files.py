"""Files saved by psconv-tf 0.1.0 load and compute what they computed then.

`tests/data/release_0_1_0/` holds a `.keras` model of every layer of the
package (compiled with its optimizer), a zoo graph with feature maps, and a
keras-hub backbone and classifier preset, each with its inputs and the
outputs that release computed. Loading them with today's code must give the
same outputs: the saved configs, weights and registered names still mean
what they meant.
"""

import os

import keras
import numpy as np
import pytest

import psconv_tf

DATA = os.path.join(os.path.dirname(__file__), "data", "release_0_1_0")
pytestmark = pytest.mark.tensorflow  # written by the TensorFlow backend


def _close(actual, expected):
    actual = keras.ops.convert_to_numpy(actual)
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= 1e-5 * scale


def test_model_of_every_layer_loads_with_its_optimizer():
    model = psconv_tf.load_model(os.path.join(DATA, "layers.keras"))
    images = np.load(os.path.join(DATA, "layers_input.npy"))
    _close(model(images), np.load(os.path.join(DATA, "layers_output.npy")))
    assert type(model.optimizer).__name__ == "CoupledWeightDecaySGD"
    assert int(model.optimizer.iterations.numpy()) == 1


def test_feature_maps_keep_their_names():
    model = psconv_tf.load_model(os.path.join(DATA, "feature_maps.keras"))
    pixels = np.load(os.path.join(DATA, "feature_maps_input.npy"))
    expected = np.load(os.path.join(DATA, "feature_maps_output.npz"))
    outputs = model(pixels)
    assert sorted(outputs) == sorted(expected.files) == ["C2", "C3", "C4", "C5"]
    for name in expected.files:
        _close(outputs[name], expected[name])


def test_presets_and_task_file_load():
    import keras_hub

    pixels = np.load(os.path.join(DATA, "feature_maps_input.npy"))
    backbone = keras_hub.models.Backbone.from_preset(os.path.join(DATA, "backbone_preset"))
    expected = np.load(os.path.join(DATA, "backbone_output.npz"))
    features = keras.Model(backbone.input, backbone.pyramid_outputs)(pixels)
    for name in expected.files:
        _close(features[name], expected[name])
    logits = np.load(os.path.join(DATA, "classifier_output.npy"))
    classifier = keras_hub.models.ImageClassifier.from_preset(
        os.path.join(DATA, "classifier_preset"))
    _close(classifier(pixels), logits)
    _close(psconv_tf.load_model(os.path.join(DATA, "classifier.keras"), compile=False)(pixels), logits)
