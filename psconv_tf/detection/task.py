"""COCO detection as a task of the one `Trainer`: RetinaNet's loss and COCO
box AP as its hooks, the data from COCO-format files or TFDS `coco/2017`.

A run is a `RunConfig` (its `extras` hold the detector's settings: resize
range, flips, frozen stages, fixed BatchNorm statistics, head depth,
backbone weights) and trains, resumes, refuses other settings and writes
its run folder exactly as a classification run does (`run_config`): the
validation metrics are AP, AP50, AP75, AP_S, AP_M, AP_L (pycocotools; null
where undefined), and best.keras holds the detector of the best AP.
"""

import dataclasses
import math
import zipfile

import keras
import tensorflow as tf

from psconv_tf.detection import coco_data
from psconv_tf.detection import evaluation
from psconv_tf.detection import input_pipeline
from psconv_tf.detection import retinanet
from psconv_tf.hub import PSResNetBackbone
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import describe_error
from psconv_tf.runtime import run_config
from psconv_tf.training.trainer import Trainer

COCO_TRAIN_IMAGES = 117266  # TFDS coco/2017 train, for steps per epoch
# The detector's settings, in `RunConfig.extras`, and their defaults.
DETECTOR_DEFAULTS = dict(min_size=800, max_size=1333, flip=True, frozen_stages=1,
                         norm_eval=True, head_convs=4, backbone_weights=None, masked="error",
                         neck="standard")

# A detection run folder: the files of a classification one (`run_config`).
# ("coco detection" named the folders of the earlier release's `fit`, with
# final.keras, results.json and a per-epoch backup: refused, never retrained
# over.)
KIND = dataclasses.replace(run_config.KIND, name="detection")


@dataclasses.dataclass(frozen=True)
class DataFiles:
    """Where the data is: a TFDS folder with coco/2017 (`data_dir`), or
    COCO-format JSON files and image folders."""

    data_dir: str = None
    annotations: str = None
    images: str = None
    val_annotations: str = None
    val_images: str = None

    def check(self, eval_only=False):
        """Raises an `InputError` naming the argument that is missing or excess."""
        needed = ("val_annotations", "val_images") if eval_only else (
            "annotations", "images", "val_annotations", "val_images")
        given = [name for name in needed if getattr(self, name)]
        if self.data_dir is not None and given:
            raise InputError(f"excludes {', '.join(given)} (TFDS or files)",
                             argument="data_dir")
        if self.data_dir is None and len(given) < len(needed):
            missing = [name for name in needed if name not in given][0]
            raise InputError("needed without --data-dir (TFDS)", argument=missing)


@dataclasses.dataclass(frozen=True)
class Data:
    train: object  # raw examples, None for an evaluation only
    val: object
    categories: tuple
    ground_truth: dict
    train_size: int


def load_data(files, eval_only=False):
    """Training (unless `eval_only`) and validation examples, categories and
    the validation ground truth; a bad annotation file is an `InputError`."""
    files.check(eval_only)
    try:
        return _load_data(files, eval_only)
    except coco_data.AnnotationError as error:
        raise InputError(str(error)) from None


def _load_data(files, eval_only):
    if files.data_dir is None:
        val = coco_data.read_coco(files.val_annotations, files.val_images)
        train = None if eval_only else coco_data.read_coco(files.annotations, files.images)
        if train is not None and train.category_ids != val.category_ids:
            raise InputError(f"{files.val_annotations}: categories differ from "
                             f"{files.annotations}", argument="val_annotations")
        labels = (val if train is None else train).label_of()
        return Data(
            None if train is None else input_pipeline.coco_examples(train, labels),
            input_pipeline.coco_examples(val, labels),
            val.categories,
            evaluation.ground_truth(val.records, val.categories),
            0 if train is None else len(train.records),
        )
    train = None if eval_only else input_pipeline.tfds_examples("train", files.data_dir)[0]
    val, _ = input_pipeline.tfds_examples("validation", files.data_dir)
    records, categories = input_pipeline.tfds_ground_truth("validation", files.data_dir)
    return Data(train, val, categories, evaluation.ground_truth(records, categories),
                COCO_TRAIN_IMAGES)


def detector_settings(config):
    """The detector's settings of a `RunConfig`: `DETECTOR_DEFAULTS` updated."""
    return {**DETECTOR_DEFAULTS, **config.extras}


def input_config(config):
    settings = detector_settings(config)
    try:
        return input_pipeline.InputConfig(settings["min_size"], settings["max_size"],
                                          flip=settings["flip"])
    except ValueError as error:
        raise InputError(str(error), argument="min_size") from None


def build_detector(config):
    """The config's RetinaNet, its backbone filled from `backbone_weights`."""
    settings = detector_settings(config)
    backbone = PSResNetBackbone.from_zoo(
        config.model, frozen_stages=settings["frozen_stages"],
        norm_eval=settings["norm_eval"], **config.model_kwargs)
    if settings["backbone_weights"]:
        retinanet.load_backbone_weights(backbone, settings["backbone_weights"],
                                        settings["masked"])
    detector = retinanet.build_detector(backbone, config.num_classes, settings["head_convs"],
                                        neck=settings["neck"])
    # The losses of `compute_loss` (focal and Huber); the Trainer optimizes.
    detector.compile(optimizer="sgd")
    return detector


class DetectionTrainer(Trainer):
    """The `Trainer` with RetinaNet's loss and COCO box AP (see `Trainer`).

    Args:
        *args: `Trainer`'s.
        evaluation: `BoxEvaluation` of the validation set.
    """

    MONITOR = "AP"
    KIND = KIND

    def __init__(self, strategy, build_model, recipe, steps_per_epoch, options, evaluation):
        self.box_evaluation = evaluation
        super().__init__(strategy, build_model, recipe, steps_per_epoch, options)

    def create_metrics(self):
        return [keras.metrics.Mean(name="loss")]

    def per_example_loss(self, labels, outputs, images):
        # keras-hub's loss is the batch's (normalized by its positive
        # anchors): every example of the replica's batch carries it.
        loss = self.model.compute_loss(x=images, y=labels, y_pred=outputs, sample_weight=None)
        return tf.fill(tf.shape(images)[:1], tf.cast(loss, tf.float32))

    def update_metrics(self, metrics, labels, outputs, per_example_loss):
        metrics[0].update_state(per_example_loss)

    def evaluation_names(self):
        return list(evaluation.METRICS)

    def evaluation_input(self, eval_input):
        return eval_input  # batches of `input_pipeline.batched`, evaluated on the host

    def evaluate(self, eval_dataset, title="evaluation"):
        results = self.box_evaluation(self.model, eval_dataset)
        if self.options.verbose:
            print(f"{title}: {format_results(results)}", flush=True)
        return results


@dataclasses.dataclass(frozen=True)
class BoxEvaluation:
    """COCO box AP of a detector on validation batches (NaN where undefined)."""

    ground_truth: dict
    categories: tuple

    def __call__(self, detector, batches):
        return evaluation.evaluate_boxes(
            self.ground_truth, retinanet.detect(detector, batches, self.categories))


def train(config, strategy, options, data, callbacks=()):
    """Trains the config's detector through the `Trainer` (see `Trainer.fit`);
    returns the metrics dict written to metrics.json."""
    keras.utils.set_random_seed(config.seed)
    inputs = input_config(config)
    batch_size = config.recipe.batch_size

    def train_input(context):
        examples = data.train
        if context.num_input_pipelines > 1:
            examples = examples.shard(context.num_input_pipelines, context.input_pipeline_id)
        batches = input_pipeline.batched(
            examples, inputs, context.get_per_replica_batch_size(batch_size), training=True,
            seed=config.seed)
        return retinanet.train_inputs(batches.repeat())

    val = input_pipeline.batched(data.val, inputs, batch_size, training=False)
    trainer = DetectionTrainer(strategy, lambda: build_detector(config), config.recipe,
                               config.steps_per_epoch, options,
                               BoxEvaluation(data.ground_truth, data.categories))
    return trainer.fit(train_input, val, config, callbacks=callbacks)


def evaluate_run(run_dir, data, settings, batch_size):
    """The validation AP of a run folder's best.keras (an evaluation only:
    nothing is written). `settings`: the resize range, as `input_config`'s."""
    detector = load_detector(run_config.RunFolder(run_dir).best_model)
    inputs = input_pipeline.InputConfig(settings["min_size"], settings["max_size"])
    val = input_pipeline.batched(data.val, inputs, batch_size, training=False)
    return BoxEvaluation(data.ground_truth, data.categories)(detector, val)


def load_detector(path):
    """The detector of a .keras file; `InputError` naming it if missing or damaged."""
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


def format_results(results):
    return "box " + "  ".join(
        f"{name} {100 * value:.1f}" if value is not None and math.isfinite(value)
        else f"{name} -" for name, value in results.items()
    )
