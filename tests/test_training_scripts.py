"""The training scripts end to end: run folders, resuming, multi-worker, errors."""

import json
import os
import signal
import subprocess
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import training_helpers
from training_helpers import read_json
from training_helpers import read_log

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow backend only"
)

import cifar  # noqa: E402  (training/, put on sys.path by training_helpers)
import imagenet  # noqa: E402
import quick_run  # noqa: E402
import train_lib  # noqa: E402
from psconv_tf import models  # noqa: E402

# Tiny CIFAR-10 runs: 160 images, batches of 16, 10 steps per epoch.
CIFAR_STEPS_PER_EPOCH = 10


def _cifar_args(data_dir, run_dir, *extra):
    return [str(arg) for arg in (
        "--dataset", "cifar10", "--data-dir", data_dir, "--model", "cifar_resnet20",
        "--batch-size", 16, "--run-dir", run_dir, "--verbose", 0, *extra,
    )]


def _error_message(main, argv):
    with pytest.raises(SystemExit) as exit_info:
        train_lib.run_main(main, argv)
    return str(exit_info.value.code)


def _saved_steps(backup_dir):
    """steps_done of the latest backup, read from the checkpoint file itself."""
    reader = tf.train.load_checkpoint(str(backup_dir))
    return int(reader.get_tensor("steps_done/.ATTRIBUTES/VARIABLE_VALUE"))


def _wait_for_backup(process, run_dir, min_steps, timeout=150):
    """Waits until the run's log shows a backup after `min_steps` steps."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(os.path.join(run_dir, "log.jsonl")):
            if any(record["event"] == "backup" and record["steps_done"] > min_steps
                   for record in read_log(run_dir)):
                return
        assert process.poll() is None, process.communicate()[0].decode()
        time.sleep(0.02)
    raise AssertionError("no backup in time")


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_at_the_saved_step_and_epoch(tmp_path, signal_number):
    training_helpers.write_cifar10(str(tmp_path / "data"))
    epochs = 4
    args = _cifar_args(tmp_path / "data", tmp_path / "run", "--epochs", epochs,
                       "--backup-every", 3, "--strategy", "cpu")
    run_dir = str(tmp_path / "run" / "seed_0")
    process = subprocess.Popen(
        training_helpers.script_command("cifar.py", *args), env=training_helpers.script_env(),
        cwd=training_helpers.REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        # Kill it in its second epoch, after a backup that is not at an epoch's end.
        _wait_for_backup(process, run_dir, CIFAR_STEPS_PER_EPOCH)
        process.send_signal(signal_number)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal_number
    saved = _saved_steps(os.path.join(run_dir, "backup"))
    killed_log = read_log(run_dir)
    assert CIFAR_STEPS_PER_EPOCH < saved < epochs * CIFAR_STEPS_PER_EPOCH

    cifar.main(args)  # the same command again, here
    log = read_log(run_dir)[len(killed_log):]
    epoch, step = divmod(saved, CIFAR_STEPS_PER_EPOCH)
    start = log[0]
    assert start["event"] == "start" and start["resumed"]
    assert (start["steps_done"], start["epoch"], start["step"]) == (saved, epoch, step)
    assert start["optimizer_iterations"] == saved
    # The CIFAR recipe at batch 16: 0.1 * 16 / 128, divided by 10 at epochs 2 and 3 of 4.
    drops = sum(saved >= decay_epoch * CIFAR_STEPS_PER_EPOCH for decay_epoch in (2, 3))
    np.testing.assert_allclose(start["learning_rate"], 0.1 * 16 / 128 * 0.1**drops, rtol=1e-6)
    epoch_records = [record for record in log if record["event"] == "epoch"]
    assert [record["completed_epoch"] for record in epoch_records] == list(range(epoch, epochs))
    assert [record["steps"] for record in epoch_records] == (
        [CIFAR_STEPS_PER_EPOCH - step] + [CIFAR_STEPS_PER_EPOCH] * (epochs - epoch - 1))
    last = epoch_records[-1]
    assert last["steps_done"] == last["optimizer_iterations"] == epochs * CIFAR_STEPS_PER_EPOCH
    killed_epochs = {record["completed_epoch"] for record in killed_log if record["event"] == "epoch"}
    assert set(range(epoch)) <= killed_epochs
    assert read_json(os.path.join(run_dir, "metrics.json"))["steps_done"] == last["steps_done"]


def test_multiworker_training_on_two_local_workers(tmp_path):
    training_helpers.write_cifar10(str(tmp_path / "data"))
    args = _cifar_args(tmp_path / "data", tmp_path / "run", "--epochs", 1,
                       "--train-examples", 64, "--strategy", "multiworker")
    cluster = {"worker": [f"127.0.0.1:{training_helpers.free_port()}" for _ in range(2)]}
    processes = [
        subprocess.Popen(
            training_helpers.script_command("cifar.py", *args),
            env=training_helpers.script_env(TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}})),
            cwd=training_helpers.REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for index in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=180)[0].decode() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
    chief_dir = tmp_path / "run" / "seed_0"
    worker_dir = chief_dir / "workers" / "worker_1"
    chief, worker = (read_json(folder / "metrics.json") for folder in (chief_dir, worker_dir))
    assert chief["steps_done"] == worker["steps_done"] == 64 // 16
    assert chief["final"] == worker["final"]  # metrics aggregated over both workers
    assert read_json(chief_dir / "config.json")["replicas"] == 2
    chief_model, worker_model = (keras.models.load_model(folder / "best.keras", compile=False)
                                 for folder in (chief_dir, worker_dir))
    for a, b in zip(chief_model.trainable_weights, worker_model.trainable_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _write_image_tree(folder, split, classes, count):
    for index, name in enumerate(classes):
        os.makedirs(os.path.join(folder, split, name))
        for number in range(count):
            image = np.random.default_rng(index * 100 + number).integers(
                0, 256, (36 + number, 44, 3), dtype=np.uint8)
            tf.io.write_file(os.path.join(folder, split, name, f"{number}.jpg"),
                             tf.io.encode_jpeg(image))


def _imagenet_args(data_dir, run_dir, *extra):
    return [str(arg) for arg in (
        "--data-dir", data_dir, "--model", "cifar_resnet20", "--image-size", 32,
        "--batch-size", 4, "--epochs", 1, "--run-dir", run_dir, "--strategy", "cpu",
        "--verbose", 0, *extra,
    )]


def test_imagenet_on_class_folders_writes_a_complete_run_dir(tmp_path):
    classes = ("cat", "dog", "fox")
    _write_image_tree(str(tmp_path / "data"), "train", classes, 4)
    _write_image_tree(str(tmp_path / "data"), "val", classes, 2)
    run_dir = tmp_path / "run"
    metrics = imagenet.main(_imagenet_args(tmp_path / "data", run_dir, "--warmup-epochs", 0.5))
    assert metrics["steps_done"] == 12 // 4
    assert {"config.json", "best.keras", "backup", "log.jsonl", "metrics.json"} <= set(
        os.listdir(run_dir))
    config = read_json(run_dir / "config.json")
    assert config["class_names"] == list(classes) and config["num_classes"] == 3
    assert config["image_size"] == 32 and config["preprocessing"]["resize_shorter_side"] == 37
    assert config["recipe"]["weight_decay"] == 1e-4 and config["recipe"]["warmup_epochs"] == 0.5
    # config.json rebuilds the model that best.keras holds.
    best = keras.models.load_model(run_dir / "best.keras", compile=False)
    rebuilt = models.get(config["model"], **config["model_kwargs"])
    rebuilt.set_weights(best.get_weights())
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(rebuilt.predict(images, verbose=0),
                               best.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    epochs = [record for record in read_log(run_dir) if record["event"] == "epoch"]
    assert metrics["best"]["val_top1"] == max(record["val_top1"] for record in epochs)
    # TensorBoard's event files hold the figures of log.jsonl.
    logged = {}
    for path in tf.io.gfile.glob(str(run_dir / "logs" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                logged[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    last = epochs[-1]
    assert logged[("val_top1", last["steps_done"])] == pytest.approx(last["val_top1"])
    assert logged[("loss", last["steps_done"])] == pytest.approx(last["loss"])
    message = _error_message(imagenet.main, _imagenet_args(
        tmp_path / "data", run_dir, "--model", "cifar_resnet56"))
    assert "holds the backup of another model" in message


def test_imagenet_on_mock_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        metrics = imagenet.main(_imagenet_args(
            tmp_path, tmp_path / "run", "--source", "tfds", "--steps-per-epoch", 2))
    assert metrics["steps_done"] == 2
    assert read_json(tmp_path / "run" / "config.json")["num_classes"] == 1000
    assert 0 <= metrics["final"]["top1"] <= 1


def test_bad_input_gets_a_clear_message(tmp_path, capsys):
    training_helpers.write_cifar10(str(tmp_path / "cifar"), 32, 8)
    message = _error_message(cifar.main, _cifar_args(tmp_path / "cifar", tmp_path / "run",
                                                     "--model", "resnet9000"))
    assert message.startswith("error: --model: unknown model 'resnet9000'; choose from")
    assert "ps_resnet50" in message

    with pytest.raises(SystemExit):
        cifar.main(["--dataset", "svhn"])
    assert "argument --dataset: invalid choice: 'svhn'" in capsys.readouterr().err

    message = _error_message(imagenet.main, _imagenet_args(tmp_path / "missing", tmp_path / "run"))
    assert message == f"error: --data-dir: no folder {tmp_path / 'missing'}."

    message = _error_message(imagenet.main, _imagenet_args(
        tmp_path, tmp_path / "run", "--strategy", "tpu", "--tpu", "no-such-tpu"))
    assert message.startswith("error: --strategy tpu: no TPU answered at --tpu 'no-such-tpu'")

    _write_image_tree(str(tmp_path / "images"), "train", ("cat",), 2)
    _write_image_tree(str(tmp_path / "images"), "val", ("cat",), 1)
    (tmp_path / "images" / "val" / "cat" / "broken.jpg").write_bytes(b"not a JPEG")
    message = _error_message(imagenet.main, _imagenet_args(
        tmp_path / "images", tmp_path / "run_corrupt", "--steps-per-epoch", 1))
    assert message.startswith("error: the input pipeline failed")
    assert "Corrupt image file" in message and "broken.jpg" in message

    message = _error_message(quick_run.main, ["--data-dir", str(tmp_path / "cifar")])
    assert "No fashion_mnist data found" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_quick_run_prints_both_accuracies(tmp_path, capsys):
    training_helpers.write_fashion_mnist(str(tmp_path / "data"), 256, 64)
    summary = quick_run.main([str(arg) for arg in (
        "--data-dir", tmp_path / "data", "--run-dir", tmp_path / "run", "--epochs", 1,
        "--train-examples", 64, "--batch-size", 32, "--verbose", 0)])
    output = capsys.readouterr().out
    assert set(summary["results"]) == {"ps_cifar_resnet20", "cifar_resnet20"}
    assert summary["test_examples"] == 64 and summary["train_examples"] == 64
    for name, result in summary["results"].items():
        assert f"| {name} | {100 * result['test_top1']:.2f} % |" in output
        assert read_json(tmp_path / "run" / name / "config.json")["image_size"] == 28
    assert read_json(tmp_path / "run" / "quick_run.json") == summary


@pytest.mark.parametrize("script", [imagenet, cifar, quick_run])
def test_help_documents_every_flag(script):
    parser = script.build_parser()
    text = parser.format_help()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text
        assert action.help, f"{action.option_strings} has no help"
    if script is imagenet:
        assert "downloads/manual" in text and "train/<class>" in text
