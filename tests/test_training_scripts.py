"""The training scripts end to end: run folders, resuming, multi-worker, errors."""

import argparse
import json
import os
import signal
import socket
import subprocess
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import training_helpers
from psconv_tf import models
from psconv_tf.training import cli
from psconv_tf.training import configs
from psconv_tf.classification import image_data
from psconv_tf.runtime.run_config import RunConfig
from training_helpers import imagenet_args
from training_helpers import read_json
from training_helpers import read_log

pytestmark = pytest.mark.tensorflow

cifar = training_helpers.load_script("cifar")
imagenet = training_helpers.load_script("imagenet")
quick_run = training_helpers.load_script("quick_run")

# Tiny CIFAR-10 runs: 160 images, batches of 16, 10 steps per epoch.
CIFAR_STEPS_PER_EPOCH = 10


def _cifar_args(data_dir, run_dir, *extra):
    return [str(arg) for arg in (
        "--dataset", "cifar10", "--data-dir", data_dir, "--model", "cifar_resnet20",
        "--batch-size", 16, "--run-dir", run_dir, "--verbose", 0, *extra,
    )]


def _error_message(main, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main, argv)
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


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_run_resumes_at_the_saved_step_and_epoch(tmp_path, signal_number):
    """SIGKILL: the rerun resumes from the last backup. SIGTERM and SIGINT
    (Ctrl-C): the run saves where it is, says so in one line and exits with
    128 + the signal; the rerun resumes there. Meanwhile the run folder is
    locked: a second run is refused, naming the first."""
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
        if signal_number == signal.SIGINT:
            message = _error_message(cifar.main, args)
            assert message.startswith(f"error: --run-dir: {tmp_path / 'run'} is in use by "
                                      f"process {process.pid} on {socket.gethostname()} "), message
        process.send_signal(signal_number)
        output = process.communicate(timeout=60)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    saved = _saved_steps(os.path.join(run_dir, "backup"))
    killed_log = read_log(run_dir)
    assert CIFAR_STEPS_PER_EPOCH < saved < epochs * CIFAR_STEPS_PER_EPOCH
    if signal_number == signal.SIGKILL:
        assert process.returncode == -signal_number
    else:
        assert process.returncode == 128 + signal_number, output[-3000:]
        epoch, step = divmod(saved, CIFAR_STEPS_PER_EPOCH)
        assert output.strip().splitlines()[-1] == (
            f"stopped by {signal_number.name} at epoch {epoch + 1}, step {step}; rerun the "
            "same command to resume"), output[-3000:]
        assert "Traceback" not in output
        assert killed_log[-1]["event"] == "stopped" and killed_log[-1]["steps_done"] == saved

    cifar.main(args)  # the same command again, here
    log = read_log(run_dir)[len(killed_log):]
    epoch, step = divmod(saved, CIFAR_STEPS_PER_EPOCH)
    start = log[0]
    assert start["event"] == "start" and start["resumed"]
    assert (start["steps_done"], start["epoch"], start["step"]) == (saved, epoch, step)
    assert start["optimizer_iterations"] == saved
    # The CIFAR recipe at batch 16: 0.1 * 16 / 128, divided by 10 once (n + 1) / 4 passes
    # 0.49 and 0.74 (the reference code's rule): from epochs 1 and 2 (0-based) of 4.
    drops = sum(saved >= decay_epoch * CIFAR_STEPS_PER_EPOCH for decay_epoch in (1, 2))
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


def test_imagenet_on_class_folders_writes_a_complete_run_dir(tmp_path):
    classes = ("cat", "dog", "fox")
    training_helpers.write_image_tree(str(tmp_path / "data"), "train", classes, 4)
    training_helpers.write_image_tree(str(tmp_path / "data"), "val", classes, 2)
    run_dir = tmp_path / "run"
    metrics = imagenet.main(imagenet_args(tmp_path / "data", run_dir, "--warmup-epochs", 0.5))
    assert metrics["steps_done"] == 12 // 4
    assert {"config.json", "best.keras", "backup", "log.jsonl", "metrics.json"} <= set(
        os.listdir(run_dir))
    config = read_json(run_dir / "config.json")
    assert config["class_names"] == list(classes) and config["num_classes"] == 3
    assert config["image_size"] == 32 and config["preprocessing"]["resize_shorter_side"] == 37
    assert config["recipe"]["weight_decay"] == 1e-4 and config["recipe"]["warmup_epochs"] == 0.5
    # config.json rebuilds the model that best.keras holds.
    best = keras.models.load_model(run_dir / "best.keras", compile=False)
    rebuilt = models.get(config["model"],
                         **RunConfig.from_dict(config).model_arguments())
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
    message = _error_message(imagenet.main, imagenet_args(
        tmp_path / "data", run_dir, "--model", "cifar_resnet56"))
    assert message.startswith(f"error: --run-dir: {run_dir} holds a run with other settings")
    assert "model: 'cifar_resnet20' -> 'cifar_resnet56'" in message


def test_imagenet_on_mock_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        metrics = imagenet.main(imagenet_args(
            tmp_path, tmp_path / "run", "--source", "tfds", "--steps-per-epoch", 2))
        source = image_data.tfds_source("imagenet2012", "validation", str(tmp_path))
        batches = list(image_data.imagenet_input(source, False, 32, 4)(
            tf.distribute.InputContext()))
    assert metrics["steps_done"] == 2
    assert read_json(tmp_path / "run" / "config.json")["num_classes"] == 1000
    # The final figures are those of the model (one epoch: best.keras) on the
    # 8 validation images, computed here with numpy.
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    assert len(labels) == 8
    best = keras.saving.load_model(tmp_path / "run" / "best.keras")
    logits = np.asarray(best.predict(images, verbose=0), np.float64)
    ranks = (logits > logits[np.arange(8), labels][:, None]).sum(axis=1)
    log_softmax = logits - logits.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    final = metrics["final"]
    assert final["top1"] == pytest.approx(np.mean(ranks == 0))
    assert final["top5"] == pytest.approx(np.mean(ranks < 5))
    assert final["loss"] == pytest.approx(-log_softmax[np.arange(8), labels].mean(), rel=1e-4)


def _cifar_data(tmp_path):
    training_helpers.write_cifar10(str(tmp_path / "cifar"), 32, 8)
    return tmp_path / "cifar"


def _image_data(tmp_path):
    training_helpers.write_image_tree(str(tmp_path / "images"), "train", ("cat",), 2)
    training_helpers.write_image_tree(str(tmp_path / "images"), "val", ("cat",), 1)
    return tmp_path / "images"


def _broken_run_folder(tmp_path):
    """A run folder with a backup and a config.json that is not JSON."""
    data = _image_data(tmp_path)
    imagenet.main(imagenet_args(data, tmp_path / "run", "--steps-per-epoch", 1))
    (tmp_path / "run" / "config.json").write_text('{"model": ')
    return data


# (script, setup(tmp_path) -> data folder, extra arguments, message start).
BAD_INPUT = {
    "unknown-model": ("cifar", _cifar_data, ["--model", "resnet9000"],
                      "error: --model: unknown model 'resnet9000'; choose from"),
    "missing-data": ("imagenet", lambda tmp_path: tmp_path / "missing", [],
                     "error: --data-dir: no folder {tmp_path}/missing."),
    "no-tpu": ("imagenet", lambda tmp_path: tmp_path, ["--strategy", "tpu", "--tpu", "no-such-tpu"],
               "error: --tpu: no TPU answered at 'no-such-tpu'"),
    "pattern-3": ("cifar", _cifar_data, ["--model", "ps_cifar_resnet20", "--pattern", "1,2,3"],
                  "error: --pattern: ps_cifar_resnet20 cannot be built with pattern=[1, 2, 3]"),
    "pattern-0": ("cifar", _cifar_data, ["--model", "ps_cifar_resnet20", "--pattern", "0,2"],
                  "error: --pattern: Argument `pattern` must be a non-empty sequence of positive"),
    "run-dir-file": ("cifar", _cifar_data, ["--run-dir", "{tmp_path}/cifar/test_batch"],
                     "error: --run-dir: {tmp_path}/cifar/test_batch is a file, not a folder."),
    "broken-config": ("imagenet", _broken_run_folder, ["--steps-per-epoch", 1],
                      "error: --run-dir: {tmp_path}/run/config.json is not valid JSON"),
    "replay-missing": ("cifar", _cifar_data, ["--config", "{tmp_path}/none.json"],
                       "error: --config: no file {tmp_path}/none.json."),
    "decay-cosine": ("imagenet", _image_data, ["--decay-epochs", "2"],
                     "error: --decay-epochs: applies to --schedule step only."),
    "warmup-step": ("cifar", _cifar_data, ["--warmup-epochs", "1"],
                    "error: --warmup-epochs: applies to the cosine schedule only."),
}


@pytest.mark.parametrize("case", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_gets_a_one_line_message(tmp_path, case):
    script, setup, extra, expected = case
    data_dir = setup(tmp_path)
    extra = [str(arg).format(tmp_path=tmp_path) for arg in extra]
    if script == "cifar":
        message = _error_message(cifar.main, _cifar_args(data_dir, tmp_path / "run", *extra))
    else:
        message = _error_message(imagenet.main, imagenet_args(data_dir, tmp_path / "run", *extra))
    assert message.startswith(expected.format(tmp_path=tmp_path)), message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("flag, value", [
    ("--learning-rate", "nan"), ("--learning-rate", "inf"), ("--weight-decay", "nan"),
    ("--momentum", "-inf"), ("--learning-rate", "1e999"), ("--warmup-epochs", "nan"),
])
def test_non_finite_arguments_are_refused(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        cifar.main(_cifar_args(tmp_path, tmp_path / "run", f"{flag}={value}"))
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be a finite number, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        cifar.main(["--dataset", "svhn"])
    assert "argument --dataset: invalid choice: 'svhn'" in capsys.readouterr().err


def test_missing_quick_run_data_says_how_to_get_it(tmp_path):
    message = _error_message(quick_run.main, ["--data-dir", str(_cifar_data(tmp_path))])
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
        if action.help == argparse.SUPPRESS:  # a flag of an earlier release, refused
            continue
        for option in action.option_strings:
            assert option in text
        assert action.help, f"{action.option_strings} has no help"
    if script is imagenet:
        assert "downloads/manual" in text and "train/<class>" in text


def test_resume_refuses_other_settings_and_says_where_it_resumes(tmp_path, capsys):
    training_helpers.write_cifar10(str(tmp_path / "data"))
    base = _cifar_args(tmp_path / "data", tmp_path / "run", "--epochs", 1, "--strategy", "cpu")
    cifar.main(base)
    config_path = tmp_path / "run" / "seed_0" / "config.json"
    stored = config_path.read_bytes()

    message = _error_message(cifar.main, base + ["--batch-size", "8", "--momentum", "0.5"])
    assert message.startswith(f"error: --run-dir: {tmp_path / 'run' / 'seed_0'} holds a run "
                              "with other settings (stored -> given): ")
    assert "recipe.batch_size: 16 -> 8" in message and "recipe.momentum: 0.9 -> 0.5" in message
    assert f"--config {config_path}" in message
    message = _error_message(cifar.main, base + ["--epochs", "2"])
    assert "recipe.epochs: 1 -> 2" in message and "--allow-changes" in message
    assert config_path.read_bytes() == stored  # refused runs write nothing

    capsys.readouterr()
    summary = cifar.main(base + ["--epochs", "2", "--allow-changes", "--verbose", "2"])
    output = capsys.readouterr().out
    assert f"Resuming {tmp_path / 'run' / 'seed_0'} at epoch 2, step 0 (10 steps done)." in output
    assert read_json(tmp_path / "run" / "seed_0" / "metrics.json")["steps_done"] == 20
    assert read_json(config_path)["recipe"]["epochs"] == 2
    assert summary["seeds"] == [0]


def test_config_replays_a_run_with_overrides(tmp_path):
    training_helpers.write_cifar10(str(tmp_path / "data"))
    cifar.main(_cifar_args(tmp_path / "data", tmp_path / "first", "--epochs", 1,
                           "--learning-rate", 0.05, "--nesterov", "--train-examples", 64,
                           "--strategy", "cpu"))
    first = RunConfig.from_dict(read_json(tmp_path / "first" / "seed_0" / "config.json"))
    replayed = cli.parse_args(cifar.build_parser(), ["--config", str(
        tmp_path / "first" / "seed_0" / "config.json")], "cifar")
    replayed = RunConfig.from_dict({**first.to_dict(), "arguments": cli.replay_arguments(replayed)})
    assert replayed.to_dict()["arguments"] == first.to_dict()["arguments"]  # in JSON terms
    cifar.main(["--config", str(tmp_path / "first" / "seed_0" / "config.json"),
                "--run-dir", str(tmp_path / "third"), "--verbose", "0", "--epochs", "2"])
    third = RunConfig.from_dict(read_json(tmp_path / "third" / "seed_0" / "config.json"))
    assert first.differences(third) == [("recipe.decay_epochs", [], [1]),
                                        ("recipe.epochs", 1, 2)]
    message = _error_message(imagenet.main, ["--config", str(tmp_path / "first" / "seed_0" /
                                                             "config.json")])
    assert message.startswith("error: --config: ") and "was written by cifar, not by imagenet" in message


def test_seeds_report_final_and_best_error(tmp_path):
    training_helpers.write_cifar10(str(tmp_path / "data"))
    summary = cifar.main(_cifar_args(tmp_path / "data", tmp_path / "run", "--epochs", 2,
                                     "--seeds", 2, "--train-examples", 32, "--strategy", "cpu"))
    for kind, key in (("final", lambda m: m["final"]["top1"]),
                      ("best", lambda m: m["best"]["val_top1"])):
        errors = [100 * (1 - key(read_json(tmp_path / "run" / f"seed_{seed}" / "metrics.json")))
                  for seed in (0, 1)]
        reported = summary[f"{kind}_top1_error_percent"]
        np.testing.assert_allclose(reported["values"], errors)
        np.testing.assert_allclose(reported["mean"], (errors[0] + errors[1]) / 2)
        np.testing.assert_allclose(reported["std"], abs(errors[0] - errors[1]) / 2**0.5)
    config = read_json(tmp_path / "run" / "seed_1" / "config.json")
    assert config["recipe"]["nesterov"] is True and config["seed"] == 1


def test_default_run_folder_is_per_model(tmp_path, monkeypatch):
    data = _image_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [arg for arg in imagenet_args(data, "x", "--steps-per-epoch", 1)]
    run_dir_at = args.index("--run-dir")
    del args[run_dir_at: run_dir_at + 2]
    imagenet.main(args)
    assert os.listdir(tmp_path / "runs") == ["cifar_resnet20"]
    assert "metrics.json" in os.listdir(tmp_path / "runs" / "cifar_resnet20")


@pytest.mark.parametrize("arguments, schedule, decay_epochs", [
    ([], "cosine", []),
    (["--schedule", "step"], "step", [30, 60, 90]),
    (["--schedule", "step", "--decay-epochs", "40,80", "--decay-factor", "0.5"], "step", [40, 80]),
], ids=["cosine", "step-default", "step-given"])
def test_imagenet_schedules(tmp_path, arguments, schedule, decay_epochs):
    args = imagenet.build_parser().parse_args(["--data-dir", str(tmp_path), *arguments])
    recipe = cli.recipe_from_args(configs.IMAGENET, args, imagenet._decay_epochs)
    assert (recipe.schedule, list(recipe.decay_epochs)) == (schedule, decay_epochs)
    assert recipe.epochs == 120 and recipe.nesterov is False


def test_undecodable_images_are_skipped_counted_and_listed(tmp_path, capsys):
    data = _image_data(tmp_path)
    bad_train = data / "train" / "cat" / "truncated.jpg"
    bad_train.write_bytes((data / "train" / "cat" / "0.jpg").read_bytes()[:300])
    bad_val = data / "val" / "cat" / "text.jpg"
    bad_val.write_bytes(b"not a JPEG")
    metrics = imagenet.main(imagenet_args(data, tmp_path / "run", "--steps-per-epoch", 2,
                                           "--batch-size", 1, "--epochs", 2))
    assert metrics["skipped_images"] == {"train": {"count": 1, "files": [str(bad_train)]},
                                         "eval": {"count": 1, "files": [str(bad_val)]}}
    assert read_json(tmp_path / "run" / "metrics.json")["skipped_images"] == metrics["skipped_images"]
    skipped = {(record["split"], record["file"]) for record in read_log(tmp_path / "run")
               if record["event"] == "skipped_image"}
    assert skipped == {("train", str(bad_train)), ("eval", str(bad_val))}

    capsys.readouterr()
    imagenet.main(imagenet_args(data, tmp_path / "checked", "--steps-per-epoch", 1,
                                 "--check-images"))
    output = capsys.readouterr().out
    assert f"train: 1 of 3 images cannot be decoded\n  {bad_train}" in output
    assert f"val: 1 of 2 images cannot be decoded\n  {bad_val}" in output
    # Skipped before training, they count as skipped.
    checked = read_json(tmp_path / "checked" / "metrics.json")["skipped_images"]
    assert checked == {"train": {"count": 1, "files": [str(bad_train)]},
                       "eval": {"count": 1, "files": [str(bad_val)]}}


def test_diverging_run_exits_with_an_error_and_saves_nothing(tmp_path):
    training_helpers.write_cifar10(str(tmp_path / "data"))
    args = _cifar_args(tmp_path / "data", tmp_path / "run", "--epochs", 1,
                       "--learning-rate", "1e30", "--strategy", "cpu")
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(cifar.main, args)
    assert str(exit_info.value.code).startswith("error: the training loss became ")
    assert "Lower the learning rate" in str(exit_info.value.code)
    assert not (tmp_path / "run" / "seed_0" / "best.keras").exists()
    assert not (tmp_path / "run" / "seed_0" / "metrics.json").exists()


def test_scripts_run_from_any_folder_without_path_setup(tmp_path):
    for script in ("imagenet.py",):  # the three scripts import alike
        result = subprocess.run(training_helpers.script_command(script, "--help"),
                                cwd=tmp_path, env=training_helpers.script_env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "--config" in result.stdout


def test_dynamic_run_logs_rate_shares_and_exports_frozen(tmp_path):
    """A dps_ model trains through the library: TensorBoard gets each layer's
    rate shares every epoch, and the export command writes its frozen twin
    (the SavedModel holds every variable but the latent mask factors)."""
    from psconv_tf import export

    training_helpers.write_fashion_mnist(str(tmp_path / "data"), 64, 32)
    quick_run.main([str(arg) for arg in (
        "--data-dir", tmp_path / "data", "--run-dir", tmp_path / "run", "--epochs", 1,
        "--train-examples", 32, "--batch-size", 16, "--verbose", 0,
        "--models", "dps_cifar_resnet20")])
    run_dir = tmp_path / "run" / "dps_cifar_resnet20"
    tags = set()
    for path in run_dir.glob("**/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    shares = {tag for tag in tags if tag.startswith("rate_share/")}
    assert any(tag.endswith("/rate_1") for tag in shares), sorted(tags)
    assert any(tag.endswith("/rate_2") for tag in shares), sorted(tags)
    paths = export.export(str(run_dir), str(tmp_path / "out"), formats=["saved_model"])
    saved = os.path.join(paths["saved_model"], "variables", "variables")
    saved_count = sum(name.startswith("_all_variables/")
                      for name, _ in tf.train.list_variables(saved))
    dynamic = keras.saving.load_model(run_dir / "best.keras")
    factors = [v for v in dynamic.variables if "mask_factor" in v.path]
    assert factors and saved_count == len(dynamic.variables) - len(factors)
