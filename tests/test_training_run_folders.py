"""Run folders: what a run writes and removes, which folders it refuses, its
lock; finished runs and the run's summary."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf

import training_helpers
from training_helpers import one_line_error
from psconv_tf.training import configs
from psconv_tf.runtime import ownership
from psconv_tf.runtime import run_config
from psconv_tf.runtime import run_lock
from psconv_tf.runtime.errors import NotARunFolderError
from psconv_tf.runtime.errors import RunFolderInUseError
from psconv_tf.training.trainer import RunOptions
from psconv_tf.training.trainer import Trainer
from training_helpers import imagenet_args
from training_helpers import read_json
from training_helpers import read_log

pytestmark = pytest.mark.tensorflow

cifar = training_helpers.load_script("cifar")
imagenet = training_helpers.load_script("imagenet")
quick_run = training_helpers.load_script("quick_run")

BATCH, STEPS = 8, 3
RECIPE = dataclasses.replace(configs.IMAGENET, epochs=1, batch_size=BATCH,
                             reference_batch_size=BATCH)
# Names a user may well give their own files: the clean-up of earlier
# releases removed all of these (at the top and one level down).
LOOKALIKES = ("notes_temp", "draft.tmp-1", "checkpoint.tmp", "model.tempstate1",
              "best.tmp-0123456789ab.keras", "code/ckpt_temp", "code/checkpoint.tmp42",
              "code/x.tmp-abc", "results_temp/a.txt")


def _user_folder(path):
    for name in LOOKALIKES:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(f"the user's {name}")
    return _snapshot(path)


def _snapshot(folder):
    """{relative path: contents (None for a folder)} of everything in `folder`."""
    found = {}
    for root, folders, names in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in names:
            with open(os.path.join(root, name), "rb") as file:
                found[os.path.relpath(os.path.join(root, name), folder)] = file.read()
    return found



def _fit(run_dir, recipe=RECIPE, **options):
    keras.utils.set_random_seed(1)
    trainer = Trainer(tf.distribute.get_strategy(), training_helpers.tiny_classifier, recipe,
                      STEPS, RunOptions(str(run_dir), **{"verbose": 0, **options}))
    return trainer.fit(training_helpers.tiny_dataset_fn(True, BATCH, STEPS),
                       training_helpers.tiny_dataset_fn(False, BATCH, STEPS),
                       training_helpers.tiny_run_config(recipe))


def _images(tmp_path):
    training_helpers.write_image_tree(str(tmp_path / "images"), "train", ("cat",), 2)
    training_helpers.write_image_tree(str(tmp_path / "images"), "val", ("cat",), 1)
    return tmp_path / "images"


# What a run may touch -----------------------------------------------------------


def test_a_folder_of_other_files_is_refused_and_left_alone(tmp_path):
    project = tmp_path / "project"
    before = _user_folder(project)
    training_helpers.write_cifar10(str(tmp_path / "cifar"), 32, 8)
    training_helpers.write_fashion_mnist(str(tmp_path / "fashion"), 64, 16)
    expected = (f"error: --run-dir: {project} holds 7 files or folders and is not a run "
                "folder of psconv-tf (it has no psconv_run.json); give a new or empty "
                "folder, or pass --force-run-dir to add this run's files among them.")
    assert one_line_error(imagenet.main, imagenet_args(_images(tmp_path), project)) == expected
    assert one_line_error(cifar.main, ["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"),
                                 "--run-dir", str(project)]) == expected
    assert one_line_error(quick_run.main, ["--data-dir", str(tmp_path / "fashion"),
                                     "--run-dir", str(project)]) == expected
    assert _snapshot(project) == before
    # A run folder of another kind is refused as well.
    _fit(tmp_path / "classification")
    message = one_line_error(cifar.main, ["--dataset", "cifar10", "--data-dir",
                                    str(tmp_path / "cifar"), "--run-dir",
                                    str(tmp_path / "classification")])
    assert message == (f"error: --run-dir: {tmp_path / 'classification'} is a classification "
                       "run folder, not a cifar seeds one; use another folder.")


def test_force_run_dir_adds_the_run_among_other_files(tmp_path, capsys):
    project = tmp_path / "project"
    before = _user_folder(project)
    data = _images(tmp_path)
    capsys.readouterr()
    metrics = imagenet.main(imagenet_args(data, project, "--force-run-dir", "--steps-per-epoch",
                                          1))
    after = _snapshot(project)
    assert {name: after[name] for name in before} == before
    manifest = read_json(project / "psconv_run.json")
    assert manifest["kind"] == "classification"
    assert set(manifest["entries"]) == {"config.json", "best.keras", "backup", "log.jsonl",
                                        "logs", "metrics.json", "workers"}
    assert not (project / "psconv_run.lock").exists()  # released
    # The run's summary: validation figures so named, best epoch from 1 (as
    # metrics.json counts it), where best.keras is, and the time.
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert metrics["best"]["epoch"] == 1 and metrics["monitor"] == "top1"
    assert last_line.startswith(
        f"cifar_resnet20: best validation top-1 {100 * metrics['best']['val_top1']:.2f} % at "
        f"epoch 1 ({project / 'best.keras'}); final validation loss "
        f"{metrics['final']['loss']:.4f}, top-1 {100 * metrics['final']['top1']:.2f} %; "
        "1 epoch, 1 steps in ")
    assert last_line.endswith(f" s; metrics in {project / 'metrics.json'}")
    # Now a run folder: used without the flag.
    imagenet.main(imagenet_args(data, project, "--steps-per-epoch", 1))
    # A name the run writes that holds the user's file: refused even so.
    other = tmp_path / "other"
    _user_folder(other)
    (other / "config.json").write_text("the user's settings")
    message = one_line_error(imagenet.main, imagenet_args(data, other, "--force-run-dir"))
    assert message == (f"error: --run-dir: {other / 'config.json'} exists and was not written "
                       "by a run; the run would replace it. Use another folder.")
    assert (other / "config.json").read_text() == "the user's settings"


def test_clean_up_removes_only_the_run_s_own_temporaries(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    # What a run killed while claiming a new folder leaves: the folder is still free.
    (folder / "psconv_run.lock").write_text("{}")
    (folder / "psconv_run.psconv-tmp-0123456789ab.json").write_text("{")
    with ownership.claim(folder, run_config.KIND):
        pass
    ours = ["best.psconv-tmp-0123456789ab.keras", "config.psconv-tmp-00000000abcd.json",
            "psconv_run.psconv-tmp-0123456789ab.json",
            "backup/ckpt-12_temp", f"backup/checkpoint.tmp{'ab' * 16}",
            "backup/ckpt-12.data-00000-of-00001.tempstate998877",
            "backup/anything.psconv-tmp-0123456789ab"]
    _user_folder(folder)
    # The mark of the release before counts only in its folders.
    theirs = ["notes.psconv-tmp-0123456789ab.txt", "logs/best.psconv-tmp-0123456789ab.keras",
              "backup_temp", "best.keras.bak", "metrics.tmp-0123456789ab.json"]
    for name in ours + theirs:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    kept = {name: value for name, value in _snapshot(folder).items()
            if name not in ours}
    with ownership.claim(folder, run_config.KIND, force=True) as claim:
        removed = claim.remove_temporaries()
    assert sorted(os.path.relpath(path, folder) for path in removed) == sorted(ours)
    assert _snapshot(folder) == kept


def test_a_run_folder_of_the_previous_release_resumes(tmp_path):
    run_dir = tmp_path / "run"
    _fit(run_dir)
    (run_dir / "psconv_run.json").unlink()  # as the previous release left it
    metrics = _fit(run_dir, recipe=dataclasses.replace(RECIPE, epochs=2), allow_changes=True)
    assert metrics["steps_done"] == 2 * STEPS
    starts = [record for record in read_log(run_dir) if record["event"] == "start"]
    assert starts[-1]["resumed"] and starts[-1]["steps_done"] == STEPS
    assert read_json(run_dir / "psconv_run.json")["kind"] == "classification"
    # With a file no run writes, it is not recognised.
    (run_dir / "psconv_run.json").unlink()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(NotARunFolderError, match="is not a run folder of psconv-tf"):
        _fit(run_dir, recipe=dataclasses.replace(RECIPE, epochs=3), allow_changes=True)


# The lock -----------------------------------------------------------------------------

HOLD = """
import sys, time
from psconv_tf.runtime import ownership
from psconv_tf.runtime import run_config
with ownership.claim(sys.argv[1], run_config.KIND):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_second_run_is_refused_while_one_writes_and_not_after_a_kill(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)],
                              stdout=subprocess.PIPE, env=training_helpers.script_env(),
                              cwd=training_helpers.REPO_DIR)
    try:
        assert holder.stdout.readline().strip() == b"holding"
        with pytest.raises(RunFolderInUseError) as error:
            _fit(run_dir)
        assert str(error.value).startswith(
            f"{run_dir} is in use by process {holder.pid} on {socket.gethostname()} (started ")
        assert str(error.value).endswith("; wait for it to end or use another run folder.")
        assert error.value.holder["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Killed, it left its lock file: the next run takes it over.
    assert json.loads((run_dir / run_lock.LOCK_FILE).read_text())["pid"] == holder.pid
    assert _fit(run_dir)["steps_done"] == STEPS
    assert not (run_dir / run_lock.LOCK_FILE).exists()


def test_a_lock_file_alone_is_taken_over_only_from_a_dead_process(tmp_path, monkeypatch):
    """Where there is no flock (gs://): the file is the lock."""
    monkeypatch.setattr(run_lock, "fcntl", None)
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock_file = folder / run_lock.LOCK_FILE
    try:
        for pid, host, taken in ((dead.pid, socket.gethostname(), True),
                                 (alive.pid, socket.gethostname(), False),
                                 (dead.pid, "another-host", False)):
            lock_file.write_text(json.dumps({"pid": pid, "host": host}))
            lock = run_lock.RunLock(folder)
            if taken:
                with lock:
                    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
                assert not lock_file.exists()
            else:
                with pytest.raises(RunFolderInUseError, match=f"in use by process {pid} on "
                                   f"{host} .*if that process is gone, delete {lock_file}"):
                    lock.acquire()
    finally:
        alive.kill()
        alive.wait()


# Finished runs and their time --------------------------------------------------------


def test_a_finished_run_is_left_alone_and_its_seconds_add_up(tmp_path, capsys):
    run_dir = tmp_path / "run"
    first = _fit(run_dir)
    stored = (run_dir / "metrics.json").read_bytes()
    capsys.readouterr()
    assert _fit(run_dir, verbose=1) == first
    output = capsys.readouterr().out
    assert output == (f"{run_dir} is complete (1 epoch, {STEPS} steps): nothing to do. Its "
                      f"model is {run_dir / 'best.keras'}, its metrics "
                      f"{run_dir / 'metrics.json'}.\n")
    assert (run_dir / "metrics.json").read_bytes() == stored
    # Continued, the time counts both processes.
    started = time.monotonic()
    second = _fit(run_dir, recipe=dataclasses.replace(RECIPE, epochs=2), allow_changes=True)
    wall = time.monotonic() - started
    assert first["seconds"] < second["seconds"] <= first["seconds"] + wall + 0.1


def test_the_scripts_name_what_they_train(tmp_path, capsys):
    training_helpers.write_cifar10(str(tmp_path / "cifar"), 32, 8)
    cifar.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--model",
                "cifar_resnet20", "--batch-size", "16", "--epochs", "1", "--seeds", "2",
                "--train-examples", "16", "--run-dir", str(tmp_path / "run"), "--verbose", "2",
                "--strategy", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    for number, seed in enumerate((0, 1), 1):
        assert (f"Seed {seed} ({number} of 2): cifar_resnet20 on cifar10 in "
                f"{tmp_path / 'run' / f'seed_{seed}'}") in lines
    assert sum(line.startswith("cifar_resnet20: best validation top-1") for line in lines) == 2
    training_helpers.write_fashion_mnist(str(tmp_path / "fashion"), 64, 16)
    quick_run.main(["--data-dir", str(tmp_path / "fashion"), "--run-dir",
                    str(tmp_path / "quick"), "--epochs", "1", "--train-examples", "32",
                    "--batch-size", "16", "--verbose", "2", "--models", "cifar_resnet20"])
    assert (f"Training cifar_resnet20 (1 of 1) in {tmp_path / 'quick' / 'cifar_resnet20'}"
            in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize("models, message", [
    ("", "error: --models: names no model; give comma-separated zoo models."),
    (",", "error: --models: names no model; give comma-separated zoo models."),
    ("cifar_resnet20,,resnet18", "error: --models: has an empty name in"),
    ("cifar_resnet20,cifar_resnet20", "error: --models: names cifar_resnet20 twice."),
])
def test_quick_run_needs_models(tmp_path, models, message):
    assert one_line_error(quick_run.main, ["--models", models, "--run-dir",
                                     str(tmp_path / "run")]).startswith(message)
    assert not (tmp_path / "run").exists()
