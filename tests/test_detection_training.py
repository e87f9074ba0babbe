"""training/coco.py through the one Trainer: the run contract of every
training script (a rerun with other settings refused naming them, a kill
resumed mid-epoch, --config replays, --eval-only), the 1x schedule."""

import dataclasses
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

import training_helpers
from training_helpers import one_line_error
from psconv_tf.detection import synthetic
from psconv_tf.training import cli
from psconv_tf.training import configs
from psconv_tf.training import schedules
from psconv_tf.runtime.run_config import RunConfig
from training_helpers import read_json
from training_helpers import read_log

pytestmark = pytest.mark.tensorflow

coco = training_helpers.load_script("coco")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny generated COCO data set: {split: (annotations, images, masks)}."""
    return synthetic.generate(tmp_path_factory.mktemp("shapes"), train_images=4,
                              val_images=2, image_size=64, min_size=8, max_size=30)


def _data_args(shapes, training=True):
    (train_json, train_dir, _), (val_json, val_dir, _) = shapes["train"], shapes["val"]
    data = ["--annotations", train_json, "--images", train_dir] if training else []
    return [str(arg) for arg in (*data, "--val-annotations", val_json, "--val-images", val_dir)]


def _args(shapes, run_dir, *extra):
    return _data_args(shapes) + [str(arg) for arg in (
        "--model", "resnet18", "--min-size", 64, "--max-size", 64, "--batch-size", 2,
        "--epochs", 1, "--steps-per-epoch", 1, "--head-convs", 1, "--strategy", "cpu",
        "--verbose", 0, "--run-dir", run_dir, *extra)]



@pytest.fixture(scope="module")
def finished(shapes, tmp_path_factory):
    """A finished one-step run: (its arguments, its folder)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    args = _args(shapes, run_dir)
    coco.main(args)
    return args, run_dir


def test_a_rerun_with_other_settings_is_refused_naming_them(finished):
    args, run_dir = finished
    before = {name: (run_dir / name).read_bytes()
              for name in ("best.keras", "metrics.json", "config.json")}
    message = one_line_error(coco.main, args + ["--batch-size", "1", "--head-convs", "2"])
    assert message.startswith(f"error: --run-dir: {run_dir} holds a run with other settings "
                              "(stored -> given): "), message
    assert "recipe.batch_size: 2 -> 1" in message and "extras.head_convs: 1 -> 2" in message
    assert f"--config {run_dir / 'config.json'}" in message
    assert before == {name: (run_dir / name).read_bytes() for name in before}


def test_config_replays_the_run(finished, capsys):
    args, run_dir = finished
    config_path = run_dir / "config.json"
    first = RunConfig.from_dict(read_json(config_path))
    assert first.script == "coco" and first.extras["min_size"] == 64
    replayed = cli.parse_args(coco.build_parser(), ["--config", str(config_path)], "coco")
    assert cli.replay_arguments(replayed) == {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in first.arguments.items()}
    # The same run, from its config.json alone: nothing to do, nothing rewritten.
    before = (run_dir / "best.keras").read_bytes(), (run_dir / "metrics.json").read_bytes()
    capsys.readouterr()
    coco.main(["--config", str(config_path), "--verbose", "1"])
    assert f"{run_dir} is complete (1 epoch, 1 steps): nothing to do" in capsys.readouterr().out
    assert before == ((run_dir / "best.keras").read_bytes(),
                      (run_dir / "metrics.json").read_bytes())
    # An override is refused as any other change.
    message = one_line_error(coco.main, ["--config", str(config_path), "--min-size", "48"])
    assert "extras.min_size: 64 -> 48" in message


def test_eval_only_needs_the_validation_data_alone(finished, shapes, capsys):
    args, run_dir = finished
    before = sorted(os.listdir(run_dir)), (run_dir / "metrics.json").read_bytes()
    capsys.readouterr()
    results = coco.main(_data_args(shapes, training=False) + [
        "--min-size", "64", "--max-size", "64", "--run-dir", str(run_dir), "--eval-only"])
    assert set(results) == {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("box AP ")
    assert before == (sorted(os.listdir(run_dir)), (run_dir / "metrics.json").read_bytes())


def _saved_steps(backup_dir):
    reader = tf.train.load_checkpoint(str(backup_dir))
    return int(reader.get_tensor("steps_done/.ATTRIBUTES/VARIABLE_VALUE"))


def test_a_killed_run_resumes_mid_epoch(shapes, tmp_path):
    """SIGKILL after a backup inside the first epoch: the same command
    resumes at that step, at the learning rate of that step, and ends after
    exactly epochs x steps optimizer steps, as an uninterrupted run."""
    steps, epochs = 4, 2
    run_dir = tmp_path / "run"
    args = _args(shapes, run_dir)
    args[args.index("--steps-per-epoch") + 1] = str(steps)
    args[args.index("--epochs") + 1] = str(epochs)
    args += ["--backup-every", "2", "--warmup-steps", "5"]
    process = subprocess.Popen(
        training_helpers.script_command("coco.py", *args), env=training_helpers.script_env(),
        cwd=training_helpers.REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            log = run_dir / "log.jsonl"
            if log.exists() and any('"event": "backup"' in line
                                    for line in log.read_text().splitlines()):
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        output = process.communicate(timeout=60)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, output[-3000:]
    saved = _saved_steps(run_dir / "backup")
    assert saved == 2, saved  # mid-epoch, not at an epoch's end
    killed_log = read_log(run_dir)
    assert not (run_dir / "metrics.json").exists()

    metrics = coco.main(args)  # the same command again
    log = read_log(run_dir)[len(killed_log):]
    start = log[0]
    assert start["event"] == "start" and start["resumed"]
    assert (start["steps_done"], start["epoch"], start["step"]) == (2, 0, 2)
    assert start["optimizer_iterations"] == 2
    # Learning rate 0.01 x 2 / 16, in its warm-up from 1/3 x over 5 steps.
    np.testing.assert_allclose(start["learning_rate"],
                               0.01 * 2 / 16 * (1 / 3 + 2 / 3 * 2 / 5), rtol=1e-5)
    epoch_records = [record for record in log if record["event"] == "epoch"]
    assert [record["steps"] for record in epoch_records] == [steps - 2, steps]
    assert epoch_records[-1]["steps_done"] == epoch_records[-1]["optimizer_iterations"] \
        == epochs * steps
    assert metrics["steps_done"] == epochs * steps
    stored = json.loads((run_dir / "metrics.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}"))
    assert stored["steps_done"] == epochs * steps and stored["monitor"] == "AP"


# The 1x schedule -------------------------------------------------------------------


@pytest.mark.parametrize("epochs, milestones", [
    (12, (8, 11)), (24, (16, 22)), (6, (4, 5)), (3, (2,)), (1, ())])
def test_the_1x_milestones_scale_with_the_epochs(epochs, milestones):
    # 8 and 11 of 12 epochs: 8/12 and 11/12 of them, rounded down; 24 epochs
    # give mmdet's 2x schedule (16, 22).
    args = coco.build_parser().parse_args(["--epochs", str(epochs)])
    recipe = cli.recipe_from_args(configs.COCO_1X, args, coco._decay_epochs)
    assert recipe.decay_epochs == milestones
    assert schedules.scaled_milestones((8, 11), 12, epochs) == milestones


def test_the_1x_schedule_of_a_short_run():
    """--epochs 2 at batch 8, 10 steps per epoch, warm-up over 500 steps:
    computed by hand, 0.01 x 8 / 16 = 0.005, x (1/3 + 2/3 t / 500)
    while warming up, / 10 from epoch 1 (8 x 2 // 12 = 1), step 10."""
    args = coco.build_parser().parse_args(["--epochs", "2", "--batch-size", "8"])
    recipe = cli.recipe_from_args(configs.COCO_1X, args, coco._decay_epochs)
    rate = schedules.learning_rate_schedule(recipe, 10)
    for step, expected in ((0, 0.005 / 3), (9, 0.005 * (1 / 3 + 2 / 3 * 9 / 500)),
                           (10, 0.0005 * (1 / 3 + 2 / 3 * 10 / 500)),
                           (19, 0.0005 * (1 / 3 + 2 / 3 * 19 / 500))):
        assert float(rate(step)) == pytest.approx(expected, rel=1e-5), step
    no_warmup = dataclasses.replace(recipe, warmup_steps=0)
    assert [float(schedules.learning_rate_schedule(no_warmup, 10)(step))
            for step in (9, 10)] == pytest.approx([0.005, 0.0005])


def test_a_run_folder_of_the_earlier_detection_loop_is_refused(shapes, tmp_path):
    """The earlier release's folders (final.keras, results.json, a per-epoch
    Keras backup) cannot be resumed step-wise: refused, not retrained over."""
    from psconv_tf.runtime import ownership

    earlier = ownership.Kind("coco detection",
                             entries=("backup", "final.keras", "results.json", "workers"),
                             owned_folders=("backup",), peers="workers")
    run_dir = tmp_path / "run"
    with ownership.claim(run_dir, earlier):
        (run_dir / "final.keras").write_text("the earlier run's model")
    message = one_line_error(coco.main, _args(shapes, run_dir))
    assert message == (f"error: --run-dir: {run_dir} is a coco detection run folder, not a "
                       "detection one; use another folder.")
    assert (run_dir / "final.keras").read_text() == "the earlier run's model"
