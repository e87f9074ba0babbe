"""The test suite's warning filters (setup.cfg) hide only third-party
warnings: Keras's own saving warns nothing, and the project's code still
warns where it means to."""

import warnings

import keras
import pytest


def test_keras_saving_warns_nothing(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with warnings.catch_warnings(record=True) as caught:  # the suite's filters apply
        model.save(tmp_path / "model.keras")
        model.save_weights(tmp_path / "model.weights.h5")
    assert [str(warning.message) for warning in caught] == []


def test_the_same_warning_from_project_code_is_shown():
    with pytest.warns(DeprecationWarning, match="__array__ implementation"):
        warnings.warn_explicit(
            "__array__ implementation doesn't accept a copy keyword", DeprecationWarning,
            "psconv_tf/checkpoints/loading.py", 1, module="psconv_tf.checkpoints.loading")
