"""What goes wrong around a run gets one line that names it: the cluster, the
seed, the data (images that all fail, flat images, unreadable folders,
pickles), a full disk, a damaged or foreign backup; nothing hangs."""

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import training_helpers
from training_helpers import one_line_error
from psconv_tf.training import cli
from psconv_tf.training import configs
from psconv_tf.classification import small_data
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import RunWriteError
from psconv_tf.training.trainer import RunOptions
from psconv_tf.training.trainer import Trainer
from training_helpers import imagenet_args
from training_helpers import read_json

pytestmark = pytest.mark.tensorflow

cifar = training_helpers.load_script("cifar")
imagenet = training_helpers.load_script("imagenet")
quick_run = training_helpers.load_script("quick_run")

BATCH, STEPS = 8, 3
RECIPE = dataclasses.replace(configs.IMAGENET, epochs=1, batch_size=BATCH,
                             reference_batch_size=BATCH)



def _trainer(run_dir, recipe=RECIPE, build=training_helpers.tiny_classifier, **options):
    keras.utils.set_random_seed(1)
    return Trainer(tf.distribute.get_strategy(), build, recipe, STEPS,
                   RunOptions(str(run_dir), **{"verbose": 0, **options}))


def _fit(run_dir, recipe=RECIPE, train=None, **options):
    trainer = _trainer(run_dir, recipe, **options)
    return trainer.fit(train or training_helpers.tiny_dataset_fn(True, BATCH, STEPS),
                       training_helpers.tiny_dataset_fn(False, BATCH, STEPS),
                       training_helpers.tiny_run_config(recipe))


def _images(tmp_path, train=2, val=1):
    training_helpers.write_image_tree(str(tmp_path / "images"), "train", ("cat",), train)
    training_helpers.write_image_tree(str(tmp_path / "images"), "val", ("cat",), val)
    return tmp_path / "images"


# Arguments and environment -------------------------------------------------------------


@pytest.mark.parametrize("tf_config, message", [
    ("{bad", "error: TF_CONFIG is not valid JSON (Expecting property name"),
    ("[1, 2]", "error: TF_CONFIG is not a JSON object: '[1, 2]'"),
    ('{"cluster": {"worker": "a:1"}}', 'error: TF_CONFIG has no "cluster" of jobs'),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "error: TF_CONFIG's \"task\" {'type': 'worker', 'index': 2} is not one of its cluster's"),
])
def test_a_tf_config_that_is_not_a_cluster_is_one_line(tmp_path, monkeypatch, tf_config,
                                                       message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    assert one_line_error(imagenet.main, imagenet_args(tmp_path, tmp_path / "run", "--strategy",
                                                 "auto")).startswith(message)
    assert one_line_error(cifar.main, ["--run-dir", str(tmp_path / "run"), "--strategy",
                                 "multiworker"]).startswith(message)


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1e3"])
@pytest.mark.parametrize("script", [imagenet, cifar, quick_run])
def test_seeds_out_of_range_are_refused(tmp_path, capsys, script, seed):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--seed", seed, "--run-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"error: argument --seed: must be in [0, 4294967295], got '{seed}'"
                          if seed != "1e3" else "error: argument --seed: not an integer: '1e3'")
    assert not (tmp_path / "run").exists()


def test_seeds_past_the_range_are_refused(tmp_path):
    message = one_line_error(cifar.main, ["--seed", str(2**32 - 2), "--seeds", "3",
                                    "--run-dir", str(tmp_path / "run")])
    assert message == "error: --seeds: --seed 4294967294 with 3 seeds passes 4294967295."


# Data ---------------------------------------------------------------------------------------


def test_flat_cifar_images_cannot_be_standardized(tmp_path):
    training_helpers.write_cifar10(str(tmp_path / "data"), 20, 4)
    zeros = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    for number in range(1, 6):
        with open(tmp_path / "data" / f"data_batch_{number}", "wb") as file:
            pickle.dump(zeros, file)
    message = one_line_error(cifar.main, ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                                    "--run-dir", str(tmp_path / "run")])
    assert message == (f"error: --data-dir: every training image of cifar10 in "
                       f"{tmp_path / 'data'} has the same value (0) in channel 0 (standard "
                       "deviation 0): they cannot be standardized. Check the files.")


def test_a_split_without_images_is_named(tmp_path):
    training_helpers.write_cifar10(str(tmp_path / "data"), 20, 4)
    with open(tmp_path / "data" / "test_batch", "wb") as file:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, file)
    message = one_line_error(cifar.main, ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                                    "--run-dir", str(tmp_path / "run")])
    assert message == (f"error: --data-dir: the test split of cifar10 in {tmp_path / 'data'} "
                       "has no images.")


@pytest.mark.parametrize("protocol, construct", [(2, "_codecs.encode"),
                                                 (5, "numpy._core.numeric._frombuffer")])
def test_pickles_of_protocols_2_and_5_are_refused_saying_why(tmp_path, protocol, construct):
    training_helpers.write_cifar10(str(tmp_path), 20, 4)
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(InputError) as error:
        small_data.load_small_dataset("cifar10", str(tmp_path), download=False)
    assert str(error.value) == (
        f"{tmp_path / 'test_batch'} is not a CIFAR python batch this reader accepts: it is a "
        f"pickle of protocol {protocol} that calls {construct}, a construct not allowed here "
        "(the reader runs no function a file names; CIFAR's published batches and pickles "
        "of protocol 3 or 4 call none). Re-save it with pickle protocol 4, or use the "
        "published files.")
    for readable in (3, 4):  # the same data, read
        (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=readable))
        images, _ = small_data.load_small_dataset("cifar10", str(tmp_path), download=False)["test"]
        assert images.shape == (4, 32, 32, 3)


def test_an_unreadable_class_folder_is_named_as_such(tmp_path, monkeypatch):
    data = _images(tmp_path)
    locked = str(data / "train" / "cat")
    listdir, glob = tf.io.gfile.listdir, tf.io.gfile.glob

    def denied_listdir(path):  # what a folder without read permission gives
        if str(path).rstrip("/") == locked:
            raise tf.errors.PermissionDeniedError(None, None, f"{locked}; Permission denied")
        return listdir(path)

    monkeypatch.setattr(tf.io.gfile, "listdir", denied_listdir)
    monkeypatch.setattr(tf.io.gfile, "glob", lambda pattern: [] if pattern.startswith(locked)
                        else glob(pattern))
    message = one_line_error(imagenet.main, imagenet_args(data, tmp_path / "run"))
    assert message == (f"error: --data-dir: class folder {locked} cannot be read "
                       "(Permission denied).")


def test_training_images_that_all_fail_stop_the_run(tmp_path):
    """The pipeline repeats what decodes: a pass where nothing does ends it,
    instead of waiting forever after "Epoch 1/1"."""
    data = _images(tmp_path)
    for path in (data / "train" / "cat").iterdir():
        path.write_bytes(b"not a JPEG")
    result = subprocess.run(
        training_helpers.script_command("imagenet.py", *imagenet_args(
            data, tmp_path / "run", "--steps-per-epoch", 1, "--verbose", 1)),
        env=training_helpers.script_env(), cwd=training_helpers.REPO_DIR,
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --data-dir: the training data yielded no batch: all its images were skipped "
        f"as undecodable (2 skipped, listed in {tmp_path / 'run' / 'log.jsonl'}). Check the "
        "data.")


def test_validation_images_that_all_fail_stop_the_run(tmp_path):
    data = _images(tmp_path)
    for path in (data / "val" / "cat").iterdir():
        path.write_bytes(b"not a JPEG")
    message = one_line_error(imagenet.main, imagenet_args(data, tmp_path / "run",
                                                     "--steps-per-epoch", 1))
    assert message == (
        "error: --data-dir: the validation data yielded no batch: all its images were skipped "
        f"as undecodable (1 skipped, listed in {tmp_path / 'run' / 'log.jsonl'}). Check the "
        "data.")
    assert not (tmp_path / "run" / "metrics.json").exists()
    message = one_line_error(imagenet.main, imagenet_args(data, tmp_path / "checked",
                                                     "--check-images"))
    assert message == "error: --data-dir: no val image can be decoded (1 of 1 fail)."


def test_training_data_that_ends_is_named(tmp_path):
    with pytest.raises(InputError, match="the training data ran out at epoch 1, step 2; it "
                                         "must repeat endlessly"):
        _fit(tmp_path, train=training_helpers.tiny_dataset_fn(False, BATCH, 2))


# Writes and backups -------------------------------------------------------------------------


def _full_disk(calls):
    """A CheckpointManager.save that fails as a full disk does at call `calls`,
    leaving the temporary folder TensorFlow leaves."""
    save = tf.train.CheckpointManager.save
    count = []

    def failing(self, checkpoint_number=None, **kwargs):
        count.append(1)
        if len(count) == calls:
            os.makedirs(f"{self.directory}/ckpt-{int(checkpoint_number)}_temp", exist_ok=True)
            raise tf.errors.ResourceExhaustedError(
                None, None, "{{function_node __wrapped__SaveV2}} /x/part-00000; No space left "
                            "on device [Op:SaveV2]")
        return save(self, checkpoint_number=checkpoint_number, **kwargs)

    return failing


def test_a_full_disk_stops_with_one_line_and_keeps_the_previous_files(tmp_path, monkeypatch):
    recipe = dataclasses.replace(RECIPE, epochs=2)
    _fit(tmp_path)  # epoch 1: a backup and best.keras
    best = (tmp_path / "best.keras").read_bytes()
    # Epoch 2 saves at step 1 (backup_every 4: step 4 of the run), then fails at step 2.
    monkeypatch.setattr(tf.train.CheckpointManager, "save", _full_disk(calls=2))
    with pytest.raises(RunWriteError) as error:
        _fit(tmp_path, recipe, allow_changes=True, backup_every=1)
    assert str(error.value) == (
        f"cannot write {tmp_path / 'backup'} (No space left on device): training stopped at "
        f"epoch 2, step 2; the backup at epoch 2, step 1 and {tmp_path / 'best.keras'} are "
        "intact. Free space (or fix the folder) and rerun the same command to resume.")
    assert cli.error_message(error.value) == f"error: {error.value}"
    assert (tmp_path / "best.keras").read_bytes() == best
    assert tf.train.latest_checkpoint(str(tmp_path / "backup")).endswith("ckpt-4")
    monkeypatch.undo()
    # The rerun resumes there (and clears the temporary left).
    assert _fit(tmp_path, recipe, allow_changes=True)["steps_done"] == 2 * STEPS
    assert not (tmp_path / "backup" / "ckpt-5_temp").exists()


def test_a_full_disk_while_saving_the_model_is_one_line(tmp_path, monkeypatch):
    def no_space(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as file:
            file.write(b"PK\x03\x04 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", no_space)
    with pytest.raises(RunWriteError) as error:
        _fit(tmp_path)
    assert str(error.value) == (
        f"cannot write {tmp_path / 'best.keras'} (No space left on device): training stopped "
        "at epoch 2, step 0; nothing had been saved yet. Free space (or fix the folder) and "
        "rerun the same command to resume.")
    assert sorted(os.listdir(tmp_path)) == ["config.json", "log.jsonl", "psconv_run.json"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    _fit(folder)
    return folder


def _truncate(path, size):
    path.write_bytes(path.read_bytes()[:size])


DAMAGE = {
    "data": (lambda backup: _truncate(next(backup.glob("ckpt-*.data-*")), 1000),
             "{backup}/ckpt-3.data-00000-of-00001 is damaged ("),
    "index": (lambda backup: _truncate(backup / "ckpt-3.index", 100),
              "{backup}/ckpt-3.index is damaged ("),
    "state": (lambda backup: (backup / "checkpoint").write_text("garbage{"),
              "{backup}/checkpoint is damaged; "),
    "no-state": (lambda backup: (backup / "checkpoint").unlink(),
                 "{backup} holds checkpoints but no `checkpoint` file naming the latest; "),
    "missing": (lambda backup: [path.unlink() for path in backup.glob("ckpt-3.*")],
                "{backup}/checkpoint names {backup}/ckpt-3, whose files are missing; "),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_backup_is_named_and_never_started_over(tmp_path, finished_run, damage):
    damage_backup, start = damage
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    damage_backup(run_dir / "backup")
    before = sorted(os.listdir(run_dir / "backup"))
    with pytest.raises(InputError) as error:
        _fit(run_dir, dataclasses.replace(RECIPE, epochs=2), allow_changes=True)
    message = str(error.value)
    assert message.startswith(start.format(backup=run_dir / "backup")), message
    assert message.endswith(f"move {run_dir / 'backup'} away to start the run over (the other "
                            "files of the run stay), or use another run folder.")
    assert "\n" not in message and sorted(os.listdir(run_dir / "backup")) == before


BACKUP_OF_ANOTHER_MODEL = """
import dataclasses, os, sys
import keras, tensorflow as tf
import training_helpers
from psconv_tf import PSConv2D
from psconv_tf.training import configs
from psconv_tf.training.trainer import RunOptions, Trainer

def wider():
    inputs = keras.Input((8, 8, 8))
    x = PSConv2D(16, 3, padding="same", name="psconv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(6, name="fc")(x))

recipe = dataclasses.replace(configs.IMAGENET, epochs=1, batch_size=8, reference_batch_size=8)
for build in (training_helpers.tiny_classifier, wider):
    trainer = Trainer(tf.distribute.get_strategy(), build, recipe, 3,
                      RunOptions(sys.argv[1], verbose=0))
    try:
        trainer.fit(training_helpers.tiny_dataset_fn(True, 8, 3),
                    training_helpers.tiny_dataset_fn(False, 8, 3),
                    training_helpers.tiny_run_config(recipe))
    except ValueError as error:
        print("error:", error, file=sys.stderr)
    else:
        os.remove(os.path.join(sys.argv[1], "config.json"))  # as if copied without it
"""


def test_the_backup_of_another_model_is_one_line_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", BACKUP_OF_ANOTHER_MODEL, str(tmp_path / "run")],
        env=dict(training_helpers.script_env(), PYTHONPATH=os.path.dirname(__file__)),
        cwd=training_helpers.REPO_DIR, capture_output=True, text=True, timeout=240)
    lines = [line for line in result.stderr.splitlines()
             if line.startswith(("WARNING:tensorflow", "error:", "Traceback"))]
    assert lines == [f"error: {tmp_path / 'run'} holds the backup of another model (its "
                     "variables do not match this one's); use a new run folder."], lines
    # Refused before anything was written: config.json is not the new model's.
    assert not (tmp_path / "run" / "config.json").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps_done"] == STEPS
    assert read_json(tmp_path / "run" / "psconv_run.json")["kind"] == "classification"
