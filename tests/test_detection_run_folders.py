"""training/coco.py's and the segmentation example's folders and arguments:
other files refused and left alone, the lock, one-line errors, stopping."""

import os

import keras
import pytest

import training_helpers
from psconv_tf.detection import task
from psconv_tf.detection import segmentation
from psconv_tf.detection import synthetic
from psconv_tf.training import cli
from psconv_tf.runtime import ownership
from psconv_tf.runtime.errors import NotARunFolderError
from psconv_tf.runtime.errors import RunFolderInUseError

pytestmark = pytest.mark.tensorflow

coco = training_helpers.load_script("coco")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny generated COCO data set: {split: (annotations, images, masks)}."""
    return synthetic.generate(tmp_path_factory.mktemp("shapes"), train_images=2,
                              val_images=2, image_size=64, min_size=8, max_size=30)


def _args(shapes, run_dir, *extra):
    (train_json, train_dir, _), (val_json, val_dir, _) = shapes["train"], shapes["val"]
    return [str(arg) for arg in (
        "--annotations", train_json, "--images", train_dir, "--val-annotations", val_json,
        "--val-images", val_dir, "--model", "resnet18", "--min-size", 64, "--max-size", 64,
        "--batch-size", 2, "--epochs", 1, "--steps-per-epoch", 1,
        "--head-convs", 1, "--strategy", "cpu", "--run-dir", run_dir, *extra)]


def _message(main, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main, argv)
    message = str(exit_info.value.code)
    assert "\n" not in message and "Traceback" not in message
    return message


def _snapshot(folder):
    return {os.path.relpath(os.path.join(root, name), folder):
            open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def test_a_folder_of_other_files_is_refused_before_the_data_is_read(tmp_path, shapes):
    project = tmp_path / "project"
    for name in ("notes_temp", "draft.tmp-1", "checkpoint.tmp", "model.tempstate1",
                 "code/ckpt_temp", "results_temp/a.txt"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("mine")
    before = _snapshot(project)
    # The annotation file is missing: refused for the folder, first.
    args = _args(shapes, project)
    args[args.index("--annotations") + 1] = str(tmp_path / "missing.json")
    assert _message(coco.main, args) == (
        f"error: --run-dir: {project} holds 6 files or folders and is not a run folder of "
        "psconv-tf (it has no psconv_run.json); give a new or empty folder, or pass "
        "--force-run-dir to add this run's files among them.")
    assert _snapshot(project) == before


@pytest.mark.parametrize("extra, message", [
    (["--frozen-stages", "99"],
     "error: --frozen-stages: must be from -1 (none) to 4 (every stage of resnet18); got 99"),
    (["--frozen-stages", "-2"],
     "error: --frozen-stages: must be from -1 (none) to 4 (every stage of resnet18); got -2"),
    (["--warmup-steps", "-5"],
     "error: --warmup-steps: must be 0 or more. Received: warmup_steps=-5"),
    (["--run-dir", "{file}"], "error: --run-dir: {file} is a file, not a folder."),
    (["--run-dir", "{file}/run"], "error: --run-dir: {file} is a file, not a folder."),
])
def test_bad_arguments_get_one_line(tmp_path, shapes, extra, message):
    file = tmp_path / "a_file"
    file.write_text("mine")
    extra = [value.format(file=file) for value in extra]
    assert _message(coco.main, _args(shapes, tmp_path / "run", *extra)) == message.format(
        file=file)
    assert file.read_text() == "mine" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seeds_out_of_range_are_refused(tmp_path, shapes, capsys, seed):
    with pytest.raises(SystemExit) as exit_info:
        coco.main(_args(shapes, tmp_path / "run", "--seed", seed))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"error: argument --seed: must be in [0, 4294967295], got '{seed}'")


def test_eval_only_names_a_damaged_model_file(tmp_path, shapes):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(run_dir / "best.keras")
    (run_dir / "best.keras").write_bytes((run_dir / "best.keras").read_bytes()[:3000])
    assert _message(coco.main, _args(shapes, run_dir, "--eval-only")) == (
        f"error: --run-dir: {run_dir / 'best.keras'} is damaged (not a whole .keras zip "
        "file: truncated or overwritten); train again in a new run folder, or restore the file")


def test_a_folder_in_use_is_refused(tmp_path, shapes):
    with ownership.claim(tmp_path / "run", task.KIND):
        message = _message(coco.main, _args(shapes, tmp_path / "run"))
    assert message.startswith(f"error: --run-dir: {tmp_path / 'run'} is in use by process "
                              f"{os.getpid()} on ")


def test_results_without_objects_of_a_size_are_null():
    results = {"AP": 0.5, "AP50": 1.0, "AP75": 0.0, "AP_S": 0.5, "AP_M": float("nan"),
               "AP_L": float("nan")}
    assert task.format_results({**results, "AP_M": None, "AP_L": None}) == (
        "box AP 50.0  AP50 100.0  AP75 0.0  AP_S 50.0  AP_M -  AP_L -")


# The segmentation example's data folder ----------------------------------------------


def test_segmentation_generates_data_only_into_its_own_folder(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "annotations").mkdir()
    (project / "annotations" / "instances_train.json").write_text("the user's")
    with pytest.raises(NotARunFolderError, match=f"{project} holds 1 file or folder and is "
                                                 "not a run folder of psconv-tf"):
        segmentation.prepare_data(str(project), 64)
    assert (project / "annotations" / "instances_train.json").read_text() == "the user's"
    with ownership.claim(tmp_path / "generated", segmentation.DATA_KIND):
        with pytest.raises(RunFolderInUseError, match=f"in use by process {os.getpid()} "):
            segmentation.prepare_data(str(tmp_path / "generated"), 64)
    # A data set of the user's own (train/ and val/) is read, not rewritten.
    own = tmp_path / "own"
    for split in ("train", "val", "train_masks", "val_masks"):
        (own / split).mkdir(parents=True)
    (own / "README").write_text("mine")
    segmentation.prepare_data(str(own), 64)
    assert sorted(os.listdir(own)) == ["README", "train", "train_masks", "val", "val_masks"]


def test_segmentation_arguments_get_one_line(tmp_path, capsys):
    for argv, error in (
            (["--epochs", "0"], "argument --epochs: must be a positive integer, got '0'"),
            (["--learning-rate", "nan"], "argument --learning-rate: must be a finite number"),
            (["--seed", "-1"], "argument --seed: must be in [0, 4294967295], got '-1'")):
        with pytest.raises(SystemExit) as exit_info:
            segmentation.main(["--data-dir", str(tmp_path / "data"), *argv])
        assert exit_info.value.code == 2
        assert error in capsys.readouterr().err
    assert _message(segmentation.main, ["--data-dir", str(tmp_path / "data"), "--model",
                                        "resnet9000"]).startswith(
        "error: --model: unknown model 'resnet9000'; choose from")
    assert not (tmp_path / "data").exists()


def test_segmentation_trains_through_the_trainer(tmp_path):
    """The run folder of every training script; the validation mean IoU of
    best.keras recounted in NumPy; a rerun with other settings refused."""
    data = tmp_path / "data"
    synthetic.generate(data, train_images=4, val_images=2, image_size=64, min_size=8,
                       max_size=30)
    run_dir = tmp_path / "run"
    args = [str(arg) for arg in ("--data-dir", data, "--image-size", 64, "--batch-size", 2,
                                 "--epochs", 1, "--run-dir", run_dir, "--strategy", "cpu",
                                 "--verbose", 0)]
    metrics = segmentation.main(args)
    assert sorted(os.listdir(run_dir)) == ["backup", "best.keras", "config.json", "log.jsonl",
                                           "logs", "metrics.json", "psconv_run.json"]
    assert metrics["monitor"] == "mean_iou" and metrics["steps_done"] == 2
    model = keras.saving.load_model(run_dir / "best.keras")
    val = segmentation.dataset(str(data / "val"), str(data / "val_masks"), 64, 2,
                               training=False)
    assert metrics["final"]["mean_iou"] == pytest.approx(segmentation.mean_iou(model, val),
                                                         abs=1e-6)
    message = _message(segmentation.main, args + ["--learning-rate", "0.01"])
    assert "recipe.learning_rate: 0.001 -> 0.01" in message
