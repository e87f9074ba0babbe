"""The library behind `training/coco.py`: options, data, the resumable fit
on a tf.distribute strategy, and the evaluation of RetinaNet on
COCO-format files or TFDS `coco/2017`. Strategy, precision, XLA and atomic
files come from `psconv_tf.training`; the loop is Keras' `fit` with
`BackupAndRestore`, since the detector's loss is its own `compute_loss`."""

import dataclasses
import math
import os

import keras

from psconv_tf.detection import coco_data
from psconv_tf.detection import evaluation
from psconv_tf.detection import input_pipeline
from psconv_tf.detection import retinanet
from psconv_tf.hub import PSResNetBackbone
from psconv_tf import files
from psconv_tf.training import strategy as strategies
from psconv_tf.training.errors import InputError

MODEL_FILE = "final.keras"
RESULTS_FILE = "results.json"
BACKUP_DIR = "backup"
COCO_TRAIN_IMAGES = 117266  # TFDS coco/2017 train, for steps per epoch


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


def options_from_args(args):
    """`Options` from parsed arguments; `InputError` names the argument."""
    from psconv_tf import models

    if args.model not in models.list_models():
        raise InputError(f"{args.model!r} is not a zoo model", argument="model")
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
    returns the validation AP dict, also written to `results.json`."""
    keras.utils.set_random_seed(options.seed)
    os.makedirs(options.run_dir, exist_ok=True)
    files.remove_temporaries(options.run_dir)
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
    # Every worker saves; workers other than the chief write where they
    # clobber nothing, as the classification trainer does.
    output_dir = strategies.worker_output_dir(strategy, options.run_dir)
    with strategy.scope():
        if options.eval_only:
            if not os.path.isfile(model_path):
                raise InputError(f"{model_path} does not exist", argument="run_dir")
            detector = keras.saving.load_model(model_path, compile=False)
        else:
            detector = build(options, len(data.categories),
                             dtype=None if policy == "float32" else policy)
            detector.compile(
                optimizer=options.schedule.optimizer(options.batch_size, steps),
                jit_compile=strategies.resolve_jit_compile(options.jit_compile, kind),
            )
    if not options.eval_only:
        train = input_pipeline.batched(
            data.train, options.inputs, options.batch_size, training=True, seed=options.seed
        ).repeat()
        detector.fit(
            retinanet.train_inputs(train),
            epochs=options.schedule.epochs,
            steps_per_epoch=steps,
            callbacks=[
                keras.callbacks.BackupAndRestore(os.path.join(options.run_dir, BACKUP_DIR)),
                keras.callbacks.TerminateOnNaN(),
            ],
            verbose=options.verbose,
        )
        files.save_model(detector, os.path.join(output_dir, MODEL_FILE))
    val = input_pipeline.batched(data.val, options.inputs, options.batch_size, training=False)
    results = evaluation.evaluate_boxes(
        data.ground_truth, retinanet.detect(detector, val, data.categories)
    )
    files.write_json(os.path.join(output_dir, RESULTS_FILE), results)
    return results


def format_results(results):
    return "box " + "  ".join(
        f"{name} {100 * value:.1f}" if math.isfinite(value) else f"{name} -"
        for name, value in results.items()
    )
