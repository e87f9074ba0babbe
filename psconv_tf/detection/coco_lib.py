"""The library behind `training/coco.py`: options, data, the resumable fit
on a tf.distribute strategy, and the evaluation of RetinaNet on
COCO-format files or TFDS `coco/2017`. Strategy, precision, XLA, atomic
files and the run folder's manifest and lock come from `psconv_tf.training`;
the loop is Keras' `fit` with `BackupAndRestore` (its files written whole),
since the detector's loss is its own `compute_loss`.

A run folder holds psconv_run.json (`ownership`), backup/ (until
final.keras is written), final.keras and results.json (null where a
metric is undefined); one without manifest written by an earlier release
is recognised by these names alone and one of them present.
"""

import dataclasses
import json
import math
import os
import zipfile

import keras
import tensorflow as tf

from psconv_tf.detection import coco_data
from psconv_tf.detection import evaluation
from psconv_tf.detection import input_pipeline
from psconv_tf.detection import retinanet
from psconv_tf.hub import PSResNetBackbone
from psconv_tf.runtime import files
from psconv_tf.runtime import ownership
from psconv_tf.runtime import strategy as strategies
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import describe_error
from psconv_tf.runtime.errors import writing
from psconv_tf.training.stopping import StopSignals
from psconv_tf.training.stopping import TrainingStopped

MODEL_FILE = "final.keras"
RESULTS_FILE = "results.json"
BACKUP_DIR = "backup"
COCO_TRAIN_IMAGES = 117266  # TFDS coco/2017 train, for steps per epoch
WORKERS_DIR = "workers"


def _written_by_earlier_release(path):
    return any(tf.io.gfile.exists(os.path.join(path, name)) for name in (
        MODEL_FILE, RESULTS_FILE, os.path.join(BACKUP_DIR, "training_metadata.json")))


KIND = ownership.Kind("coco detection",
                      entries=(BACKUP_DIR, MODEL_FILE, RESULTS_FILE, WORKERS_DIR),
                      owned_folders=(BACKUP_DIR,), evidence=_written_by_earlier_release,
                      peers=WORKERS_DIR)


@dataclasses.dataclass(frozen=True)
class Options:
    model: str
    run_dir: str
    schedule: retinanet.Schedule
    inputs: input_pipeline.InputConfig
    batch_size: int
    data_dir: str = None
    annotations: str = None
    images: str = None
    val_annotations: str = None
    val_images: str = None
    backbone_weights: str = None
    masked: str = "error"
    frozen_stages: int = 1
    norm_eval: bool = True
    head_convs: int = 4
    steps_per_epoch: int = None
    strategy: str = "auto"
    tpu: str = None
    precision: str = "auto"
    jit_compile: str = "auto"
    eval_only: bool = False
    seed: int = 0
    verbose: int = 2
    force_run_dir: bool = False


def options_from_args(args):
    """`Options` from parsed arguments; `InputError` names the argument."""
    from psconv_tf import models

    if args.model not in models.list_models():
        raise InputError(f"{args.model!r} is not a zoo model", argument="model")
    stages = len(models.architecture(args.model)["stages"])
    if not -1 <= args.frozen_stages <= stages:
        raise InputError(f"must be from -1 (none) to {stages} (every stage of {args.model}); "
                         f"got {args.frozen_stages}", argument="frozen_stages")
    if args.warmup_steps < 0:
        raise InputError(f"must be 0 or more; got {args.warmup_steps}", argument="warmup_steps")
    json_arguments = ("annotations", "images", "val_annotations", "val_images")
    given = [name for name in json_arguments if getattr(args, name)]
    if args.data_dir is not None and given:
        raise InputError(f"excludes {', '.join(given)} (TFDS or files)", argument="data_dir")
    if args.data_dir is None and len(given) < len(json_arguments):
        missing = [name for name in json_arguments if name not in given][0]
        raise InputError("needed without --data-dir (TFDS)", argument=missing)
    try:
        schedule = retinanet.Schedule(
            epochs=args.epochs, milestones=tuple(args.milestones),
            base_learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
            optimizer_name=args.optimizer,
        )
    except ValueError as error:
        raise InputError(str(error), argument="milestones") from None
    try:
        inputs = input_pipeline.InputConfig(args.min_size, args.max_size, flip=args.flip)
    except ValueError as error:
        raise InputError(str(error), argument="min_size") from None
    fields = {f.name for f in dataclasses.fields(Options)} - {"schedule", "inputs"}
    return Options(schedule=schedule, inputs=inputs,
                   **{name: getattr(args, name) for name in fields})


@dataclasses.dataclass(frozen=True)
class Data:
    train: object  # raw examples
    val: object
    categories: tuple
    ground_truth: dict
    train_size: int


def load_data(options):
    """Training and validation examples, categories and the validation
    ground truth, from COCO-format files or TFDS."""
    if options.data_dir is None:
        train = coco_data.read_coco(options.annotations, options.images)
        val = coco_data.read_coco(options.val_annotations, options.val_images)
        if train.category_ids != val.category_ids:
            raise InputError(f"{options.val_annotations}: categories differ from "
                             f"{options.annotations}", argument="val_annotations")
        labels = train.label_of()
        return Data(
            input_pipeline.coco_examples(train, labels),
            input_pipeline.coco_examples(val, labels),
            train.categories,
            evaluation.ground_truth(val.records, val.categories),
            len(train.records),
        )
    train, _ = input_pipeline.tfds_examples("train", options.data_dir)
    val, _ = input_pipeline.tfds_examples("validation", options.data_dir)
    records, categories = input_pipeline.tfds_ground_truth("validation", options.data_dir)
    return Data(train, val, categories, evaluation.ground_truth(records, categories),
                COCO_TRAIN_IMAGES)


def build(options, num_classes, dtype=None):
    """The detector, its backbone filled from `backbone_weights`."""
    backbone = PSResNetBackbone.from_zoo(
        options.model, frozen_stages=options.frozen_stages, norm_eval=options.norm_eval,
        dtype=dtype,
    )
    if options.backbone_weights:
        retinanet.load_backbone_weights(backbone, options.backbone_weights, options.masked)
    return retinanet.build_detector(backbone, num_classes, options.head_convs, dtype=dtype)


def run(options):
    """Trains (resuming from the run's backup), saves `final.keras` and
    returns the validation AP dict (None where undefined), also written to
    `results.json`. A finished run returns its stored results."""
    ownership.check(options.run_dir, KIND, options.force_run_dir)  # before the data
    keras.utils.set_random_seed(options.seed)
    try:
        data = load_data(options)
    except coco_data.AnnotationError as error:
        raise InputError(str(error)) from None
    strategy = strategies.create_strategy(options.strategy, options.tpu)
    kind = strategies.device_kind(strategy)
    policy = strategies.resolve_precision(options.precision, kind)
    replicas = strategy.num_replicas_in_sync
    if options.batch_size % replicas:
        raise InputError(f"{options.batch_size} is not divisible by {replicas} replicas",
                         argument="batch_size")
    steps = options.steps_per_epoch or max(1, data.train_size // options.batch_size)
    model_path = os.path.join(options.run_dir, MODEL_FILE)
    backup_dir = os.path.join(options.run_dir, BACKUP_DIR)
    # Every worker saves; workers other than the chief write where they
    # clobber nothing, as the classification trainer does.
    output_dir = strategies.worker_output_dir(strategy, options.run_dir)
    with ownership.claim(output_dir, KIND, force=options.force_run_dir,
                         chief_path=options.run_dir) as claim:
        claim.remove_temporaries()
        results_path = os.path.join(output_dir, RESULTS_FILE)
        complete = not options.eval_only and _complete(options.run_dir, options.schedule.epochs)
        if complete:
            stored = _read_results(results_path)
            if stored is not None:
                if options.verbose:
                    print(f"{options.run_dir} is complete: nothing to do ({model_path}; "
                          f"--eval-only evaluates it again).", flush=True)
                return stored
        with strategy.scope():
            if options.eval_only or complete:
                detector = _load_detector(model_path)
            else:
                detector = build(options, len(data.categories),
                                 dtype=None if policy == "float32" else policy)
                detector.compile(
                    optimizer=options.schedule.optimizer(options.batch_size, steps),
                    jit_compile=strategies.resolve_jit_compile(options.jit_compile, kind),
                )
        if not (options.eval_only or complete):
            train = input_pipeline.batched(
                data.train, options.inputs, options.batch_size, training=True,
                seed=options.seed).repeat()
            with StopSignals() as signals:
                detector.fit(
                    retinanet.train_inputs(train),
                    epochs=options.schedule.epochs,
                    steps_per_epoch=steps,
                    callbacks=[_Backup(backup_dir, options.run_dir),
                               keras.callbacks.TerminateOnNaN(), _StopAtStep(signals)],
                    verbose=options.verbose,
                )
            final_path = os.path.join(output_dir, MODEL_FILE)
            with writing(final_path):
                files.save_model(detector, final_path)
            if strategies.is_chief(strategy):
                files.remove(backup_dir)  # final.keras holds the run now
        val = input_pipeline.batched(data.val, options.inputs, options.batch_size,
                                     training=False)
        results = evaluation.evaluate_boxes(
            data.ground_truth, retinanet.detect(detector, val, data.categories))
        # JSON has no NaN: an undefined AP (no object of that size) is null.
        results = {name: value if math.isfinite(value) else None
                   for name, value in results.items()}
        with writing(results_path):
            files.write_json(results_path, results)
    return results


def _complete(run_dir, epochs):
    """Whether the run has written final.keras after its last epoch."""
    if not tf.io.gfile.exists(os.path.join(run_dir, MODEL_FILE)):
        return False
    metadata = os.path.join(run_dir, BACKUP_DIR, "training_metadata.json")
    if not tf.io.gfile.exists(metadata):
        return True
    try:
        with tf.io.gfile.GFile(metadata, "rb") as file:
            return json.loads(file.read().decode("utf-8"))["epoch"] >= epochs
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, tf.errors.OpError):
        return False  # the backup's restore names the damage


def _read_results(path):
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            results = json.loads(file.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, tf.errors.OpError):
        return None
    return results if isinstance(results, dict) else None


def _load_detector(path):
    """The detector of final.keras; `InputError` naming it if missing or damaged."""
    if not tf.io.gfile.exists(path):
        raise InputError(f"{path} does not exist", argument="run_dir")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # whatever a damaged zip makes Keras raise
        # Keras says "File not found" for a truncated file.
        reason = (describe_error(error) if _is_zip(path)
                  else "not a whole .keras zip file: truncated or overwritten")
        raise InputError(f"{path} is damaged ({reason}); train again in a new run folder, "
                         "or restore the file", argument="run_dir") from None


def _is_zip(path):
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            return zipfile.is_zipfile(file)
    except (OSError, tf.errors.OpError):
        return False


class _Backup(keras.callbacks.BackupAndRestore):
    """Keras's backup, each file written whole (a kill while saving leaves
    the previous one), a damaged one named in one line, and kept until
    final.keras is written (`run` removes it then)."""

    def __init__(self, backup_dir, run_dir):
        super().__init__(backup_dir, delete_checkpoint=False)
        self._how = (f"move {backup_dir} away to start the training over, or use "
                     f"another run folder than {run_dir}")

    def _save_model(self):
        with writing(self.backup_dir):
            with files.atomic_path(self._weights_path) as temporary:
                self.model.save_weights(temporary, overwrite=True)
            files.write_json(self._training_metadata_path,
                             {"epoch": self._current_epoch, "batch": self._last_batch_seen})

    def _load_model(self):
        metadata = self._training_metadata_path
        if tf.io.gfile.exists(metadata):
            try:
                with tf.io.gfile.GFile(metadata, "rb") as file:
                    int(json.loads(file.read().decode("utf-8"))["epoch"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
                raise InputError(f"{metadata} is damaged ({describe_error(error)}); "
                                 f"{self._how}", argument="run_dir") from None
        try:
            super()._load_model()
        except Exception as error:  # whatever a damaged .h5 makes Keras raise
            raise InputError(
                f"{self._weights_path} cannot be restored (damaged, or the backup of "
                f"another model: {describe_error(error)}); {self._how}", argument="run_dir",
            ) from None


class _StopAtStep(keras.callbacks.Callback):
    """Stops `fit` at the end of a step once SIGINT or SIGTERM came
    (`stopping.StopSignals`); the rerun resumes from the last epoch's backup."""

    def __init__(self, signals):
        super().__init__()
        self.signals = signals
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._stop((self.epoch + 1, batch + 1), (self.epoch + 1, 0))

    def on_epoch_end(self, epoch, logs=None):  # after the backup's save
        self._stop((epoch + 2, 0), (epoch + 2, 0))

    def _stop(self, stopped_at, resume_at):
        if self.signals.requested is not None:
            raise TrainingStopped(self.signals.requested, stopped_at=stopped_at,
                                  resume_at=resume_at)


def format_results(results):
    return "box " + "  ".join(
        f"{name} {100 * value:.1f}" if value is not None and math.isfinite(value)
        else f"{name} -" for name, value in results.items()
    )
