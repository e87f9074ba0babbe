"""The library behind `training/coco.py`: options, data, strategy, the
resumable fit and the evaluation of RetinaNet on COCO-format data or TFDS
`coco/2017`."""

import dataclasses
import json
import logging
import math
import os

import keras
import tensorflow as tf

from psconv_tf.detection import coco_data
from psconv_tf.detection import evaluation
from psconv_tf.detection import input_pipeline
from psconv_tf.detection import retinanet
from psconv_tf.hub import PSResNetBackbone

logger = logging.getLogger(__name__)
MODEL_FILE = "final.keras"
RESULTS_FILE = "results.json"
BACKUP_DIR = "backup"


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
    precision: str = "float32"
    jit_compile: bool = False
    eval_only: bool = False
    seed: int = 0


def options_from_args(args):
    """`Options` from the parsed command line; ValueError names the flag."""
    from psconv_tf import models

    if args.model not in models.list_models():
        raise ValueError(f"--model {args.model!r} is not a zoo model")
    json_flags = (args.annotations, args.images, args.val_annotations, args.val_images)
    if args.data_dir is None and not all(json_flags):
        raise ValueError(
            "give --data-dir (TFDS coco/2017) or all of --annotations, --images, "
            "--val-annotations and --val-images"
        )
    if args.data_dir is not None and any(json_flags):
        raise ValueError("--data-dir (TFDS) and --annotations/--images exclude each other")
    for flag in ("batch_size", "epochs", "head_convs"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive")
    if args.steps_per_epoch is not None and args.steps_per_epoch <= 0:
        raise ValueError("--steps-per-epoch must be positive")
    try:
        milestones = tuple(int(m) for m in args.milestones.split(",") if m)
        schedule = retinanet.Schedule(
            epochs=args.epochs, milestones=milestones,
            base_learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
            optimizer_name=args.optimizer,
        )
    except ValueError as error:
        raise ValueError(f"--epochs/--milestones/--learning-rate/--optimizer: {error}") from None
    try:
        inputs = input_pipeline.InputConfig(args.min_size, args.max_size, flip=args.flip)
    except ValueError as error:
        raise ValueError(f"--min-size/--max-size: {error}") from None
    return Options(
        model=args.model, run_dir=args.run_dir, schedule=schedule, inputs=inputs,
        batch_size=args.batch_size, data_dir=args.data_dir, annotations=args.annotations,
        images=args.images, val_annotations=args.val_annotations, val_images=args.val_images,
        backbone_weights=args.backbone_weights, masked=args.masked,
        frozen_stages=args.frozen_stages, norm_eval=args.norm_eval, head_convs=args.head_convs,
        steps_per_epoch=args.steps_per_epoch, strategy=args.strategy, tpu=args.tpu,
        precision=args.precision, jit_compile=args.jit_compile, eval_only=args.eval_only,
        seed=args.seed,
    )


def create_strategy(name, tpu=None):
    """A tf.distribute strategy: auto (mirrored over several GPUs, else the
    default), default, mirrored, multi_worker (TF_CONFIG) or tpu."""
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"Unknown strategy {name!r}: auto, default, mirrored, multi_worker or tpu"
    )


@dataclasses.dataclass(frozen=True)
class Data:
    train: object  # raw examples
    val: object
    categories: tuple
    ground_truth: dict
    train_size: int


def load_data(options):
    """The training and validation examples, categories and the validation
    ground truth, from COCO-format files or TFDS."""
    if options.data_dir is None:
        train = coco_data.read_coco(options.annotations, options.images)
        val = coco_data.read_coco(options.val_annotations, options.val_images)
        if train.category_ids != val.category_ids:
            raise ValueError(
                f"{options.val_annotations}: categories differ from {options.annotations}"
            )
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
    return Data(train, val, categories, evaluation.ground_truth(records, categories), 117266)


def build(options, num_classes):
    """The detector, its backbone filled from `backbone_weights`."""
    dtype = None if options.precision == "float32" else options.precision
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
    data = load_data(options)
    strategy = create_strategy(options.strategy, options.tpu)
    replicas = strategy.num_replicas_in_sync
    if options.batch_size % replicas:
        raise ValueError(f"batch size {options.batch_size} is not divisible by {replicas} replicas")
    steps = options.steps_per_epoch or max(1, data.train_size // options.batch_size)
    model_path = os.path.join(options.run_dir, MODEL_FILE)
    with strategy.scope():
        if options.eval_only:
            detector = keras.saving.load_model(model_path, compile=False)
        else:
            detector = build(options, len(data.categories))
            detector.compile(
                optimizer=options.schedule.optimizer(options.batch_size, steps),
                jit_compile=options.jit_compile,
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
            verbose=2,
        )
        _save_atomically(detector, model_path)
    val = input_pipeline.batched(data.val, options.inputs, options.batch_size, training=False)
    results = evaluation.evaluate_boxes(
        data.ground_truth, retinanet.detect(detector, val, data.categories)
    )
    _write_json(os.path.join(options.run_dir, RESULTS_FILE), results)
    return results


def format_results(results):
    return "box " + "  ".join(
        f"{name} {100 * value:.1f}" if math.isfinite(value) else f"{name} -"
        for name, value in results.items()
    )


def _save_atomically(model, path):
    temporary = path + ".tmp.keras"
    model.save(temporary)
    os.replace(temporary, path)


def _write_json(path, data):
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(data, file, indent=2)
    os.replace(temporary, path)
