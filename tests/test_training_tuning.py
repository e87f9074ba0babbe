"""Tuning before tracing: `psconv_tf.tune`, the trainer's first-batch tuning,
and `TuneCallback` for `model.fit`."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import training_helpers
from psconv_tf import PSConv2D
from psconv_tf import TuneCallback
from psconv_tf import tune
from psconv_tf.engine import autotune
from psconv_tf.engine.executor import IMPLEMENTATIONS
from psconv_tf.training import configs
from psconv_tf.training.trainer import RunOptions
from psconv_tf.training.trainer import Trainer

BATCH, STEPS = 4, 3
# A measurement whose winner no fixed default picks for these layers.
WINNER = "grouped"


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    """Measuring on, a fresh cache, fake timings in which WINNER wins, and a
    record of every choice made inside a trace."""
    monkeypatch.setenv(autotune.ENVIRONMENT, "1")
    monkeypatch.setenv(autotune.CACHE_ENVIRONMENT, str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "_memory", {})
    measured, traced = [], []

    def fake_measure(layer, shape, dtype, training):
        measured.append((layer.name, tuple(shape), training))
        return {name: 0.5 if name == WINNER else 1.0 for name in IMPLEMENTATIONS}

    real_choose = autotune.choose

    def spy(layer, inputs, training):
        choice = real_choose(layer, inputs, training)
        if not autotune._concrete(inputs):
            traced.append((layer.name, choice))
        return choice

    monkeypatch.setattr(autotune, "measure", fake_measure)
    monkeypatch.setattr(autotune, "choose", spy)
    assert WINNER not in ("masked", autotune.DEFAULT)  # the fixed defaults
    return measured, traced


def _model():
    inputs = keras.Input((8, 8, 8))
    x = PSConv2D(8, 3, padding="same", name="psconv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dropout(0.5, seed=1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(6, name="fc")(x))


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(3.0, 2.0, size=(BATCH, 8, 8, 8)).astype("float32"),
            rng.integers(0, 6, BATCH).astype("int32"))


def test_tune_measures_for_training_and_changes_nothing_in_the_model(tuner):
    measured, _ = tuner
    model = _model()
    before = [keras.ops.convert_to_numpy(v) for v in model.variables]
    choices = tune(model, _data())  # (inputs, labels), as a dataset yields
    assert choices == {"psconv": WINNER}
    assert measured == [("psconv", (BATCH, 8, 8, 8), True)]
    # No batch-norm statistic or random state moved.
    for old, new in zip(before, model.variables):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    # A dataset: its first batch.
    dataset = tf.data.Dataset.from_tensor_slices(_data()).batch(2)
    assert tune(model, dataset, training=False) == {"psconv": WINNER}
    assert measured[-1] == ("psconv", (2, 8, 8, 8), False)


def test_tune_names_what_it_cannot_use(tuner):
    with pytest.raises(ValueError, match="yielded no batch"):
        tune(_model(), tf.data.Dataset.from_tensor_slices(_data()).take(0))
    with pytest.raises(ValueError, match="got int"):
        tune(_model(), 3)
    with pytest.raises(ValueError, match="got str"):
        tune(_model(), "images/")


def _fit(run_dir, **options):
    recipe = dataclasses.replace(configs.IMAGENET, epochs=1, batch_size=BATCH,
                                 reference_batch_size=BATCH)
    keras.utils.set_random_seed(1)
    trainer = Trainer(tf.distribute.get_strategy(), training_helpers.tiny_classifier, recipe,
                      STEPS, RunOptions(str(run_dir), verbose=0, **options))
    trainer.fit(training_helpers.tiny_dataset_fn(True, BATCH, STEPS),
                training_helpers.tiny_dataset_fn(False, BATCH, STEPS),
                training_helpers.tiny_run_config(recipe))
    return [record for record in training_helpers.read_log(run_dir)
            if record["event"] == "autotune"]


def test_the_trainer_tunes_on_the_first_batch_before_tracing(tuner, tmp_path):
    measured, traced = tuner
    records = _fit(tmp_path / "run")
    assert measured == [("psconv", (BATCH, 8, 8, 8), True), ("psconv", (BATCH, 8, 8, 8), False)]
    # The traced training and evaluation steps ran the measured choices.
    assert ("psconv", WINNER) in traced
    assert all(choice == WINNER for _, choice in traced)
    assert [(record["train"], record["infer"]) for record in records] == [
        ({"psconv": WINNER}, {"psconv": WINNER})]


def test_the_trainer_can_be_told_not_to_tune(tuner, tmp_path):
    measured, traced = tuner
    assert _fit(tmp_path / "run", autotune=False) == []
    assert measured == []
    assert traced and all(choice != WINNER for _, choice in traced)


def test_the_callback_tunes_fit_before_its_step_is_traced(tuner):
    measured, traced = tuner
    model = _model()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    dataset = tf.data.Dataset.from_tensor_slices(_data()).batch(2)
    callback = TuneCallback(dataset)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    assert callback.choices == {"psconv": WINNER}
    assert measured == [("psconv", (2, 8, 8, 8), True)]
    assert traced and all(choice == WINNER for _, choice in traced)


def test_the_flag_reaches_the_run_options():
    import argparse

    from psconv_tf.training import cli

    parser = argparse.ArgumentParser()
    cli.add_runtime_arguments(parser, "runs/x")
    assert parser.parse_args([]).autotune is True
    assert parser.parse_args(["--no-autotune"]).autotune is False
    assert "autotune" in cli.NOT_REPLAYED
