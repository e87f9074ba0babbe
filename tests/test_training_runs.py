"""The training loop as a run: atomic files, resuming, non-finite losses, callbacks,
progress. A tiny model (one PSConv2D, a Dense head) on generated data."""

import dataclasses
import io
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import training_helpers
from psconv_tf.training import configs
from psconv_tf.runtime import files
from psconv_tf.runtime.errors import NonFiniteLossError
from psconv_tf.training.run_log import Progress
from psconv_tf.training.trainer import RunOptions
from psconv_tf.training.trainer import Trainer
from training_helpers import read_log

pytestmark = pytest.mark.tensorflow

BATCH, STEPS = 8, 3
RECIPE = dataclasses.replace(configs.IMAGENET, epochs=2, batch_size=BATCH,
                             reference_batch_size=BATCH)


def _dataset_fn(training):
    return training_helpers.tiny_dataset_fn(training, BATCH, STEPS)


def _fit(run_dir, recipe=RECIPE, callbacks=(), **options):
    keras.utils.set_random_seed(1)
    trainer = Trainer(tf.distribute.get_strategy(), training_helpers.tiny_classifier, recipe, STEPS,
                      RunOptions(str(run_dir), **{"verbose": 0, **options}))
    metrics = trainer.fit(_dataset_fn(True), _dataset_fn(False),
                          training_helpers.tiny_run_config(recipe), callbacks=callbacks)
    return trainer, metrics


class _Recorder(keras.callbacks.Callback):
    def __init__(self, stop_after_epoch=None):
        super().__init__()
        self.events = []
        self.stop_after_epoch = stop_after_epoch

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch, sorted(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, sorted(logs)))
        if epoch == self.stop_after_epoch:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.events.append(("train_end",))


def test_callbacks_see_every_epoch_and_step(tmp_path):
    recorder = _Recorder()
    trainer, _ = _fit(tmp_path, callbacks=[recorder])
    assert recorder.model is trainer.model
    metric_names = ["loss", "top1", "top5"]
    epoch_logs = metric_names + ["val_loss", "val_top1", "val_top5"]
    expected = [("train_begin",)]
    for epoch in range(2):
        expected += [("epoch_begin", epoch)]
        expected += [("batch_end", step, metric_names) for step in range(STEPS)]
        expected += [("epoch_end", epoch, sorted(epoch_logs))]
    assert recorder.events == expected + [("train_end",)]


def test_a_callback_can_stop_training(tmp_path):
    trainer, metrics = _fit(tmp_path, callbacks=[_Recorder(stop_after_epoch=0)])
    assert metrics["steps_done"] == STEPS


class _Poison(keras.callbacks.Callback):
    """Makes one weight infinite before a chosen step, as a diverging run would."""

    def __init__(self, epoch, step):
        super().__init__()
        self.at = (epoch, step)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            kernel = self.model.get_layer("fc").kernel
            kernel.assign(tf.fill(kernel.shape, float("inf")))


def test_non_finite_loss_stops_and_keeps_the_last_good_files(tmp_path):
    _fit(tmp_path, recipe=dataclasses.replace(RECIPE, epochs=1))
    best = (tmp_path / "best.keras").read_bytes()
    with pytest.raises(NonFiniteLossError, match="the training loss became nan at epoch 2, step 2"
                       ".*last good backup \\(3 steps\\)"):
        _fit(tmp_path, allow_changes=True, callbacks=[_Poison(epoch=1, step=1)])
    assert (tmp_path / "best.keras").read_bytes() == best
    assert tf.train.latest_checkpoint(str(tmp_path / "backup")).endswith("ckpt-3")
    assert read_log(tmp_path)[-1]["event"] == "stopped"
    assert "metrics.json" in os.listdir(tmp_path)  # of the first run only
    assert training_helpers.read_json(tmp_path / "metrics.json")["steps_done"] == STEPS


def test_nan_weights_are_never_saved(tmp_path):
    # Poisoned at the last step: the loss of that step was computed before.
    with pytest.raises(NonFiniteLossError):
        _fit(tmp_path, callbacks=[_Poison(epoch=0, step=STEPS - 1)])
    assert not (tmp_path / "best.keras").exists()
    assert tf.train.latest_checkpoint(str(tmp_path / "backup")) is None


@pytest.mark.parametrize("earlier_release", [False, True])
def test_leftover_temporaries_are_removed_on_resume(tmp_path, earlier_release):
    _fit(tmp_path, recipe=dataclasses.replace(RECIPE, epochs=1))
    # What killed writers leave: tf.train.CheckpointManager's temporaries and ours.
    leftovers = [tmp_path / "backup" / "ckpt-9_temp",
                 tmp_path / "backup" / f"checkpoint.tmp{'5f3a' * 8}",
                 tmp_path / "backup" / "ckpt-9.index.tempstate1234567",
                 tmp_path / "best.psconv-tmp-0123456789ab.keras"]
    earlier = tmp_path / "metrics.tmp-0123456789ab.json"  # the release before's mark
    if earlier_release:  # a run folder it wrote: no manifest
        (tmp_path / "psconv_run.json").unlink()
        leftovers.append(earlier)
    leftovers[0].mkdir()
    (leftovers[0] / "part-00000-of-00001").write_bytes(b"partial")
    for path in leftovers[1:]:
        path.write_bytes(b"partial")
    # Names alike that no run writes: kept.
    kept = [tmp_path / "logs" / "best.psconv-tmp-0123456789ab.keras"]
    if not earlier_release:
        kept.append(earlier)
    for path in kept:
        path.write_bytes(b"mine")
    _fit(tmp_path, allow_changes=True)
    assert not [path for path in leftovers if path.exists()]
    assert all(path.read_bytes() == b"mine" for path in kept)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch, failure):
    model = training_helpers.tiny_classifier()
    path = str(tmp_path / "best.keras")
    files.save_model(model, path)
    previous = open(path, "rb").read()

    def half_save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as file:
            file.write(previous[: len(previous) // 2])
        raise failure("killed while saving")

    monkeypatch.setattr(keras.Model, "save", half_save)
    with pytest.raises(failure):
        files.save_model(model, path)
    assert open(path, "rb").read() == previous
    assert os.listdir(tmp_path) == ["best.keras"]


SAVE_LOOP = """
import sys
import keras
from psconv_tf.runtime import files
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512), keras.layers.Dense(512)])
print("ready", flush=True)
while True:
    files.save_model(model, sys.argv[1])
"""


def test_killed_saves_never_leave_a_broken_file(tmp_path):
    """SIGKILL at random moments of a loop of saves: the file always loads."""
    path = tmp_path / "best.keras"
    rng = np.random.default_rng(0)
    for _ in range(2):
        process = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)],
                                   stdout=subprocess.PIPE, env=training_helpers.script_env())
        try:
            assert process.stdout.readline().strip() == b"ready"
            time.sleep(0.5 + rng.uniform(0, 0.5))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert keras.saving.load_model(path).count_params() == 64 * 512 + 512 + 512 * 512 + 512


def test_plain_progress_lines_off_a_terminal():
    stream = io.StringIO()
    progress = Progress("epoch 1/2", 250, verbose=1, every=100, stream=stream)
    for step in range(1, 251):
        progress.update(step, {"loss": 0.5}, finished=step == 250)
    lines = stream.getvalue().splitlines()
    assert [line.split(" - ")[0] for line in lines] == [
        "epoch 1/2 step 100/250", "epoch 1/2 step 200/250", "epoch 1/2 step 250/250"]
    assert all(" - loss: 0.5000 - " in line for line in lines)
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()


def test_evaluation_reports_progress(tmp_path, capsys):
    _fit(tmp_path, recipe=dataclasses.replace(RECIPE, epochs=1), verbose=1, log_every=1)
    output = capsys.readouterr().out
    assert "epoch 1/1 step 3/3 - loss: " in output
    assert "evaluation step 3 - loss: " in output
    assert "\x1b" not in output


class _HingeTrainer(Trainer):
    """Another task through the override points: a hinge loss, one metric."""

    MONITOR = "accuracy"

    def create_metrics(self):
        return [keras.metrics.Mean(name="loss"),
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def per_example_loss(self, labels, outputs, images):
        correct = tf.gather(outputs, labels, batch_dims=1)
        return tf.reduce_sum(tf.nn.relu(1.0 + outputs - correct[:, None]), axis=-1) - 1.0


def test_a_subclass_can_change_the_loss_and_metrics(tmp_path):
    keras.utils.set_random_seed(1)
    trainer = _HingeTrainer(tf.distribute.get_strategy(), training_helpers.tiny_classifier,
                            dataclasses.replace(RECIPE, epochs=1), STEPS,
                            RunOptions(str(tmp_path), verbose=0))
    metrics = trainer.fit(_dataset_fn(True), _dataset_fn(False),
                          training_helpers.tiny_run_config(RECIPE))
    assert set(metrics["final"]) == {"loss", "accuracy"}
    assert set(metrics["best"]) == {"epoch", "val_loss", "val_accuracy"}
    # The hinge loss of the final model, computed here in NumPy.
    images, labels = next(iter(_dataset_fn(False)(tf.distribute.InputContext()).unbatch()
                               .batch(BATCH * STEPS)))
    outputs = trainer.model(images, training=False).numpy().astype(np.float64)
    correct = outputs[np.arange(len(labels)), labels.numpy()]
    hinge = np.maximum(0, 1 + outputs - correct[:, None]).sum(axis=1) - 1
    np.testing.assert_allclose(metrics["final"]["loss"], hinge.mean(), rtol=1e-5)
